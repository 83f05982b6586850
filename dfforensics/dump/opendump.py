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
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Final, Optional, Sequence

import drgn

from dfforensics.core.errors import DumpError

if TYPE_CHECKING:
    from dfforensics.inputs.elffacts import VmlinuxFacts

__all__ = (
    "DumpError",
    "OpenedDump",
    "decompressed",
    "open_dump",
)

_MAX_DECOMPRESSED: Final = int(os.environ.get("DFFORENSICS_MAX_DECOMPRESSED", 64 << 30))
_CHUNK: Final = 1 << 20


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
    import hashlib  # here: loading OpenSSL costs ~2 ms, and uncompressed inputs never get here

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


def _check_release_match(prog: drgn.Program, facts: "VmlinuxFacts", vmcore: str, vmlinux: str) -> None:
    release = _parse_vmcoreinfo(prog["VMCOREINFO"].string_()).get("OSRELEASE")
    if release and facts.release and release != facts.release:
        raise DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: kernel "
                        f"{facts.release} != the dump's {release}")


def _check_banner_match(prog: drgn.Program, facts: "VmlinuxFacts", vmcore: str, vmlinux: str) -> None:
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


def _rejected_vmlinux(kernel: drgn.Module, vmlinux_path: str, vmcore: str, vmlinux: str) -> DumpError:
    """Say why drgn did not take VMLINUX as the kernel's debug info (pyelftools reads why)."""
    from dfforensics.inputs.elffacts import vmlinux_facts

    facts = vmlinux_facts(vmlinux_path)  # raises for non-ELF, foreign, stripped or DWARF-less files
    if kernel.build_id is not None and facts.build_id and facts.build_id.lower() != kernel.build_id.hex():
        return DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: build ID "
                         f"{facts.build_id} != the dump's {kernel.build_id.hex()}")
    return DumpError(f"VMLINUX {vmlinux}: drgn does not accept it as debug info for the dump's kernel")


def _kernel_module(prog: drgn.Program) -> drgn.Module:
    """The kernel's module, as drgn makes it: with the build ID named by VMCOREINFO.

    Only the first of the loaded modules is taken: enumerating the others
    needs the kernel's debug info, which is not loaded yet.
    """
    for module, _ in prog.loaded_modules():
        if isinstance(module, drgn.MainModule):
            return module
        break
    return prog.main_module("kernel", create=True)


def _load_vmlinux(prog: drgn.Program, vmlinux_path: str, facts: Optional["VmlinuxFacts"],
                  vmcore: str, vmlinux: str) -> None:
    """Load VMLINUX as the kernel's debug info, refusing one that is not the dump's kernel.

    Where the dump names its kernel's build ID (VMCOREINFO ``BUILD-ID``,
    Linux 5.9 and later), drgn matches it against VMLINUX's own; pyelftools is
    then only needed to explain a refusal. Older kernels' dumps are matched
    by release and ``linux_banner``, read from VMLINUX with pyelftools.
    """
    kernel = _kernel_module(prog)
    if kernel.build_id is None and facts is None:
        from dfforensics.inputs.elffacts import vmlinux_facts

        facts = vmlinux_facts(vmlinux_path)
    if facts is not None:
        # Before loading, so that drgn never gets (and warns about) a foreign vmlinux.
        _check_release_match(prog, facts, vmcore, vmlinux)
    try:
        kernel.try_file(vmlinux_path)
    except OSError as error:
        raise DumpError(f"VMLINUX {vmlinux}: {error.strerror or error}") from None
    except Exception as error:  # libdrgn's bare Exception for libelf/libdw failures
        raise DumpError(f"VMLINUX {vmlinux}: unreadable debug info ({error})") from None
    if kernel.wants_debug_file():
        raise _rejected_vmlinux(kernel, vmlinux_path, vmcore, vmlinux)
    if facts is not None:
        _check_banner_match(prog, facts, vmcore, vmlinux)


def open_dump(vmcore: str, vmlinux: str, module_debuginfo: Sequence[str] = ()) -> OpenedDump:
    """Open a guest crash dump with its debug info.

    :raises DumpError: on unreadable, unrecognised or mismatched inputs.
    """
    plain_path = decompressed(vmcore, "VMCORE")
    vmcore_path = reassembled(plain_path)
    flattened = vmcore_path != plain_path
    vmlinux_path = decompressed(vmlinux, "VMLINUX")
    module_paths = [decompressed(path, "module debug info") for path in module_debuginfo]
    notes = []
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
        from dfforensics.inputs.elffacts import vmlinux_facts
        from dfforensics.dump.rebuildvmcoreinfo import rebuild_vmcoreinfo

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
    _load_vmlinux(prog, vmlinux_path, facts, vmcore, vmlinux)
    try:
        # Also finds the loaded kernel modules, for the ones given and for symbolizing the rest.
        prog.load_debug_info(module_paths)
    except drgn.MissingDebugInfoError:
        pass  # modules without debug info are fine: the analysis needs vmlinux
    except (OSError, ValueError) as error:
        raise DumpError(f"module debug info: {error}") from None
    except Exception as error:  # libdrgn's bare Exception for libelf/libdw failures
        raise DumpError(f"module debug info: unreadable ({error})") from None
    dump_format, dump_level = read_dump_format(vmcore_path)
    if flattened:
        dump_format = "flattened"
        notes.append("the dump is makedumpfile's flattened format; it was reassembled into the "
                     "cache (what 'makedumpfile -R' does)")
    return OpenedDump(prog, vmcore_path, vmlinux_path, source, notes, dump_format, dump_level)
