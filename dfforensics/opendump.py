"""
Open the dump
-------------

Turn the user's VMCORE and VMLINUX paths into a drgn :class:`~drgn.Program`:
decompress ``.gz``/``.xz``/``.zst`` inputs into a cache once, read VMCOREINFO,
rebuild it from VMLINUX when the dump has none (QEMU dumps of guests without
``-device vmcoreinfo``), and check that VMLINUX belongs to the dump.

Every failure is a :class:`DumpError` whose message is shown to the user as is.
Input files are only ever opened for reading.
"""

import bz2
import gzip
import hashlib
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Final, Optional, Sequence

import drgn
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from dfforensics import x86
from dfforensics.errors import InputError

__all__ = (
    "DumpError",
    "OpenedDump",
    "decompressed",
    "read_elf_vmcoreinfo",
    "vmlinux_facts",
    "open_dump",
)

_MAX_DECOMPRESSED: Final = int(os.environ.get("DFFORENSICS_MAX_DECOMPRESSED", 64 << 30))
_CHUNK: Final = 1 << 20


class DumpError(InputError):
    """A dump or debug-info file the analysis cannot use."""


def _open_zstd(path: str) -> BinaryIO:
    try:
        import zstandard
    except ImportError:
        raise DumpError(f"{path}: zstd-compressed; install the 'zstandard' package") from None
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))


_DECOMPRESSORS: Final[dict[bytes, tuple[str, Callable[[str], BinaryIO]]]] = {
    b"\x1f\x8b": ("gzip", lambda p: gzip.open(p, "rb")),
    b"\xfd7zXZ\x00": ("xz", lambda p: lzma.open(p, "rb")),
    b"\x28\xb5\x2f\xfd": ("zstd", _open_zstd),
    b"BZh": ("bzip2", lambda p: bz2.open(p, "rb")),
}


def _cache_dir() -> str:
    base = os.environ.get("DFFORENSICS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dfforensics")
    os.makedirs(base, exist_ok=True)
    return base


def _compression(path: str) -> Optional[tuple[str, Callable[[str], BinaryIO]]]:
    with open(path, "rb") as file:
        magic = file.read(6)
    for prefix, entry in _DECOMPRESSORS.items():
        if magic.startswith(prefix):
            return entry
    return None


