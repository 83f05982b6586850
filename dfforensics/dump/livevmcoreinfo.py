"""
VMCOREINFO of a running guest, read without pausing it
------------------------------------------------------

drgn reads a QMP guest's VMCOREINFO with ``dump-guest-memory`` of one byte, the only
way QMP offers to reach the note QEMU's ``vmcoreinfo`` device points at; QEMU stops
the guest for that dump (about half a millisecond; other monitors see ``STOP`` and
``RESUME``). This reads the same note with read-only monitor commands, the guest
running: HMP ``info registers`` for the page-table root one vCPU runs on (CR3, read
live: never a stale kernel left in RAM by an earlier boot), HMP ``xp`` for physical
memory, and the kernel's own pointer to its note (``vmcoreinfo_note``), found
through the kernel text mapping of that root:

1. PGD[511] -> PUD[510] maps ``__START_KERNEL_map`` .. +1 GiB, where the (KASLR)
   kernel image is; its first present 2 MiB page is ``_text`` (``cleanup_highmap``
   unmaps everything before it).
2. The kernel found there must be the expected one: its ``linux_banner`` is the
   expected banner, byte for byte.
3. ``vmcoreinfo_note`` (a pointer in the image) gives the note's direct-map address,
   ``page_offset_base`` (when the kernel has it) the direct map's base; the note is
   an ELF note named ``VMCOREINFO``, as the kernel wrote it.

Where the build is not known, :func:`search_vmcoreinfo` finds the same pointer without
symbols: every page-aligned kernel pointer in the image's mapped pages is followed, and a
note reached so counts only if it describes the live kernel and is the only one.

Where any step does not hold (5-level paging, a vCPU outside Linux, another kernel,
no note), :class:`NoteNotFound` says why and the caller falls back to drgn's way.

The page-walking part is pure (it takes a ``read(physical, size)`` function) and
is tested on plain bytes; :class:`HumanMonitor` is the QMP side.
"""

import json
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Final, Optional, Sequence

from dfforensics.core import x86
from dfforensics.dump.kernelimage import contiguous_runs, mapped_chunks

__all__ = ("HumanMonitor", "KernelLandmarks", "NoteNotFound", "find_vmcoreinfo", "kernel_image_runs",
           "kernel_text_start", "parse_note", "search_vmcoreinfo", "translate")

Read = Callable[[int, int], Optional[bytes]]

#: The symbols the walk needs, by name; offsets from ``_text`` (the same in every
#: boot of one build, KASLR or not).
LANDMARK_SYMBOLS: Final = ("linux_banner", "vmcoreinfo_note", "page_offset_base")

# __PAGE_OFFSET_BASE_L4 (arch/x86/include/asm/page_64_types.h): the direct map's base
# with 4-level paging where the kernel has no page_offset_base variable (no
# CONFIG_RANDOMIZE_MEMORY/CONFIG_DYNAMIC_MEMORY_LAYOUT).
_PAGE_OFFSET_L4: Final = 0xFFFF888000000000
_HUGE_2M: Final = 1 << 21
_CR4_LA57: Final = 1 << 12
# With PTI, a user CR3 points at the second page of an 8 KiB-aligned pair; the first
# is the kernel's (arch/x86/include/asm/pgtable.h PTI_PGTABLE_SWITCH_BIT).
_PTI_USER_PGTABLE_BIT: Final = 1 << 12
# VMCOREINFO_NOTE_SIZE is a few KiB in every kernel since 4.15 (one page of text).
_NOTE_LIMIT: Final = 1 << 16
_NOTE_NAME: Final = b"VMCOREINFO\0"


class NoteNotFound(Exception):
    """The note could not be reached this way; the message says why."""


