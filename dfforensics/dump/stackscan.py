"""
Scan stacks for frames
----------------------

Read stack memory from the dump and hand it to the pure frame scanner. User
memory is read through the task's page tables, page by page, never as a raw
virtual read: in QEMU's ELF dumps a low user address would otherwise read
physical memory. Pages that are not present (or were left out of the dump)
are counted, never guessed.
"""

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Callable, Final, Optional

import drgn
from drgn import Object, Program, offsetof
from drgn.helpers.linux.mm import access_process_vm, follow_phys, vma_find, vma_name

from dfforensics.core import x86
from dfforensics.core.frames import scan_frames
from dfforensics.core.model import Frame, StackKind
from dfforensics.core.observation import Residency

__all__ = ("StackRead", "read_user_range", "scan_user_range", "scan_kernel_range", "page_residency",
           "kernel_symbol_name", "symbolizer", "named", "entry_return_below")

PAGE: Final = 4096
#: At most this much of one user stack mapping is read (around the RSP).
USER_SCAN_LIMIT: Final = 8 << 20


@dataclass
class StackRead:
    """What was read of one stack region and what it held."""

    start: int
    end: int
    name: str
    pages_present: int = 0
    #: Mapped in the task's page tables but not in the dump (excluded or cut),
    #: or behind page tables the dump lacks: unreadable either way.
    pages_missing: int = 0
    #: Not resident in the task's page tables (never touched, or swapped out).
    pages_not_resident: int = 0
    frames: list[Frame] = field(default_factory=list)
    #: The bytes read, by page address (present pages only).
    pages: dict[int, bytes] = field(default_factory=dict)

    def word(self, address: int) -> Optional[int]:
        page = self.pages.get(address & ~(PAGE - 1))
        if page is None:
            return None
        offset = address & (PAGE - 1)
        return int.from_bytes(page[offset:offset + 8], "little")