def check_input_file(path: str, what: str) -> None:
    """Raise :class:`DumpError` unless ``path`` is a readable, non-empty regular file."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise DumpError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise DumpError(f"{what} {path}: cannot read: {error.strerror or error}") from None
    if os.path.isdir(path):
        raise DumpError(f"{what} {path}: is a directory")
    try:
        with open(path, "rb") as file:
            if not file.read(1):
                raise DumpError(f"{what} {path}: empty file")
    except OSError as error:
        raise DumpError(f"{what} {path}: cannot read: {error.strerror or error}") from None


def _cached(path: str, tag: str, name: str, produce: Callable[[BinaryIO], None]) -> str:
    """Run ``produce`` once per input into a cache file, atomically; return its path.

    The cache key is the input's identity (real path, size, mtime, inode), so
    a changed input is produced again; a failed or interrupted run leaves no
    partial file behind.
    """
    stat = os.stat(path)
    key = hashlib.sha256(
        f"{tag}\0{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}".encode()
    ).hexdigest()[:24]
    cache = _cache_dir()
    target = os.path.join(cache, f"{key}-{name}")
    if os.path.exists(target):
        return target
    fd, partial = tempfile.mkstemp(dir=cache, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            produce(out)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _write_sparse(out: BinaryIO, chunk: bytes) -> None:
    # Dumps are mostly zeros: keep cached copies sparse.
    if chunk.count(0) == len(chunk):
        out.seek(len(chunk), os.SEEK_CUR)
    else:
        out.write(chunk)


def decompressed(path: str, what: str) -> str:
    """Return a path to the uncompressed contents of ``path``.

    Uncompressed files are returned as they are. Compressed ones are
    decompressed once into the cache (``$DFFORENSICS_CACHE`` or
    ``~/.cache/dfforensics``), keyed by the input's identity, and at most
    ``$DFFORENSICS_MAX_DECOMPRESSED`` bytes (64 GiB) are written.
    """
    check_input_file(path, what)
    compression = _compression(path)
    if compression is None:
        return path
    name, opener = compression

    def produce(out: BinaryIO) -> None:
        written = 0
        with opener(path) as source:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > _MAX_DECOMPRESSED:
                    raise DumpError(f"{what} {path}: decompresses to more than "
                                    f"{_MAX_DECOMPRESSED >> 30} GiB (DFFORENSICS_MAX_DECOMPRESSED)")
                _write_sparse(out, chunk)
        out.truncate()

    try:
        return _cached(path, "plain", os.path.basename(path).rsplit(".", 1)[0], produce)
    except (OSError, EOFError, lzma.LZMAError, gzip.BadGzipFile, ValueError) as error:
        raise DumpError(f"{what} {path}: corrupt {name} data: {error}") from None


# makedumpfile's flattened stream (makedumpfile.h, QEMU dump.c): a 4096-byte
# header starting "makedumpfile", then records {int64 offset; int64 size}
# (big-endian) each followed by its bytes, ended by {-1, -1}.
_FLAT_SIGNATURE: Final = b"makedumpfile"
_FLAT_HEADER_SIZE: Final = 4096
_FLAT_RECORD: Final = struct.Struct(">qq")


def reassembled(path: str, what: str = "VMCORE") -> str:
    """Return a path to the kdump-compressed file a flattened stream holds.

    What ``makedumpfile -R`` does, done once into the cache; other files are
    returned as they are.
    """
    with open(path, "rb") as file:
        if not file.read(len(_FLAT_SIGNATURE)) == _FLAT_SIGNATURE:
            return path

    def produce(out: BinaryIO) -> None:
        with open(path, "rb") as source:
            source.seek(_FLAT_HEADER_SIZE)
            end = 0
            while True:
                record = source.read(_FLAT_RECORD.size)
                if len(record) < _FLAT_RECORD.size:
                    raise DumpError(f"{what} {path}: flattened dump cut before its end marker")
                offset, size = _FLAT_RECORD.unpack(record)
                if offset == -1 and size == -1:
                    break
                if offset < 0 or size <= 0 or offset + size > _MAX_DECOMPRESSED:
                    raise DumpError(f"{what} {path}: corrupt flattened dump (record at offset "
                                    f"{offset}, size {size})")
                out.seek(offset)
                remaining = size
                while remaining:
                    chunk = source.read(min(remaining, _CHUNK))
                    if not chunk:
                        raise DumpError(f"{what} {path}: flattened dump cut inside a record")
                    out.write(chunk)
                    remaining -= len(chunk)
                end = max(end, offset + size)
            out.truncate(end)

    return _cached(path, "flat", "reassembled", produce)


def read_elf_vmcoreinfo(path: str) -> Optional[bytes]:
    """Return the VMCOREINFO note of an ELF core, or ``None`` (also for non-ELF files)."""
    try:
        with open(path, "rb") as file:
            elf = ELFFile(file)
            if elf.header.e_type != "ET_CORE":
                return None
            for segment in elf.iter_segments("PT_NOTE"):
                for note in segment.iter_notes():
                    if note.n_name == "VMCOREINFO":
                        desc = note.n_desc
                        return desc.encode("latin-1") if isinstance(desc, str) else bytes(desc)
    except (ELFError, OSError, ValueError, KeyError, AssertionError):
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


def vmlinux_facts(path: str) -> VmlinuxFacts:
    """Read the build ID, ``linux_banner`` and a few symbols from a vmlinux with pyelftools.

    :raises DumpError: if it is not an ELF kernel image with a symbol table.
    """
    try:
        with open(path, "rb") as file:
            elf = ELFFile(file)
            if elf.header.e_type != "ET_EXEC" or elf.header.e_machine != "EM_X86_64":
                raise DumpError(f"VMLINUX {path}: not an x86_64 kernel image "
                                f"({elf.header.e_type}, {elf.header.e_machine})")
            build_id = None
            for section in elf.iter_sections():
                if section["sh_type"] == "SHT_NOTE":
                    for note in section.iter_notes():
                        if note.n_type == "NT_GNU_BUILD_ID":
                            build_id = note.n_desc
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise DumpError(f"VMLINUX {path}: stripped (no symbol table); give the debug vmlinux")
            symbols = _symbol_values(elf, symtab, ("linux_banner", "init_top_pgt", "swapper_pg_dir", "_text"))
            banner = None
            if "linux_banner" in symbols:
                raw = _read_symbol_bytes(elf, symbols["linux_banner"], 512)
                banner = raw.split(b"\0", 1)[0] if raw else None
            if elf.get_section_by_name(".debug_info") is None:
                raise DumpError(f"VMLINUX {path}: has no DWARF debug info (.debug_info); "
                                "give the debug vmlinux (e.g. from the dbgsym/debuginfo package)")
    except ELFError as error:
        raise DumpError(f"VMLINUX {path}: not an ELF file ({error})") from None
    except OSError as error:
        raise DumpError(f"VMLINUX {path}: cannot read: {error.strerror or error}") from None
    release = banner.split()[2].decode(errors="replace") if banner and len(banner.split()) > 2 else None
    return VmlinuxFacts(build_id, banner, release, symbols)


class _PhysicalMemory:
    """Guest-physical memory of an ELF core, read through its PT_LOADs on one open file."""

    def __init__(self, path: str):
        self.file = open(path, "rb")
        try:
            self.loads = [(s["p_paddr"], s["p_filesz"], s["p_offset"])
                          for s in ELFFile(self.file).iter_segments("PT_LOAD")]
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> "_PhysicalMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def read(self, address: int, size: int) -> Optional[bytes]:
        for start, length, offset in self.loads:
            if start <= address and address + size <= start + length:
                return os.pread(self.file.fileno(), size, offset + address - start)
        return None


_HUGE_2M: Final = 1 << 21


def _kernel_text_virtual(read: Callable[[int, int], Optional[bytes]], pgd_physical: int,
                         text_physical: int) -> Optional[int]:
    """Find the virtual address at which init_top_pgt maps the kernel's first 2 MiB page."""
    def entry(table: int, index: int) -> Optional[int]:
        data = read(table + 8 * index, 8)
        return int.from_bytes(data, "little") if data else None

    pud_entry = entry(pgd_physical, (x86.START_KERNEL_MAP >> 39) & 511)
    if not pud_entry or not pud_entry & x86.PTE_PRESENT:
        return None
    for pud_index in range((x86.START_KERNEL_MAP >> 30) & 511, 512):
        pmd_entry = entry(pud_entry & x86.PTE_ADDRESS_MASK, pud_index)
        if not pmd_entry or not pmd_entry & x86.PTE_PRESENT:
            continue
        table = read(pmd_entry & x86.PTE_ADDRESS_MASK, 4096)
        if table is None:
            continue
        for index in range(512):
            value = int.from_bytes(table[8 * index:8 * index + 8], "little")
            if value & (x86.PTE_PRESENT | x86.PTE_HUGE) == x86.PTE_PRESENT | x86.PTE_HUGE and \
                    value & x86.PTE_ADDRESS_MASK & ~(_HUGE_2M - 1) == text_physical:
                return (0xFFFF << 48) | (511 << 39) | (pud_index << 30) | (index << 21)
    return None