@dataclass(frozen=True)
class KernelLandmarks:
    """What identifies one kernel build in memory: its banner, and where some of
    its symbols are relative to ``_text``."""

    banner: bytes
    offsets: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_symbols(cls, banner: bytes, symbols: dict[str, int]) -> Optional["KernelLandmarks"]:
        """From link-time (or runtime) addresses of ``_text`` and the landmarks; None
        without a banner, ``_text``, ``linux_banner`` or ``vmcoreinfo_note``."""
        if not banner or "_text" not in symbols:
            return None
        offsets = {name: symbols[name] - symbols["_text"] for name in LANDMARK_SYMBOLS if name in symbols}
        if "linux_banner" not in offsets or "vmcoreinfo_note" not in offsets:
            return None
        return cls(banner, offsets)

    def saved(self) -> dict:
        """The JSON form :meth:`from_saved` reads."""
        return {"banner": self.banner.hex(), "offsets": dict(self.offsets)}

    @classmethod
    def from_saved(cls, record: object) -> Optional["KernelLandmarks"]:
        """Landmarks from their JSON form, or None for anything not in that form."""
        if not isinstance(record, dict) or not isinstance(record.get("offsets"), dict):
            return None
        offsets = record["offsets"]
        if not all(isinstance(name, str) and type(value) is int for name, value in offsets.items()):
            return None
        try:
            banner = bytes.fromhex(record.get("banner", ""))
        except (TypeError, ValueError):
            return None
        if not banner.startswith(b"Linux version ") or not {"linux_banner", "vmcoreinfo_note"} <= offsets.keys():
            return None
        return cls(banner, {name: offsets[name] for name in LANDMARK_SYMBOLS if name in offsets})


def _word(read: Read, physical: int) -> int:
    data = read(physical, 8)
    if data is None or len(data) != 8:
        raise NoteNotFound(f"guest-physical {physical:#x} is not readable")
    return int.from_bytes(data, "little")


def _table_reader(read: Read) -> Callable[[int], tuple[int, ...]]:
    """The 512 entries of the page table at a physical address, each table read once."""
    tables: dict[int, tuple[int, ...]] = {}

    def entries(physical: int) -> tuple[int, ...]:
        if physical not in tables:
            data = read(physical, 4096)
            if data is None or len(data) != 4096:
                raise NoteNotFound(f"the page table at guest-physical {physical:#x} is not readable")
            tables[physical] = _ENTRIES.unpack(data)
        return tables[physical]

    return entries


def _text_pmds(tables: Callable[[int], tuple[int, ...]], pgd: int) -> tuple[int, tuple[int, ...], int]:
    """The kernel text mapping's page directory: the virtual base it maps, its entries, and
    the index of its first 2 MiB page (``_text``'s, KASLR or not: ``cleanup_highmap``
    unmaps all before it). 4-level paging."""
    pgd_entry = tables(pgd)[(x86.START_KERNEL_MAP >> 39) & 511]
    if not pgd_entry & x86.PTE_PRESENT:
        raise NoteNotFound("the page-table root maps no kernel text")
    pud_index = (x86.START_KERNEL_MAP >> 30) & 511
    pud_entry = tables(pgd_entry & x86.PTE_ADDRESS_MASK)[pud_index]
    if not pud_entry & x86.PTE_PRESENT or pud_entry & x86.PTE_HUGE:
        raise NoteNotFound("the page-table root maps no kernel text with 2 MiB pages")
    entries = tables(pud_entry & x86.PTE_ADDRESS_MASK)
    first = next((i for i, entry in enumerate(entries)
                  if entry & (x86.PTE_PRESENT | x86.PTE_HUGE) == x86.PTE_PRESENT | x86.PTE_HUGE), None)
    if first is None:
        raise NoteNotFound("the kernel text mapping has no 2 MiB page")
    return (0xFFFF << 48) | (511 << 39) | (pud_index << 30), entries, first


def kernel_text_start(read: Read, pgd: int) -> tuple[int, int]:
    """(virtual, physical) of the first 2 MiB page the kernel text mapping of the root
    ``pgd`` maps: where ``_text`` is, KASLR or not."""
    base, entries, first = _text_pmds(_table_reader(read), pgd)
    return base | (first << 21), entries[first] & x86.PTE_ADDRESS_MASK & ~(_HUGE_2M - 1)


def kernel_image_runs(read: Read, pgd: int) -> tuple[int, int, list[tuple[int, int, int]]]:
    """:func:`kernel_text_start`, and the runs ``(virtual, size, physical)`` of every page
    the mapping maps from ``_text`` to its first unmapped 2 MiB (the image's end; the gaps
    the kernel freed inside it are unmapped and left out)."""
    tables = _table_reader(read)
    base, entries, first = _text_pmds(tables, pgd)
    last = first
    while last + 1 < 512 and entries[last + 1] & x86.PTE_PRESENT:
        last += 1
    virtual_text = base | (first << 21)
    chunks = mapped_chunks(tables, pgd, 4, virtual_text, base | ((last + 1) << 21))
    return virtual_text, entries[first] & x86.PTE_ADDRESS_MASK & ~(_HUGE_2M - 1), contiguous_runs(chunks)


