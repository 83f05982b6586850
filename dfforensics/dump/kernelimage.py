"""
The kernel image's read-only data, from the dump's own page tables
------------------------------------------------------------------

Without a vmlinux nothing says where ``.rodata`` is, but the kernel's page tables do:
after ``mark_rodata_ro()`` (every kernel that reached user space) the kernel text
mapping has the text read-only and executable, ``.rodata`` (with the kallsyms tables,
``.BTF``, ``__ksymtab``...) read-only and not executable, and the data writable. This
module walks that mapping from ``_stext`` up to ``__START_KERNEL_map +
KERNEL_IMAGE_SIZE`` (beyond is the module area) and reads the read-only,
non-executable runs, so that the structure searches of :mod:`dfforensics.inputs.kallsyms`
and :mod:`dfforensics.inputs.btf` look only there, in a bounded amount of memory.

Supports x86_64 with 4- and 5-level paging (VMCOREINFO's ``SYMBOL(init_top_pgt)``,
4.13+, or ``SYMBOL(init_level4_pgt)`` before; ``NUMBER(phys_base)``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Final, Iterable, Mapping, Optional

import drgn
from drgn import Program

from dfforensics.core import x86
from dfforensics.core.errors import DumpError

__all__ = ("ReadOnlyData", "contiguous_runs", "mapped_chunks", "read_only_data")

_PAGE: Final = 4096
_ENTRIES = struct.Struct("<512Q")
_PTE_WRITABLE: Final = 0x2
_PTE_NX: Final = 1 << 63
# The top-level table's name in VMCOREINFO: init_top_pgt since 4.13 (65ade2f872b4
# "x86/boot/64: Rename init_level4_pgt and early_level4_pgt"), init_level4_pgt before.
_ROOT_SYMBOLS: Final = ("init_top_pgt", "init_level4_pgt")
# KERNEL_IMAGE_SIZE when VMCOREINFO does not give it (older kernels): the smaller of its two
# values (512 MiB without CONFIG_RANDOMIZE_BASE), so the walk never reaches modules.
_DEFAULT_IMAGE_SIZE: Final = 512 << 20
# More read-only image than any distro kernel has (Debian's 6.1: ~13 MiB with its BTF).
_MAX_READ: Final = 256 << 20


@dataclass
class ReadOnlyData:
    """The read-only, non-executable runs of the kernel image: (virtual address, bytes),
    and the pages of them the dump does not hold (read as zeros)."""

    regions: list[tuple[int, bytes]]
    missing_pages: set[int] = field(default_factory=set)

    def holds(self, start: int, end: int) -> bool:
        """Whether [start, end) lies in one region with no missing page."""
        inside = any(base <= start and end <= base + len(data) for base, data in self.regions)
        return inside and not any(page in self.missing_pages
                                  for page in range(start & ~(_PAGE - 1), end, _PAGE))

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.regions)


def _number(info: Mapping[str, str], key: str) -> Optional[int]:
    try:
        return int(info[key], 0) if key.startswith("NUMBER(") else int(info[key], 16)
    except (KeyError, ValueError):
        return None


def mapped_chunks(read: Callable[[int], tuple[int, ...]], root: int, levels: int, start: int,
                  end: int) -> list[tuple[int, int, int, bool, bool]]:
    """The mapped chunks of [start, end): (virtual, size, physical, writable, executable),
    with the permissions of every level combined as the MMU combines them. ``read`` gives
    the 512 entries of the table at a physical address. Pure: no drgn."""
    chunks: list[tuple[int, int, int, bool, bool]] = []

    def visit(table: int, shift: int, low: int, high: int, writable: bool, executable: bool) -> None:
        entries = read(table)
        span = 1 << shift
        first = low & ~(span - 1)
        for address in range(first, high, span):
            entry = entries[(address >> shift) & 511]
            if not entry & x86.PTE_PRESENT:
                continue
            w = writable and bool(entry & _PTE_WRITABLE)
            x = executable and not entry & _PTE_NX
            physical = entry & x86.PTE_ADDRESS_MASK
            if shift == 12 or (shift in (21, 30) and entry & x86.PTE_HUGE):
                physical &= ~(span - 1)  # a huge entry's low address bits are PAT and flags
                lo, hi = max(low, address), min(high, address + span)
                chunks.append((lo, hi - lo, physical + (lo - address), w, x))
            else:
                visit(physical, shift - 9, max(low, address), min(high, address + span), w, x)

    visit(root, 39 + 9 * (levels - 4), start, end, True, True)
    return chunks


def contiguous_runs(chunks: Iterable[tuple[int, int, int, bool, bool]]) -> list[tuple[int, int, int]]:
    """Chunks of :func:`mapped_chunks` joined where they are contiguous in both address
    spaces: (virtual, size, physical)."""
    runs: list[list[int]] = []
    for virtual, size, physical, _, _ in chunks:
        if runs and runs[-1][0] + runs[-1][1] == virtual and runs[-1][2] + runs[-1][1] == physical:
            runs[-1][1] += size
        else:
            runs.append([virtual, size, physical])
    return [(virtual, size, physical) for virtual, size, physical in runs]


def read_only_data(prog: Program, info: Mapping[str, str]) -> ReadOnlyData:
    """Read the read-only, non-executable part of the kernel image mapping.

    :param info: the dump's VMCOREINFO, as ``{key: value}``.
    :raises DumpError: if VMCOREINFO lacks what the walk needs, the page tables are not
        in the dump, or no such part is mapped (booted with ``rodata=off``, or dumped
        before ``mark_rodata_ro()``).
    """
    stext = _number(info, "SYMBOL(_stext)")
    root = next((v for v in (_number(info, f"SYMBOL({n})") for n in _ROOT_SYMBOLS) if v is not None), None)
    phys_base = _number(info, "NUMBER(phys_base)")
    if stext is None or root is None or phys_base is None:
        raise DumpError("the dump's VMCOREINFO gives no _stext, no kernel page table (init_top_pgt) or no "
                        "phys_base: the kernel image cannot be found without a vmlinux")
    levels = 5 if _number(info, "NUMBER(pgtable_l5_enabled)") else 4
    image_end = x86.START_KERNEL_MAP + (_number(info, "NUMBER(KERNEL_IMAGE_SIZE)") or _DEFAULT_IMAGE_SIZE)
    if not x86.START_KERNEL_MAP <= stext < image_end:
        raise DumpError(f"_stext {stext:#x} is outside the kernel text mapping")

    tables: dict[int, tuple[int, ...]] = {}

    def read_table(physical: int) -> tuple[int, ...]:
        if physical not in tables:
            tables[physical] = _ENTRIES.unpack(prog.read(physical, _PAGE, True))
        return tables[physical]

    try:
        chunks = mapped_chunks(read_table, root - x86.START_KERNEL_MAP + phys_base, levels,
                               stext & ~(_PAGE - 1), image_end)
    except (drgn.FaultError, ValueError) as error:
        raise DumpError(f"the kernel's page tables are not in the dump ({error})") from None

    runs = contiguous_runs(chunk for chunk in chunks if not chunk[3] and not chunk[4])  # read-only, NX
    if not runs:
        raise DumpError("the kernel image has no read-only data mapped (booted with rodata=off, or dumped "
                        "before mark_rodata_ro): its kallsyms and BTF cannot be searched for; a vmlinux is needed")
    if sum(size for _, size, _ in runs) > _MAX_READ:
        raise DumpError(f"the kernel image maps more than {_MAX_READ >> 20} MiB read-only: "
                        "not searched; a vmlinux is needed")
    found = ReadOnlyData([])
    for virtual, size, physical in runs:
        try:
            data = prog.read(physical, size, True)
        except drgn.FaultError:
            # Page by page: makedumpfile leaves out zero pages (-d 1), which read as what they were.
            pages = []
            for offset in range(0, size, _PAGE):
                try:
                    pages.append(prog.read(physical + offset, _PAGE, True))
                except drgn.FaultError:
                    pages.append(bytes(_PAGE))
                    found.missing_pages.add(virtual + offset)
            data = b"".join(pages)
        found.regions.append((virtual, data))
    return found