def rebuild_vmcoreinfo(vmcore: str, facts: VmlinuxFacts) -> tuple[bytes, str]:
    """Build the VMCOREINFO drgn needs from VMLINUX and guest memory.

    1. Where the kernel sits in guest-physical memory: VMLINUX's own
       ``linux_banner`` is looked for at every 2 MiB-aligned load address
       (the kernel is loaded 2 MiB aligned, randomized or not).
    2. Where it sits virtually (the KASLR offset): ``init_top_pgt``, read at
       its physical address, maps the kernel text with 2 MiB pages; the slot
       that maps the text's physical page gives the virtual address.
    Returns the note and a sentence saying how it was rebuilt. Supports
    x86_64 kernels with 4-level paging, with or without KASLR.
    """
    if not facts.banner or "linux_banner" not in facts.symbols or not facts.release:
        raise DumpError("the dump has no VMCOREINFO and VMLINUX has no linux_banner to rebuild it from")
    pgd = facts.symbols.get("init_top_pgt") or facts.symbols.get("swapper_pg_dir")
    text = facts.symbols.get("_text")
    if pgd is None or text is None:
        raise DumpError("the dump has no VMCOREINFO and VMLINUX has no init_top_pgt/_text")
    try:
        memory = _PhysicalMemory(vmcore)
    except (ELFError, OSError) as error:
        raise DumpError(f"VMCORE {vmcore}: not an ELF core ({error})") from None
    with memory:
        return _rebuild_from_memory(memory.read, facts, pgd, text)