def _roots(cr3: int) -> list[int]:
    """The page-table roots CR3 can mean: itself, and with PTI, when it is a user root (the
    second page of an 8 KiB pair), the kernel's first page before it."""
    root = cr3 & x86.PTE_ADDRESS_MASK
    return [root, root & ~_PTI_USER_PGTABLE_BIT] if root & _PTI_USER_PGTABLE_BIT else [root]


def parse_note(data: bytes) -> Optional[bytes]:
    """The text of an ELF note named ``VMCOREINFO`` at the start of ``data``, or None."""
    if len(data) < 12:
        return None
    namesz, descsz, _ = (int.from_bytes(data[i:i + 4], "little") for i in (0, 4, 8))
    name_end = 12 + namesz
    desc = 12 + (namesz + 3) // 4 * 4
    if namesz != len(_NOTE_NAME) or data[12:name_end] != _NOTE_NAME or not 0 < descsz <= len(data) - desc:
        return None
    text = data[desc:desc + descsz]
    return text if text.startswith(b"OSRELEASE=") else None


def find_vmcoreinfo(read: Read, cr3: int, cr4: int, builds: Sequence[KernelLandmarks]) -> tuple[bytes, str]:
    """The guest kernel's VMCOREINFO text, found from a live page-table root, and a
    sentence saying where. The kernel must be one of ``builds`` (its banner, byte for
    byte, where that build has it). Supports x86_64 guests with 4-level paging.

    :raises NoteNotFound: where the walk cannot go on (the message says why).
    """
    if cr4 & _CR4_LA57:
        raise NoteNotFound("the guest uses 5-level paging")
    problems = []
    for pgd in _roots(cr3):
        try:
            virtual_text, load = kernel_text_start(read, pgd)
        except NoteNotFound as problem:
            problems.append(str(problem))
            continue
        landmarks = next((build for build in builds
                          if read(load + build.offsets["linux_banner"], len(build.banner)) == build.banner), None)
        if landmarks is None:
            problems.append(f"the kernel at guest-physical {load:#x} is not the expected one "
                            "(its linux_banner differs)" if len(builds) == 1 else
                            f"the kernel at guest-physical {load:#x} is none of the {len(builds)} "
                            "builds known (no linux_banner matches)")
            continue
        offsets = landmarks.offsets
        if "page_offset_base" in offsets:
            page_offset = _word(read, load + offsets["page_offset_base"])
        else:
            page_offset = _PAGE_OFFSET_L4
        note_virtual = _word(read, load + offsets["vmcoreinfo_note"])
        note_physical = note_virtual - page_offset
        if not 0 < note_physical < 1 << 52:
            raise NoteNotFound(f"vmcoreinfo_note {note_virtual:#x} is not in the direct map")
        header = read(note_physical, 12) or b""
        if len(header) != 12:
            raise NoteNotFound(f"vmcoreinfo_note's guest-physical {note_physical:#x} is not readable")
        namesz, descsz = int.from_bytes(header[0:4], "little"), int.from_bytes(header[4:8], "little")
        size = 12 + (namesz + 3) // 4 * 4 + descsz
        text = parse_note(read(note_physical, size) or b"") if size <= _NOTE_LIMIT else None
        if text is None:
            raise NoteNotFound(f"no VMCOREINFO note at guest-physical {note_physical:#x}")
        return text, (f"read from guest memory without pausing the guest: the kernel at "
                      f"{virtual_text:#x} (guest-physical {load:#x}) points at its note at "
                      f"{note_physical:#x}")
    raise NoteNotFound("; ".join(problems))


def translate(read: Read, pgd: int, virtual: int) -> Optional[int]:
    """The guest-physical address of ``virtual`` through the 4-level root ``pgd``
    (1 GiB and 2 MiB pages included), or None where it is not mapped or not readable."""
    return _translate(_table_reader(read), pgd, virtual)


