"""
What the ELF files say by themselves
------------------------------------

pyelftools readings of the inputs, for what drgn does not tell before it has
loaded them: the VMCOREINFO note of an ELF core (to match a dump to its
VMLINUX before opening it, in triage planning), and a vmlinux's build ID,
``linux_banner`` and the few symbols the VMCOREINFO rebuild needs.

The common path of opening a dump does not need this module (drgn reads
VMCOREINFO and matches VMLINUX's build ID itself): it is imported where it
is used, so that a run that does not need it does not pay for importing
pyelftools.
"""

import os
import struct
from dataclasses import dataclass, field
from typing import Iterator, Callable, Final, Optional, Sequence

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dfforensics.core import x86
from dfforensics.core.errors import DumpError, ErrorKind

__all__ = ("CorePhysicalMemory", "VmlinuxFacts", "kernel_load_address", "read_build_id",
           "read_elf_vmcoreinfo", "release_from_banner", "vmlinux_facts")


_ELF64_HEADER: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_ELF64_PHDR: Final = struct.Struct("<IIQQQQQQ")
_NOTE_HEADER: Final = struct.Struct("<III")
_PT_NOTE: Final = 4
#: A PT_NOTE larger than this is not read: real ones hold a few KiB per CPU, and a
#: corrupt size (a "note bomb" of 16 GiB) must cost nothing.
MAX_NOTE_SEGMENT: Final = 16 << 20


def _notes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, desc) of each ELF note in a PT_NOTE segment's bytes; stops at the first bad one."""
    offset = 0
    while offset + _NOTE_HEADER.size <= len(data):
        name_size, desc_size, _ = _NOTE_HEADER.unpack_from(data, offset)
        offset += _NOTE_HEADER.size
        name_end = offset + name_size
        desc_start = offset + (name_size + 3) // 4 * 4
        desc_end = desc_start + desc_size
        if desc_end > len(data):
            return
        yield data[offset:name_end].rstrip(b"\0"), data[desc_start:desc_end]
        offset = desc_start + (desc_size + 3) // 4 * 4