def _rebuild_from_memory(read: Callable[[int, int], Optional[bytes]], facts: VmlinuxFacts,
                         pgd: int, text: int) -> tuple[bytes, str]:
    banner_from_text = facts.symbols["linux_banner"] - text
    link_physical_text = text - x86.START_KERNEL_MAP
    for load in range(0, 64 << 30, _HUGE_2M):
        data = read(load + banner_from_text, len(facts.banner))
        if data is None:
            if load > link_physical_text + (4 << 30):
                break
            continue
        if data != facts.banner:
            continue
        virtual_text = _kernel_text_virtual(read, load + (pgd - text), load)
        if virtual_text is None:
            raise DumpError("the dump has no VMCOREINFO; VMLINUX's banner is in guest memory at "
                            f"physical {load + banner_from_text:#x}, but the kernel page tables "
                            "there do not map it: cannot rebuild the KASLR layout")
        offset = virtual_text - text
        phys_base = load - (virtual_text - x86.START_KERNEL_MAP)
        note = (f"OSRELEASE={facts.release}\nPAGESIZE=4096\nKERNELOFFSET={offset:x}\n"
                f"SYMBOL(swapper_pg_dir)={pgd + offset:x}\nNUMBER(phys_base)={phys_base}\n"
                f"NUMBER(pgtable_l5_enabled)=0\n")
        if facts.build_id:
            note += f"BUILD-ID={facts.build_id}\n"
        how = (f"the dump has no VMCOREINFO; rebuilt from VMLINUX and guest memory: its "
               f"linux_banner is at physical {load + banner_from_text:#x} (kernel loaded at "
               f"{load:#x}), and init_top_pgt maps the text at {virtual_text:#x} "
               f"(KASLR offset {offset:#x}, phys_base {phys_base:#x})")
        return note.encode(), how
    raise DumpError("the dump has no VMCOREINFO, and VMLINUX's linux_banner is nowhere in guest "
                    "memory at a 2 MiB-aligned load address: VMLINUX is not this kernel's")


# struct disk_dump_header (makedumpfile diskdump_mod.h): block_size at 428;
# struct kdump_sub_header starts one block in, with phys_base then dump_level.
_KDUMP_BLOCK_SIZE_OFFSET: Final = 428
_KDUMP_SUB_DUMP_LEVEL_OFFSET: Final = 8
#: makedumpfile -d bits: zero pages, and user process data.
DUMP_LEVEL_ZERO_PAGES: Final = 1
DUMP_LEVEL_USER_DATA: Final = 8


def read_dump_format(path: str) -> tuple[str, Optional[int]]:
    """Return (format, makedumpfile dump level or None) of an uncompressed dump file."""
    with open(path, "rb") as file:
        head = file.read(4096)
        if head[:8] in (b"KDUMP   ", b"DISKDUMP"):
            block_size = int.from_bytes(head[_KDUMP_BLOCK_SIZE_OFFSET:_KDUMP_BLOCK_SIZE_OFFSET + 4],
                                        "little", signed=True)
            if 0 < block_size <= 1 << 20:
                file.seek(block_size + _KDUMP_SUB_DUMP_LEVEL_OFFSET)
                level = int.from_bytes(file.read(4), "little", signed=True)
                return "kdump-compressed", level if 0 <= level <= 31 else None
            return "kdump-compressed", None
        if head.startswith(b"makedumpfile"):
            return "flattened", None
    return "elf", None


@dataclass
class OpenedDump:
    """A program ready for analysis, and what was done to open it."""

    prog: drgn.Program
    vmcore: str
    vmlinux: str
    vmcoreinfo_source: str
    notes: list[str] = field(default_factory=list)
    format: str = "elf"
    dump_level: Optional[int] = None


def _parse_vmcoreinfo(data: bytes) -> dict[str, str]:
    result = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def _check_vmcoreinfo_match(facts: VmlinuxFacts, vmcoreinfo: Optional[dict[str, str]],
                            vmcore: str, vmlinux: str) -> None:
    if vmcoreinfo:
        dump_id = vmcoreinfo.get("BUILD-ID")
        if dump_id and facts.build_id and dump_id.lower() != facts.build_id.lower():
            raise DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: build ID "
                            f"{facts.build_id} != the dump's {dump_id}")
        release = vmcoreinfo.get("OSRELEASE")
        if release and facts.release and release != facts.release:
            raise DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: kernel "
                            f"{facts.release} != the dump's {release}")