def _translate(tables: Callable[[int], tuple[int, ...]], pgd: int, virtual: int) -> Optional[int]:
    try:
        chunks = mapped_chunks(tables, pgd, 4, virtual, virtual + 1)
    except NoteNotFound:
        return None
    return chunks[0][2] if chunks else None


# A page-aligned pointer into the kernel half (4-level: bits 63-47 set, the low 12 clear),
# as the kernel's `vmcoreinfo_note` holds one.
_QWORD: Final = struct.Struct("<Q")
_ENTRIES: Final = struct.Struct("<512Q")
_POINTER_MASK: Final = 0xFFFF_8000_0000_0FFF
_KERNEL_HALF: Final = 0xFFFF_8000_0000_0000
#: At most this many distinct pointers are followed: a kernel image holds a few thousand.
_MAX_POINTERS: Final = 200_000
#: A distro kernel image (text, data, bss) is a few tens of MiB.
_MAX_IMAGE: Final = 256 << 20


def _fields(text: bytes) -> dict[str, str]:
    lines = text.decode("ascii", "replace").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _describes(text: bytes, read: Read, pgd: int, virtual_text: int, load: int, pointer: int) -> bool:
    """Whether a note says what the live kernel is: its phys_base puts ``_text`` where the
    page tables do, and its swapper_pg_dir maps the kernel text and the note's own address
    (``pointer``) as the live root does (the top-level entries every root shares)."""
    fields = _fields(text)
    try:
        phys_base = int(fields["NUMBER(phys_base)"], 0)
        swapper = int(fields.get("SYMBOL(swapper_pg_dir)") or fields["SYMBOL(init_top_pgt)"], 16)
    except (KeyError, ValueError):
        return False
    if phys_base != load - (virtual_text - x86.START_KERNEL_MAP) or swapper < x86.START_KERNEL_MAP:
        return False
    swapper_physical = swapper - x86.START_KERNEL_MAP + phys_base
    for index in {(x86.START_KERNEL_MAP >> 39) & 511, (pointer >> 39) & 511}:
        theirs, ours = read(swapper_physical + 8 * index, 8), read(pgd + 8 * index, 8)
        if theirs is None or theirs != ours:
            return False
    return True


def search_vmcoreinfo(read: Read, cr3: int, cr4: int) -> tuple[bytes, str]:
    """The guest kernel's VMCOREINFO, for a kernel whose build is not known: the live root's
    kernel image is searched for the pointer to its note (``vmcoreinfo_note``, in the
    image's data), each page-aligned kernel pointer there is followed through the page
    tables, and a VMCOREINFO note found so is kept only if it describes this kernel
    (:func:`_describes`) and is the only such note. Image data cannot be written from user
    space, so a note user code forged elsewhere is never reached. 4-level paging.

    :raises NoteNotFound: with the reason, when no note, or more than one, is found.
    """
    if cr4 & _CR4_LA57:
        raise NoteNotFound("the guest uses 5-level paging")
    problems, found = [], {}
    for pgd in _roots(cr3):
        try:
            found = _notes_in_image(read, pgd)
        except NoteNotFound as problem:
            problems.append(str(problem))
            continue
        if found:
            break
        problems.append("no pointer in the kernel image leads to a VMCOREINFO note of this kernel")
    if not found:
        raise NoteNotFound("; ".join(problems))
    if len(found) > 1:
        raise NoteNotFound(f"{len(found)} different VMCOREINFO notes describe this kernel: ambiguous")
    [(text, (physical, virtual_text, load))] = found.items()
    return text, (f"read from guest memory without pausing the guest: the kernel at {virtual_text:#x} "
                  f"(guest-physical {load:#x}) holds the only pointer to a note of its own, at {physical:#x}")