def bounded_window(start: int, end: int, around: int, limit: int = USER_SCAN_LIMIT) -> tuple[int, int]:
    """Clip [start, end) to at most ``limit`` bytes centred on ``around``, page aligned."""
    if end - start <= limit:
        return start, end
    low = max(start, (around - limit // 2) & ~(PAGE - 1))
    return low, min(end, low + limit)


_PMD_SPAN: Final = 1 << 21
_PTE_PAGE: Final = struct.Struct("<512Q")


def resident_pages(mm: Object, start: int, end: int) -> Optional[dict[int, int]]:
    """Return the pages of [start, end) that the task's page tables map, with
    the physical address of each: ``{virtual page: physical page}``.

    Walks the 4-level x86_64 page tables at PMD granularity: an empty PMD
    skips 2 MiB at once, and one read gets a whole PTE page, so a mostly
    untouched 8 MiB thread stack costs a few reads instead of 2048 probes.
    Returns ``None`` where the walk cannot be done (5-level paging, tables not
    in the dump), so that callers probe page by page.
    """
    prog = mm.prog_
    try:
        # CONFIG_X86_5LEVEL kernels keep the runtime choice in this variable.
        if int(prog["__pgtable_l5_enabled"]):
            return None
    except (LookupError, TypeError, drgn.FaultError):
        pass
    try:
        def table(physical: int) -> bytes:
            return prog.read(physical, PAGE, True)

        def entry(data: bytes, index: int) -> int:
            return int.from_bytes(data[8 * index:8 * index + 8], "little")

        def huge(entry_value: int, address: int, span: int, stop: int) -> dict[int, int]:
            # The low bits of a huge entry's address field hold flags (PAT): mask to the span.
            base = entry_value & x86.PTE_ADDRESS_MASK & ~(span - 1)
            return {page: base + (page & (span - 1)) for page in range(address, stop, PAGE)}

        pgd = prog.read(int(mm.pgd), PAGE)
        pages: dict[int, int] = {}
        address = start & ~(PAGE - 1)
        while address < end:
            next_pmd = (address | (_PMD_SPAN - 1)) + 1
            pgd_entry = entry(pgd, (address >> 39) & 511)
            if not pgd_entry & x86.PTE_PRESENT:
                address = ((address >> 39) + 1) << 39
                continue
            pud_entry = entry(table(pgd_entry & x86.PTE_ADDRESS_MASK), (address >> 30) & 511)
            next_pud = ((address >> 30) + 1) << 30
            if not pud_entry & x86.PTE_PRESENT:
                address = next_pud
                continue
            if pud_entry & x86.PTE_HUGE:
                pages.update(huge(pud_entry, address, 1 << 30, min(end, next_pud)))
                address = next_pud
                continue
            pmd_entry = entry(table(pud_entry & x86.PTE_ADDRESS_MASK), (address >> 21) & 511)
            if not pmd_entry & x86.PTE_PRESENT:
                address = next_pmd
                continue
            if pmd_entry & x86.PTE_HUGE:
                pages.update(huge(pmd_entry, address, _PMD_SPAN, min(end, next_pmd)))
                address = next_pmd
                continue
            ptes = _PTE_PAGE.unpack(table(pmd_entry & x86.PTE_ADDRESS_MASK))
            stop = min(end, next_pmd)
            base = address & ~(_PMD_SPAN - 1)
            pages.update((base + (index << 12), ptes[index] & x86.PTE_ADDRESS_MASK)
                         for index in range((address >> 12) & 511, ((stop - 1) >> 12 & 511) + 1)
                         if ptes[index] & x86.PTE_PRESENT)
            address = stop
        return pages
    except (LookupError, drgn.FaultError, ValueError):
        return None


def page_residency(mm: Object, address: int) -> Residency:
    """Say whether a user address is resident in a task's page tables.

    A translation that fails *at the address itself* means the task's page
    tables do not map it (never touched, or swapped out); one that fails
    anywhere else means the page tables or the ``mm`` could not be read (left
    out of the dump, or damaged), which says nothing about the page.
    """
    try:
        follow_phys(mm, address)
    except drgn.FaultError as error:
        return Residency.NOT_RESIDENT if error.address == address else Residency.UNREADABLE
    return Residency.RESIDENT


def read_user_range(task: Object, start: int, end: int, name: str) -> StackRead:
    """Read the present pages of a user range through the task's page tables.

    A page that cannot be read is either not resident in the task (no
    page-table entry: never touched, or swapped out) or unreadable (absent
    from the dump, or reached through page tables the dump lacks); the two
    are counted apart, because only the second hides evidence the guest had.
    """
    result = StackRead(start, end, name)
    mm = task.mm
    every_page = range(start & ~(PAGE - 1), end, PAGE)
    resident = resident_pages(mm, start, end)
    if resident is not None:
        result.pages_not_resident = len(every_page) - len(resident)
    prog = task.prog_
    for page in sorted(resident) if resident is not None else every_page:
        try:
            if resident is not None:
                # The walk already translated it: read the page physically, not walk again.
                result.pages[page] = prog.read(resident[page], PAGE, True)
            else:
                result.pages[page] = access_process_vm(task, page, PAGE)
            result.pages_present += 1
        except drgn.FaultError:
            if page_residency(mm, page) is Residency.NOT_RESIDENT:
                result.pages_not_resident += 1
            else:
                result.pages_missing += 1
    return result


def entry_return_below(prog: Program) -> Optional[int]:
    """How far below a frame's orig_ax slot the word under its pt_regs is:
    ``offsetof(struct pt_regs, orig_ax) + 8``, from the kernel's debug info (DWARF or
    BTF); None without the type."""
    try:
        return offsetof(prog.type("struct pt_regs"), "orig_ax") + 8
    except (LookupError, ValueError):
        return None


def _scan_pages(read: StackRead, stack: StackKind, encoding: Optional[str], below: Optional[int]) -> None:
    """Scan each run of consecutive pages as one region (a frame may straddle two pages)."""
    run: list[bytes] = []
    run_start = run_end = None
    for page in sorted(read.pages):
        if page != run_end and run:
            read.frames.extend(scan_frames(b"".join(run), run_start, stack, encoding, entry_return_below=below))
            run = []
        if not run:
            run_start = page
        run.append(read.pages[page])
        run_end = page + len(read.pages[page])
    if run:
        read.frames.extend(scan_frames(b"".join(run), run_start, stack, encoding, entry_return_below=below))


def scan_user_range(task: Object, start: int, end: int, name: str, encoding: Optional[str]) -> StackRead:
    """Read a user stack range and find the frames in it."""
    read = read_user_range(task, start, end, name)
    _scan_pages(read, StackKind.USER, encoding, entry_return_below(task.prog_))
    return read


def scan_kernel_range(prog: Program, start: int, end: int, name: str, encoding: Optional[str]) -> StackRead:
    """Read a kernel stack range and find the frames in it."""
    read = StackRead(start, end, name)
    for page in range(start & ~(PAGE - 1), end, PAGE):
        try:
            read.pages[page] = prog.read(page, PAGE)
            read.pages_present += 1
        except drgn.FaultError:
            read.pages_missing += 1
    _scan_pages(read, StackKind.KERNEL, encoding, entry_return_below(prog))
    return read


def kernel_symbol_name(prog: Program, address: int) -> Optional[str]:
    """``function+0xoff/0xsize``, with `` [module]`` outside vmlinux: the form the
    kernel prints, the same in every table (None for a user or unknown address)."""
    try:
        symbol = prog.symbol(address)
    except LookupError:
        return None
    text = f"{symbol.name}+{address - symbol.address:#x}/{symbol.size:#x}"
    try:
        module = prog.module(address)
        if module.name != "kernel":
            text += f" [{module.name}]"
    except (LookupError, AttributeError):
        pass
    return text


def named(frame: Frame, name: Callable[[int], Optional[str]], **known: Optional[int]) -> Frame:
    """The frame with its RIP and its entry trail's word named (and ``known`` fields, the
    task's pid and tid, set)."""
    trail = frame.entry_return
    trail_name = name(trail) if trail is not None and x86.is_kernel_address(trail) else None
    if trail_name is not None:
        # function+offset is the evidence; the size after "/" is kallsyms' guess without DWARF.
        trail_name = trail_name.split("/", 1)[0]
    return dataclasses.replace(frame, rip_symbol=name(frame.rip), entry_return_symbol=trail_name, **known)


def symbolizer(prog: Program, task: Optional[Object]) -> Callable[[int], Optional[str]]:
    """Return a function naming an address: kernel symbol+offset, or user mapping+offset."""
    mm = None
    if task is not None:
        try:
            mm = task.mm if task.mm else None
        except drgn.FaultError:
            mm = None

    def name(address: int) -> Optional[str]:
        if x86.is_kernel_address(address):
            return kernel_symbol_name(prog, address)
        if mm is None or not x86.is_plausible_user_pointer(address):
            return None
        try:
            vma = vma_find(mm, address)
            if not vma:
                return None
            label = vma_name(vma).decode(errors="replace") or "anon"
            offset = address - int(vma.vm_start)
            if vma.vm_file:  # file offset; anonymous vm_pgoff is not an offset
                offset += int(vma.vm_pgoff) * PAGE
        except (drgn.FaultError, LookupError):
            return None
        return f"{label}+{offset:#x}"

    return name