def _check_banner_match(prog: drgn.Program, facts: VmlinuxFacts, vmcore: str, vmlinux: str) -> None:
    if facts.banner:
        try:
            # drgn relocates the symbol by the dump's KASLR offset.
            in_memory = prog.read(prog.symbol("linux_banner").address, len(facts.banner))
        except (drgn.FaultError, LookupError):
            return
        if in_memory != facts.banner:
            theirs = in_memory.split(b"\0")[0].decode(errors="replace")[:80]
            ours = facts.banner.decode(errors="replace")[:80]
            raise DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: its banner "
                            f"'{ours}' is not the dump's '{theirs}'")


def open_dump(vmcore: str, vmlinux: str, module_debuginfo: Sequence[str] = ()) -> OpenedDump:
    """Open a guest crash dump with its debug info.

    :raises DumpError: on unreadable, unrecognised or mismatched inputs.
    """
    vmcore_path = reassembled(decompressed(vmcore, "VMCORE"))
    flattened = vmcore_path != decompressed(vmcore, "VMCORE")
    vmlinux_path = decompressed(vmlinux, "VMLINUX")
    module_paths = [decompressed(path, "module debug info") for path in module_debuginfo]
    notes = []
    vmcoreinfo = read_elf_vmcoreinfo(vmcore_path)
    source = "the dump's VMCOREINFO note"
    facts = None
    prog = drgn.Program()
    # The dump is identified before VMLINUX is read, so that a bad dump is
    # the error the user sees.
    try:
        prog.set_core_dump(vmcore_path)
    except ValueError as error:
        if "vmcoreinfo" not in str(error).lower() and "QEMU" not in str(error):
            raise DumpError(f"VMCORE {vmcore}: {error}") from None
        facts = vmlinux_facts(vmlinux_path)
        vmcoreinfo, how = rebuild_vmcoreinfo(vmcore_path, facts)
        source = "rebuilt from VMLINUX"
        notes.append(how)
        prog = drgn.Program(vmcoreinfo=vmcoreinfo)
        try:
            prog.set_core_dump(vmcore_path)
        except (ValueError, OSError, drgn.FaultError) as again:
            raise DumpError(f"VMCORE {vmcore}: {again}") from None
    except OSError as error:
        raise DumpError(f"VMCORE {vmcore}: {error.strerror or error}") from None
    except drgn.FaultError as error:
        raise DumpError(f"VMCORE {vmcore}: truncated or corrupt ({error})") from None
    except Exception as error:  # libdrgn reports libelf/libkdumpfile failures as bare Exception
        raise DumpError(f"VMCORE {vmcore}: truncated or corrupt ({error})") from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise DumpError(f"VMCORE {vmcore}: not a Linux kernel dump (a user-space core?)")
    if facts is None:
        facts = vmlinux_facts(vmlinux_path)
    parsed = _parse_vmcoreinfo(vmcoreinfo) if vmcoreinfo else None
    # Before loading, so that drgn never gets (and warns about) a foreign vmlinux.
    _check_vmcoreinfo_match(facts, parsed, vmcore, vmlinux)
    try:
        prog.load_debug_info([vmlinux_path, *module_paths])
    except drgn.MissingDebugInfoError as error:
        # Modules without debug info are fine: the analysis needs vmlinux.
        if "kernel" in str(error).splitlines()[0] and "vmlinux" in str(error):
            raise DumpError(f"VMLINUX {vmlinux}: {error}") from None
    except (OSError, ValueError) as error:
        raise DumpError(f"VMLINUX {vmlinux}: {error}") from None
    except Exception as error:  # libdrgn's bare Exception for libelf/libdw failures
        raise DumpError(f"VMLINUX {vmlinux}: unreadable debug info ({error})") from None
    _check_banner_match(prog, facts, vmcore, vmlinux)
    dump_format, dump_level = read_dump_format(vmcore_path)
    if flattened:
        dump_format = "flattened"
        notes.append("the dump is makedumpfile's flattened format; it was reassembled into the "
                     "cache (what 'makedumpfile -R' does)")
    return OpenedDump(prog, vmcore_path, vmlinux_path, source, notes, dump_format, dump_level)