def _notes_in_image(read: Read, pgd: int) -> dict[bytes, tuple[int, int, int]]:
    """Every VMCOREINFO note describing this kernel that a page-aligned pointer in its
    image leads to: text -> (physical, virtual_text, load)."""
    virtual_text, load, runs = kernel_image_runs(read, pgd)
    if sum(size for _, size, _ in runs) > _MAX_IMAGE:
        raise NoteNotFound("the kernel text mapping spans more than a kernel image")
    end = runs[-1][0] + runs[-1][1]
    pointers: set[int] = set()
    for _, size, physical in runs:
        for offset in range(0, size, _HUGE_2M):
            chunk = read(physical + offset, min(_HUGE_2M, size - offset))
            if chunk is None:
                raise NoteNotFound(f"the kernel image at guest-physical {physical + offset:#x} is not readable")
            pointers.update(word for (word,) in _QWORD.iter_unpack(chunk[:len(chunk) // 8 * 8])
                            if word & _POINTER_MASK == _KERNEL_HALF)
    pointers = {p for p in pointers if not virtual_text <= p < end}
    if len(pointers) > _MAX_POINTERS:
        raise NoteNotFound(f"the kernel image holds {len(pointers)} page pointers: too many to follow")
    found: dict[bytes, tuple[int, int, int]] = {}
    tables = _table_reader(read)
    for pointer in sorted(pointers):
        physical = _translate(tables, pgd, pointer)
        header = read(physical, 12) if physical is not None else None
        if not header or header[:4] != len(_NOTE_NAME).to_bytes(4, "little"):
            continue
        descsz = int.from_bytes(header[4:8], "little")
        note_size = 12 + (len(_NOTE_NAME) + 3) // 4 * 4 + descsz
        text = parse_note(read(physical, note_size) or b"") if note_size <= _NOTE_LIMIT else None
        if text is not None and _describes(text, read, pgd, virtual_text, load, pointer):
            found.setdefault(text, (physical, virtual_text, load))
    return found


_XP_LINE: Final = re.compile(r"^([0-9a-f]+):((?: 0x[0-9a-f]{16})+)\s*$")
_REGISTER: Final = re.compile(r"\b(CR3|CR4)=([0-9a-f]+)\b")
#: HMP ``xp`` words per command: one reply of 64 KiB of text at most.
_XP_WORDS: Final = 512


class HumanMonitor:
    """Read-only HMP commands over a QMP connection this object owns.

    Only ``qmp_capabilities`` and ``human-monitor-command`` with ``info registers``
    and ``xp`` are sent: none of them stops or changes the guest.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rw", encoding="utf-8", newline="\n")
        greeting = json.loads(self.file.readline() or "null")
        if not isinstance(greeting, dict) or "QMP" not in greeting:
            raise NoteNotFound("the monitor sent no QMP greeting")
        self._execute({"execute": "qmp_capabilities"})

    def _execute(self, command: dict) -> object:
        self.file.write(json.dumps(command) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise NoteNotFound("QEMU closed the monitor connection")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise NoteNotFound(f"QMP: {reply['error'].get('desc', reply['error'])}")
            # An asynchronous event ("event" key): not a reply.

    def hmp(self, command_line: str) -> str:
        reply = self._execute({"execute": "human-monitor-command",
                               "arguments": {"command-line": command_line}})
        return reply if isinstance(reply, str) else ""

    def control_registers(self) -> tuple[int, int]:
        """CR3 and CR4 of the monitor's current vCPU."""
        found = dict(_REGISTER.findall(self.hmp("info registers")))
        if "CR3" not in found or "CR4" not in found:
            raise NoteNotFound("'info registers' shows no CR3/CR4 (not an x86_64 guest?)")
        return int(found["CR3"], 16), int(found["CR4"], 16)

    def read_physical(self, physical: int, size: int) -> Optional[bytes]:
        """Guest-physical bytes (whole words), or None where memory is not there."""
        start = physical & ~7
        words = (physical + size - start + 7) // 8
        data = bytearray()
        while len(data) < words * 8:
            count = min(_XP_WORDS, words - len(data) // 8)
            text = self.hmp(f"xp /{count}gx {start + len(data):#x}")
            chunk = bytearray()
            for line in text.splitlines():
                match = _XP_LINE.match(line.strip())
                if not match:
                    return None  # "Cannot access memory" and the like
                for value in match.group(2).split():
                    chunk += int(value, 16).to_bytes(8, "little")
            if len(chunk) != count * 8:
                return None
            data += chunk
        offset = physical - start
        return bytes(data[offset:offset + size])

    def close(self) -> None:
        self.file.close()
        self.sock.close()