def read_elf_vmcoreinfo(path: str) -> Optional[bytes]:
    """Return the VMCOREINFO note of an x86_64 ELF core, or ``None`` (also for other files).

    Read by hand, not with pyelftools: a corrupt note size made pyelftools walk a
    sparse 16 GiB segment 12 bytes at a time, for hours, in triage's parent.
    Segments over :data:`MAX_NOTE_SEGMENT` are skipped; the work is bounded by
    the program header count (at most 65535).
    """
    try:
        with open(path, "rb") as file:
            header = file.read(_ELF64_HEADER.size)
            if len(header) < _ELF64_HEADER.size or header[:4] != b"\x7fELF" or header[4] != 2 \
                    or header[5] != 1:
                return None
            (_, e_type, _, _, _, e_phoff, _, _, _, e_phentsize, e_phnum, _, _, _) = \
                _ELF64_HEADER.unpack(header)
            if e_type != 4 or e_phentsize != _ELF64_PHDR.size:
                return None
            file.seek(e_phoff)
            table = file.read(e_phnum * _ELF64_PHDR.size)
            for index in range(len(table) // _ELF64_PHDR.size):
                p_type, _, p_offset, _, _, p_filesz, _, _ = _ELF64_PHDR.unpack_from(table, index * _ELF64_PHDR.size)
                if p_type != _PT_NOTE or not 0 < p_filesz <= MAX_NOTE_SEGMENT:
                    continue
                file.seek(p_offset)
                for name, desc in _notes(file.read(p_filesz)):
                    if name == b"VMCOREINFO":
                        return desc
    except (OSError, ValueError, OverflowError):
        return None
    return None


def release_from_banner(banner: bytes) -> Optional[str]:
    """The release in a ``linux_banner`` ("Linux version 6.1.0-13-amd64 (...) ...")."""
    words = banner.split()
    return words[2].decode("utf-8", errors="replace") if len(words) > 2 else None


def read_build_id(path: str) -> Optional[str]:
    """The GNU build ID (hex) of an ELF file, or ``None`` (also for non-ELF files)."""
    try:
        with open(path, "rb") as file:
            elf = ELFFile(file)
            for section in elf.iter_sections():
                if section["sh_type"] == "SHT_NOTE":
                    for note in section.iter_notes():
                        if note.n_type == "NT_GNU_BUILD_ID":
                            return str(note.n_desc).lower()
    except (ELFError, OSError, ValueError, KeyError, AssertionError, struct.error):
        return None
    return None


@dataclass
class VmlinuxFacts:
    """What the debug vmlinux says about its kernel."""

    build_id: Optional[str]
    banner: Optional[bytes]
    release: Optional[str]
    symbols: dict[str, int] = field(default_factory=dict)


def _read_symbol_bytes(elf: ELFFile, address: int, size: int) -> Optional[bytes]:
    for section in elf.iter_sections():
        start = section["sh_addr"]
        if section["sh_type"] != "SHT_NOBITS" and start <= address < start + section["sh_size"]:
            # Only these bytes: section.data() would read all of .rodata.
            size = min(size, start + section["sh_size"] - address)
            elf.stream.seek(section["sh_offset"] + address - start)
            return elf.stream.read(size)
    return None


_ELF64_SYM: Final = struct.Struct("<IBBHQQ")


def _symbol_values(elf: ELFFile, symtab, names: Sequence[str]) -> dict[str, int]:
    """The value of the first symbol of each name, from the raw .symtab and .strtab.

    pyelftools' get_symbol_by_name parses every symbol of the table one by one
    (seconds on a vmlinux); this matches the names' string table offsets instead.
    """
    if elf.elfclass != 64 or not elf.little_endian or symtab["sh_entsize"] != _ELF64_SYM.size:
        symbols = {}
        for name in names:
            found = symtab.get_symbol_by_name(name)
            if found:
                symbols[name] = found[0]["st_value"]
        return symbols
    strings = symtab.stringtable.data()
    wanted: dict[int, str] = {}
    for name in names:
        key = name.encode() + b"\0"
        at = strings.find(key)
        while at >= 0:
            wanted[at] = name
            at = strings.find(key, at + 1)
    # The st_name column (first 4 bytes of every 24-byte symbol) as one list, made in C:
    # unpacking the tens of thousands of symbols in Python took 10 ms per vmlinux.
    table = symtab.data()
    st_names = memoryview(table)[:len(table) - len(table) % _ELF64_SYM.size].cast("I")[::_ELF64_SYM.size // 4].tolist()
    first: dict[str, int] = {}
    for offset, name in wanted.items():
        try:
            index = st_names.index(offset)
        except ValueError:
            continue
        if name not in first or index < first[name]:
            first[name] = index
    return {name: _ELF64_SYM.unpack_from(table, index * _ELF64_SYM.size)[4] for name, index in first.items()}


def vmlinux_facts(path: str, shown: Optional[str] = None) -> VmlinuxFacts:
    """Read the build ID, ``linux_banner`` and a few symbols from a vmlinux with pyelftools.

    :param shown: the path to name in errors (the user's file, when ``path`` is its
        decompressed copy in the cache).
    :raises DumpError: if it is not an ELF kernel image with a symbol table.
    """
    name = shown or path
    try:
        with open(path, "rb") as file:
            elf = ELFFile(file)
            if elf.header.e_type != "ET_EXEC" or elf.header.e_machine != "EM_X86_64":
                raise DumpError(f"VMLINUX {name}: not an x86_64 kernel image "
                                f"({elf.header.e_type}, {elf.header.e_machine})", ErrorKind.DEBUGINFO)
            build_id = None
            for section in elf.iter_sections():
                if section["sh_type"] == "SHT_NOTE":
                    for note in section.iter_notes():
                        if note.n_type == "NT_GNU_BUILD_ID":
                            build_id = note.n_desc
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise DumpError(f"VMLINUX {name}: stripped (no symbol table); give the debug vmlinux",
                                ErrorKind.DEBUGINFO)
            symbols = _symbol_values(elf, symtab, ("linux_banner", "init_top_pgt", "swapper_pg_dir", "_text",
                                                  "vmcoreinfo_note", "page_offset_base"))
            banner = None
            if "linux_banner" in symbols:
                raw = _read_symbol_bytes(elf, symbols["linux_banner"], 512)
                banner = raw.split(b"\0", 1)[0] if raw else None
            if elf.get_section_by_name(".debug_info") is None:
                raise DumpError(f"VMLINUX {name}: has no DWARF debug info (.debug_info); "
                                "give the debug vmlinux (e.g. from the dbgsym/debuginfo package)",
                                ErrorKind.DEBUGINFO)
    except ELFError as error:
        raise DumpError(f"VMLINUX {name}: not an ELF file ({error})", ErrorKind.DEBUGINFO) from None
    except OSError as error:
        raise DumpError(f"VMLINUX {name}: cannot read: {error.strerror or error}",
                        ErrorKind.DEBUGINFO) from None
    release = release_from_banner(banner) if banner else None
    return VmlinuxFacts(build_id, banner, release, symbols)


class CorePhysicalMemory:
    """Guest-physical memory of an ELF core, read through its PT_LOADs on one open file."""

    def __init__(self, path: str):
        self.file = open(path, "rb")
        try:
            self.loads = [(s["p_paddr"], s["p_filesz"], s["p_offset"])
                          for s in ELFFile(self.file).iter_segments("PT_LOAD")]
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> "CorePhysicalMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def read(self, address: int, size: int) -> Optional[bytes]:
        for start, length, offset in self.loads:
            if start <= address and address + size <= start + length:
                return os.pread(self.file.fileno(), size, offset + address - start)
        return None


_KERNEL_ALIGN: Final = 1 << 21


def kernel_load_address(read: Callable[[int, int], Optional[bytes]], facts: VmlinuxFacts) -> Optional[int]:
    """The guest-physical address the kernel of ``facts`` was loaded at, or None if
    its ``linux_banner`` is at no 2 MiB-aligned load address (randomized or not,
    the kernel is loaded 2 MiB aligned): the same kernel, found in memory alone."""
    if not facts.banner or "linux_banner" not in facts.symbols or "_text" not in facts.symbols:
        return None
    banner_from_text = facts.symbols["linux_banner"] - facts.symbols["_text"]
    link_physical_text = facts.symbols["_text"] - x86.START_KERNEL_MAP
    for load in range(0, 64 << 30, _KERNEL_ALIGN):
        data = read(load + banner_from_text, len(facts.banner))
        if data is None:
            if load > link_physical_text + (4 << 30):
                break
            continue
        if data == facts.banner:
            return load
    return None
