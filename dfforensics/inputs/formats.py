"""
Input formats
-------------

What a dump or vmlinux file is by its bytes, in one place and without drgn
(triage's parent sniffs files with it; its workers decompress and read the
dumps with it, each on its dump's limits):

- sniffing: compression magic (gzip, xz, zstd, bzip2) and dump magic (ELF
  core, makedumpfile's kdump-compressed format and its flattened stream);
- decompression and reassembly into the cache (``$DFFORENSICS_CACHE``), once
  per input, atomically, never from a cache entry that is not what we wrote;
- the kdump-compressed header, validated against the file's size before drgn
  or libkdumpfile see it;
- VMCOREINFO, and the kernel identity (release, build ID) a dump names.

Every failure is a :class:`DumpError` with its :class:`ErrorKind`. Input files
are only ever opened for reading.
"""

import os
import re
import stat as stat_mode
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Final, Mapping, NamedTuple, Optional

from dfforensics.core.errors import DumpError, ErrorKind

__all__ = (
    "DUMP_KINDS", "DUMP_LEVEL_USER_DATA", "DUMP_LEVEL_ZERO_PAGES", "DumpIdentity", "KdumpHeader",
    "Vmcoreinfo", "cache_dir", "check_input_file", "check_vmcoreinfo", "compression_of", "decompressed",
    "discard_partials",
    "dump_kernel_identity", "dump_kind", "parse_vmcoreinfo", "read_dump_format",
    "read_kdump_header", "reassembled", "sniff", "read_keyed", "write_keyed", "discard_keyed",
)

SNIFF_BYTES: Final = 4096
_CHUNK: Final = 1 << 20
_MAX_DECOMPRESSED: Final = int(os.environ.get("DFFORENSICS_MAX_DECOMPRESSED", 64 << 30))

#: The kinds of dump files triage recognises by content.
DUMP_KINDS: Final = ("elf-core", "kdump-compressed", "flattened")

def _mkstemp(directory: str, prefix: str) -> tuple[int, str]:
    import tempfile  # only when the cache is written: it imports random (and hashlib's sha512)

    return tempfile.mkstemp(dir=directory, prefix=prefix)


# --- compression ------------------------------------------------------------


def _open_zstd(path: str) -> BinaryIO:
    try:
        import zstandard
    except ImportError:
        raise DumpError(f"{path}: zstd-compressed; install the 'zstandard' package") from None
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))


# The decompressors are imported when a file needs one (gzip, lzma and bz2 with tempfile
# are ~6 ms of every start, and most dumps are read as they are).
def _open_gzip(path: str) -> BinaryIO:
    import gzip

    return gzip.open(path, "rb")


def _open_xz(path: str) -> BinaryIO:
    import lzma

    return lzma.open(path, "rb")


def _open_bzip2(path: str) -> BinaryIO:
    import bz2

    return bz2.open(path, "rb")


_COMPRESSIONS: Final[dict[bytes, tuple[str, Callable[[str], BinaryIO]]]] = {
    b"\x1f\x8b": ("gzip", _open_gzip),
    b"\xfd7zXZ\x00": ("xz", _open_xz),
    b"\x28\xb5\x2f\xfd": ("zstd", _open_zstd),
    b"BZh": ("bzip2", _open_bzip2),
}


def _decoder_errors() -> tuple[type[BaseException], ...]:
    """What a decompressor raises on bad data (zstandard's own ZstdError too, if installed)."""
    import lzma

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, ValueError)
    try:
        import zstandard
    except ImportError:
        return errors
    return errors + (zstandard.ZstdError,)


def _compression(head: bytes) -> Optional[tuple[str, Callable[[str], BinaryIO]]]:
    for prefix, entry in _COMPRESSIONS.items():
        if head.startswith(prefix):
            return entry
    return None


def compression_of(head: bytes) -> Optional[str]:
    """The compression a file's first bytes announce (``gzip``, ``xz``, ``zstd``, ``bzip2``)."""
    entry = _compression(head)
    return entry[0] if entry else None


# --- what a file is ---------------------------------------------------------

_ELF_MAGIC: Final = b"\x7fELF"
_KDUMP_SIGNATURES: Final = (b"KDUMP   ", b"DISKDUMP")
_FLAT_SIGNATURE: Final = b"makedumpfile"
_ET_CORE: Final = 4


def dump_kind(head: bytes) -> Optional[str]:
    """``elf-core``, ``kdump-compressed``, ``flattened`` from a file's first bytes, or None."""
    if head[:4] == _ELF_MAGIC and len(head) >= 18:
        return "elf-core" if struct.unpack_from("<H", head, 16)[0] == _ET_CORE else None
    if head[:8] in _KDUMP_SIGNATURES:
        return "kdump-compressed"
    if head.startswith(_FLAT_SIGNATURE):
        return "flattened"
    return None


def _read_head(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(SNIFF_BYTES)


def _decompressed_head(path: str, opener: Callable[[str], BinaryIO]) -> bytes:
    """The first bytes of a compressed file's contents, b"" when they cannot be read."""
    try:
        with opener(path) as stream:
            return stream.read(SNIFF_BYTES)
    except (DumpError,) + _decoder_errors():
        return b""


_ELF_TYPES: Final = {1: "relocatable", 2: "executable", 3: "shared object", 4: "core"}


def elf_type(path: str) -> Optional[str]:
    """What kind of ELF file ``path`` holds once decompressed (``core``, ``executable``,
    ``relocatable``, ``shared object``), or None when it is not ELF or cannot be read."""
    try:
        if not stat_mode.S_ISREG(os.stat(path).st_mode):
            return None  # opening a FIFO would block until a writer comes
        head = _read_head(path)
    except OSError:
        return None
    compression = _compression(head)
    if compression is not None:
        head = _decompressed_head(path, compression[1])
    if head[:4] != _ELF_MAGIC or len(head) < 18:
        return None
    return _ELF_TYPES.get(struct.unpack_from("<H", head, 16)[0])


def sniff(path: str) -> tuple[Optional[str], Optional[str]]:
    """Return (kind, compression) of a file by its content, or (None, None).

    A compressed file whose contents cannot be read is ``unreadable-compressed``,
    so that it is reported rather than skipped.
    """
    try:
        head = _read_head(path)
    except OSError:
        return None, None
    compression = _compression(head)
    if compression is None:
        return dump_kind(head), None
    inner = _decompressed_head(path, compression[1])
    if not inner:
        return "unreadable-compressed", compression[0]
    return dump_kind(inner), compression[0]


def check_input_file(path: str, what: str) -> None:
    """Raise :class:`DumpError` unless ``path`` is a readable, non-empty regular file.

    A FIFO or device is refused before it is opened: reading one would block or
    never end.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DumpError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise DumpError(f"{what} {path}: cannot read: {error.strerror or error}") from None
    if stat_mode.S_ISDIR(info.st_mode):
        raise DumpError(f"{what} {path}: is a directory")
    if not stat_mode.S_ISREG(info.st_mode):
        raise DumpError(f"{what} {path}: not a regular file (a FIFO, socket or device)")
    try:
        with open(path, "rb") as file:
            if not file.read(1):
                raise DumpError(f"{what} {path}: empty file")
    except OSError as error:
        raise DumpError(f"{what} {path}: cannot read: {error.strerror or error}") from None


# --- the cache --------------------------------------------------------------


def _cache_error(directory: str, error: OSError) -> DumpError:
    return DumpError(f"cache {directory}: cannot write ({error.strerror or error}); set "
                     "DFFORENSICS_CACHE to a writable directory with room for the "
                     "decompressed dump", ErrorKind.CACHE)


def _size_setting(name: str, default: int) -> int:
    """A byte count from the environment: plain bytes or with a K/M/G/T suffix."""
    text = os.environ.get(name, "").strip().upper()
    if not text:
        return default
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise DumpError(f"{name}={os.environ[name]}: not a size (e.g. 20G)", ErrorKind.CACHE)
    return int(digits) * scale


#: The cache keeps at most this much (bytes on disk: copies of dumps are sparse);
#: the entries used longest ago go first.
DEFAULT_CACHE_MAX: Final = 20 << 30
#: Decompression stops, naming the cache, rather than fill its disk below this.
MIN_FREE_BYTES: Final = 512 << 20
# How often (bytes written) a decompression looks at the disk's free space.
_FREE_CHECK_EVERY: Final = 64 << 20
# An entry used this recently may be open in this process or another (a triage
# worker, the dump this run decompressed a moment ago): never evicted, even if the
# cache stays over its cap until it ages.
_IN_USE_SECONDS: Final = 900


def cache_dir() -> str:
    """The cache directory (``$DFFORENSICS_CACHE``, else ``~/.cache/dfforensics``), created."""
    base = os.environ.get("DFFORENSICS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dfforensics")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as error:
        raise _cache_error(base, error) from None
    return base


class _CacheFile:
    """A file being written into the cache: a failed write is the cache's problem,
    told as such, never taken for bad input."""

    def __init__(self, file: BinaryIO, directory: str) -> None:
        self.file, self.directory = file, directory
        self._unchecked = 0

    def _do(self, operation: Callable[[], object]) -> None:
        try:
            operation()
        except OSError as error:
            raise _cache_error(self.directory, error) from None

    def write(self, data: bytes) -> None:
        self._unchecked += len(data)
        if self._unchecked >= _FREE_CHECK_EVERY:
            self._unchecked = 0
            check_free_space(self.directory)
        self._do(lambda: self.file.write(data))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> None:
        self._do(lambda: self.file.seek(offset, whence))

    def truncate(self, size: Optional[int] = None) -> None:
        self._do(lambda: self.file.truncate(size) if size is not None else self.file.truncate())

    def sparse_write(self, chunk: bytes) -> None:
        # Dumps are mostly zeros: keep cached copies sparse.
        if chunk.count(0) == len(chunk):
            self.seek(len(chunk), os.SEEK_CUR)
        else:
            self.write(chunk)


def check_free_space(directory: str) -> None:
    """Refuse to write into a cache whose disk has less than :data:`MIN_FREE_BYTES` free."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return  # the write itself will say what is wrong
    free = info.f_bavail * info.f_frsize
    needed = _size_setting("DFFORENSICS_CACHE_MIN_FREE", MIN_FREE_BYTES)
    if free < needed:
        raise DumpError(f"cache {directory}: only {free >> 20} MiB free on its disk (at least "
                        f"{needed >> 20} MiB needed); free room, run 'dfforensics cache "
                        "clear', or set DFFORENSICS_CACHE to a directory with room", ErrorKind.CACHE)


class CacheEntry(NamedTuple):
    path: str
    #: Bytes on disk (a sparse copy of a dump takes far less than its size).
    disk_bytes: int
    last_used: float


def cache_entries(directory: Optional[str] = None) -> list[CacheEntry]:
    """The whole entries in the cache, used longest ago first."""
    directory = directory or cache_dir()
    entries = []
    for name in os.listdir(directory):
        target = os.path.join(directory, name)
        if name.endswith(".size") or name.startswith(".partial-") or not _valid_entry(target):
            continue
        try:
            info = os.lstat(target)
        except OSError:
            continue
        entries.append(CacheEntry(target, info.st_blocks * 512, info.st_mtime))
    return sorted(entries, key=lambda entry: entry.last_used)


def evict(directory: str, keep: str, limit: Optional[int] = None) -> list[str]:
    """Remove the entries used longest ago until the cache holds at most ``limit``
    bytes on disk (``$DFFORENSICS_CACHE_MAX``, default 20 GiB); ``keep`` and entries
    used in the last quarter hour stay. Returns the paths removed."""
    limit = _size_setting("DFFORENSICS_CACHE_MAX", DEFAULT_CACHE_MAX) if limit is None else limit
    entries = cache_entries(directory)
    total = sum(entry.disk_bytes for entry in entries)
    recent = time.time() - _IN_USE_SECONDS
    removed = []
    for entry in entries:
        if total <= limit:
            break
        if entry.path == keep or entry.last_used > recent:
            continue
        _discard(entry.path)
        total -= entry.disk_bytes
        removed.append(entry.path)
    return removed


def clear_cache(directory: Optional[str] = None) -> tuple[int, int]:
    """Remove every entry (and any partial file) from the cache: (entries, bytes on disk)."""
    directory = directory or cache_dir()
    entries = cache_entries(directory)
    for entry in entries:
        _discard(entry.path)
    for name in os.listdir(directory):
        if name.startswith(".partial-"):
            _discard(os.path.join(directory, name))
    return len(entries), sum(entry.disk_bytes for entry in entries)


def _size_record(target: str) -> str:
    return target + ".size"


def _valid_entry(target: str) -> bool:
    """Whether ``target`` is a whole cache entry we wrote: a regular file (not a
    symlink someone put there) of the size recorded when it was complete."""
    try:
        info = os.lstat(target)
        with open(_size_record(target), encoding="ascii") as record:
            size = int(record.read().strip())
    except (OSError, ValueError):
        return False
    return stat_mode.S_ISREG(info.st_mode) and info.st_size == size


def _discard(path: str) -> None:
    for name in (path, _size_record(path)):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise _cache_error(os.path.dirname(path), error) from None


def _partial_prefix(group: Optional[int] = None) -> str:
    # Named by process group: a triage server that SIGKILLs its child mid-write (time
    # limit) knows the group, not the child's files, and the child's finally never runs.
    return f".partial-g{os.getpgrp() if group is None else group}-"


def discard_partials(group: int, directory: Optional[str] = None) -> None:
    """Remove the partial files the processes of ``group`` left in the cache when killed."""
    directory = directory or cache_dir()
    prefix = _partial_prefix(group)
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise _cache_error(directory, error) from None
    for name in names:
        if name.startswith(prefix):
            _discard(os.path.join(directory, name))


def _write_size_record(target: str, size: int) -> None:
    directory = os.path.dirname(target)
    fd, partial = _mkstemp(directory, _partial_prefix())
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(f"{size}\n")
        os.replace(partial, _size_record(target))
    except OSError as error:
        raise _cache_error(directory, error) from None
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def cached(path: str, tag: str, name: str, produce: Callable[[_CacheFile], None]) -> str:
    """Run ``produce`` once per input into a cache file, atomically; return its path.

    The cache key is the input's identity (real path, size, mtime, inode), so
    a changed input is produced again. A failed or interrupted run, or a
    rejected input, leaves nothing behind; an entry that is not a whole file of
    ours (a symlink, a file cut short) is discarded and produced again.
    """
    import hashlib  # here: loading OpenSSL costs ~2 ms, and uncompressed inputs never get here

    info = os.stat(path)
    directory = cache_dir()
    real = os.path.realpath(path)
    # An entry of the cache itself (a flattened dump decompressed, to be reassembled)
    # is never changed in place, only replaced (a new inode), but its mtime moves each
    # time it is used (LRU): keyed by it, its reassembled copy would be made again.
    changed = info.st_mtime_ns if os.path.dirname(real) != os.path.realpath(directory) else 0
    key = hashlib.sha256(
        f"{tag}\0{real}\0{info.st_size}\0{changed}\0{info.st_ino}".encode()
    ).hexdigest()[:24]
    target = os.path.join(directory, f"{key}-{name}")
    if _valid_entry(target):
        try:
            os.utime(target)  # used now: the last to be evicted
        except OSError:
            pass
        return target
    _discard(target)
    limit = _size_setting("DFFORENSICS_CACHE_MAX", DEFAULT_CACHE_MAX)  # a bad setting: before any write
    check_free_space(directory)
    try:
        fd, partial = _mkstemp(directory, _partial_prefix())
    except OSError as error:
        raise _cache_error(directory, error) from None
    try:
        with os.fdopen(fd, "wb") as out:
            produce(_CacheFile(out, directory))
            try:
                out.flush()
                size = os.fstat(out.fileno()).st_size
            except OSError as error:
                raise _cache_error(directory, error) from None
        try:
            os.replace(partial, target)
        except OSError as error:
            raise _cache_error(directory, error) from None
        _write_size_record(target, size)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)
    evict(directory, keep=target, limit=limit)
    return target


def _keyed_target(key: str, name: str) -> str:
    if not (key.isascii() and key.replace("-", "").isalnum() and len(key) <= 128):
        import hashlib  # only for keys that cannot name a file: loading OpenSSL costs ~2 ms

        key = hashlib.sha256(key.encode()).hexdigest()[:24]
    return os.path.join(cache_dir(), f"{key}-{name}")


def read_keyed(key: str, name: str) -> Optional[bytes]:
    """The bytes stored under ``key`` by :func:`write_keyed`, or None.

    For what is derived from an input's content rather than made from a file (the
    BTF index of a kernel build). Only a whole entry is returned (its size record
    matches); whether its bytes are right is for the caller to check.
    """
    target = _keyed_target(key, name)
    if not _valid_entry(target):
        return None
    try:
        with open(target, "rb") as file:
            data = file.read()
        os.utime(target)  # used now: the last to be evicted
    except OSError:
        return None
    return data


def write_keyed(key: str, name: str, data: bytes) -> None:
    """Store ``data`` under ``key``, atomically, as an entry of the cache (its LRU cap applies).

    :raises DumpError: (ErrorKind.CACHE) if the cache cannot be written.
    """
    target = _keyed_target(key, name)
    directory = os.path.dirname(target)
    limit = _size_setting("DFFORENSICS_CACHE_MAX", DEFAULT_CACHE_MAX)
    check_free_space(directory)
    _discard(target)
    try:
        fd, partial = _mkstemp(directory, ".partial-")
    except OSError as error:
        raise _cache_error(directory, error) from None
    try:
        with os.fdopen(fd, "wb") as out:
            _CacheFile(out, directory).write(data)
        try:
            os.replace(partial, target)
        except OSError as error:
            raise _cache_error(directory, error) from None
        _write_size_record(target, len(data))
    except OSError as error:
        raise _cache_error(directory, error) from None
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)
    evict(directory, keep=target, limit=limit)


def discard_keyed(key: str, name: str) -> None:
    """Remove the entry stored under ``key`` (one found wrong), if there is one."""
    _discard(_keyed_target(key, name))


def discard_cached(path: str) -> None:
    """Remove a cache entry made for an input that was then rejected; other paths are left alone."""
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(cache_dir()):
        _discard(path)


# --- decompression and reassembly ------------------------------------------


class _Progress:
    """A one-line count of what a long decompression has written, on a terminal's stderr
    only (files, pipes and triage workers see nothing), after the first second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = self.shown = time.monotonic()
        self.active = False
        try:
            self.enabled = sys.stderr.isatty()
        except (AttributeError, ValueError):
            self.enabled = False

    def update(self, written: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.start >= 1 and now - self.shown >= 0.5:
            self.shown, self.active = now, True
            sys.stderr.write(f"\rdfforensics: {self.label}: {written >> 20} MiB")
            sys.stderr.flush()

    def done(self) -> None:
        if self.active:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _content_check(what: str, path: str) -> Callable[[bytes], None]:
    """What the decompressed contents must start with, so that what is cached is an input we can use."""
    def check(head: bytes) -> None:
        if what == "VMCORE":
            if dump_kind(head) is None:
                raise DumpError(f"{what} {path}: not an ELF core file (nor a kdump-compressed "
                                "or flattened dump)", ErrorKind.NOT_A_DUMP)
        elif head[:4] != _ELF_MAGIC:
            raise DumpError(f"{what} {path}: not an ELF file", ErrorKind.DEBUGINFO)
    return check


def _corrupt_kind(what: str) -> ErrorKind:
    return ErrorKind.CORRUPT_DUMP if what == "VMCORE" else ErrorKind.DEBUGINFO


def decompressed(path: str, what: str) -> str:
    """Return a path to the uncompressed contents of ``path``.

    Uncompressed files are returned as they are. Compressed ones are
    decompressed once into the cache, keyed by the input's identity, and at
    most ``$DFFORENSICS_MAX_DECOMPRESSED`` bytes (64 GiB) are written; contents
    that are not a dump (VMCORE) or an ELF file (the others) are refused
    before they are kept.
    """
    check_input_file(path, what)
    try:
        compression = _compression(_read_head(path))
    except OSError as error:
        raise DumpError(f"{what} {path}: cannot read: {error.strerror or error}") from None
    if compression is None:
        return path
    name, opener = compression
    check = _content_check(what, path)

    def produce(out: _CacheFile) -> None:
        written = 0
        progress = _Progress(f"decompressing {what} {path}")
        with opener(path) as source:
            while chunk := source.read(_CHUNK):
                if not written:
                    check(chunk)
                written += len(chunk)
                progress.update(written)
                if written > _MAX_DECOMPRESSED:
                    raise DumpError(f"{what} {path}: decompresses to more than "
                                    f"{_MAX_DECOMPRESSED >> 30} GiB (DFFORENSICS_MAX_DECOMPRESSED)",
                                    _corrupt_kind(what))
                out.sparse_write(chunk)
        progress.done()
        if not written:
            raise DumpError(f"{what} {path}: {name} data that decompresses to nothing",
                            _corrupt_kind(what))
        out.truncate()

    try:
        return cached(path, "plain", os.path.basename(path).rsplit(".", 1)[0], produce)
    except _decoder_errors() as error:
        raise DumpError(f"{what} {path}: corrupt {name} data: {error}", _corrupt_kind(what)) from None


# makedumpfile's flattened stream (makedumpfile.h, QEMU dump.c): a 4096-byte
# header starting "makedumpfile", then records {int64 offset; int64 size}
# (big-endian) each followed by its bytes, ended by {-1, -1}.
_FLAT_HEADER_SIZE: Final = 4096
_FLAT_RECORD: Final = struct.Struct(">qq")


def _is_flattened(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(len(_FLAT_SIGNATURE)) == _FLAT_SIGNATURE


def _flat_record(source: BinaryIO, what: str, path: str) -> Optional[tuple[int, int]]:
    """The next record's (offset, size), None at the end marker."""
    record = source.read(_FLAT_RECORD.size)
    if len(record) < _FLAT_RECORD.size:
        raise DumpError(f"{what} {path}: flattened dump cut before its end marker", ErrorKind.CORRUPT_DUMP)
    offset, size = _FLAT_RECORD.unpack(record)
    if offset == -1 and size == -1:
        return None
    if offset < 0 or size <= 0 or offset + size > _MAX_DECOMPRESSED:
        raise DumpError(f"{what} {path}: corrupt flattened dump (record at offset {offset}, size {size})",
                        ErrorKind.CORRUPT_DUMP)
    return offset, size


def _copy_record(source: BinaryIO, out: _CacheFile, size: int, what: str, path: str) -> None:
    remaining = size
    while remaining:
        chunk = source.read(min(remaining, _CHUNK))
        if not chunk:
            raise DumpError(f"{what} {path}: flattened dump cut inside a record", ErrorKind.CORRUPT_DUMP)
        out.write(chunk)
        remaining -= len(chunk)


def reassembled(path: str, what: str = "VMCORE") -> str:
    """Return a path to the kdump-compressed file a flattened stream holds.

    What ``makedumpfile -R`` does, done once into the cache; other files are
    returned as they are.
    """
    if not _is_flattened(path):
        return path

    def produce(out: _CacheFile) -> None:
        with open(path, "rb") as source:
            source.seek(_FLAT_HEADER_SIZE)
            end = 0
            while (record := _flat_record(source, what, path)) is not None:
                offset, size = record
                out.seek(offset)
                _copy_record(source, out, size, what, path)
                end = max(end, offset + size)
            out.truncate(end)

    return cached(path, "flat", "reassembled", produce)


# --- the kdump-compressed header -------------------------------------------

# struct disk_dump_header (makedumpfile diskdump_mod.h): signature[8],
# header_version, struct new_utsname (6 x 65 bytes: sysname, nodename,
# release, ...), struct timeval, status, then block_size, sub_hdr_size and
# bitmap_blocks at 428. struct kdump_sub_header starts one block in.
_KDUMP_HEADER: Final = struct.Struct("<8si")
_KDUMP_RELEASE_OFFSET: Final = 8 + 4 + 2 * 65
_KDUMP_UTS_FIELD: Final = 65
_KDUMP_BLOCKS: Final = struct.Struct("<iiI")
_KDUMP_BLOCKS_OFFSET: Final = 428
# kdump_sub_header: phys_base, dump_level, split, start_pfn, end_pfn, then
# (header_version 3+) offset/size of VMCOREINFO, (4+) of the ELF notes,
# (5+) of the erase info.
_KDUMP_SUB: Final = struct.Struct("<Qii QQ qQ qQ qQ")
_MAX_BLOCK_SIZE: Final = 1 << 20
_MAX_VMCOREINFO: Final = 1 << 20
#: makedumpfile -d bits: zero pages, and user process data.
DUMP_LEVEL_ZERO_PAGES: Final = 1
DUMP_LEVEL_USER_DATA: Final = 8


class KdumpHeader(NamedTuple):
    """What a kdump-compressed file's headers say, every range checked against the file."""

    version: int
    release: Optional[str]
    block_size: int
    dump_level: Optional[int]
    vmcoreinfo: Optional[tuple[int, int]]  # (offset, size) in the file
    notes: Optional[tuple[int, int]]


def _utsname_release(head: bytes) -> Optional[str]:
    raw = head[_KDUMP_RELEASE_OFFSET:_KDUMP_RELEASE_OFFSET + _KDUMP_UTS_FIELD].split(b"\0")[0]
    return raw.decode("utf-8", errors="replace").strip() or None


def _checked_range(offset: int, size: int, file_size: int, name: str, what: str,
                   path: str) -> Optional[tuple[int, int]]:
    if size == 0:
        return None
    if offset < 0 or size < 0 or offset + size > file_size:
        raise DumpError(f"{what} {path}: corrupt kdump header: its {name} (offset {offset}, "
                        f"size {size}) runs past the end of the {file_size}-byte file",
                        ErrorKind.CORRUPT_DUMP)
    return offset, size


def read_kdump_header(path: str, what: str = "VMCORE", shown: Optional[str] = None) -> KdumpHeader:
    """Read and validate the headers of a kdump-compressed file (``shown``: the
    name the user gave it, when ``path`` is its copy in the cache).

    libkdumpfile maps what the header points at; a range past the end of the
    file becomes SIGBUS there, so it is an error here first.
    """
    name = shown or path

    def corrupt(detail: str) -> DumpError:
        return DumpError(f"{what} {name}: corrupt kdump header: {detail}", ErrorKind.CORRUPT_DUMP)

    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        head = file.read(SNIFF_BYTES)
        if len(head) < _KDUMP_BLOCKS_OFFSET + _KDUMP_BLOCKS.size:
            raise corrupt(f"the file ends at {len(head)} bytes, inside its header")
        version = _KDUMP_HEADER.unpack_from(head)[1]
        block_size, sub_blocks, bitmap_blocks = _KDUMP_BLOCKS.unpack_from(head, _KDUMP_BLOCKS_OFFSET)
        if not 0 < block_size <= _MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise corrupt(f"block size {block_size}")
        if sub_blocks < 0:
            raise corrupt(f"sub-header size {sub_blocks} blocks")
        if (1 + sub_blocks + bitmap_blocks) * block_size > file_size:
            raise corrupt(f"its sub-header and bitmaps ({sub_blocks} + {bitmap_blocks} blocks of "
                          f"{block_size}) end past the {file_size}-byte file")
        file.seek(block_size)
        sub = file.read(_KDUMP_SUB.size).ljust(_KDUMP_SUB.size, b"\0")
    (_, level, _, _, _, info_offset, info_size, note_offset, note_size,
     erase_offset, erase_size) = _KDUMP_SUB.unpack(sub)
    vmcoreinfo = notes = None
    if version >= 3:
        vmcoreinfo = _checked_range(info_offset, info_size, file_size, "VMCOREINFO", what, name)
    if version >= 4:
        notes = _checked_range(note_offset, note_size, file_size, "ELF notes", what, name)
    if version >= 5:
        _checked_range(erase_offset, erase_size, file_size, "erase info", what, name)
    return KdumpHeader(version, _utsname_release(head), block_size,
                       level if 0 <= level <= 31 else None, vmcoreinfo, notes)


def read_dump_format(path: str) -> tuple[str, Optional[int]]:
    """Return (format, makedumpfile dump level or None) of an uncompressed dump file."""
    kind = dump_kind(_read_head(path))
    if kind == "kdump-compressed":
        return kind, read_kdump_header(path).dump_level
    if kind == "flattened":
        return kind, None
    return "elf", None


# --- VMCOREINFO and the kernel's identity -----------------------------------

_BUILD_ID_RE: Final = re.compile(r"[0-9a-f]{8,}")


@dataclass(frozen=True)
class Vmcoreinfo:
    """A parsed VMCOREINFO note: ``KEY=value`` lines."""

    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def release(self) -> Optional[str]:
        return self.fields.get("OSRELEASE", "").strip() or None

    @property
    def build_id(self) -> Optional[str]:
        value = self.fields.get("BUILD-ID", "").strip().lower()
        return value if _BUILD_ID_RE.fullmatch(value) else None


def parse_vmcoreinfo(data: bytes) -> Vmcoreinfo:
    """Parse a VMCOREINFO note; bytes that are not UTF-8 become U+FFFD, never an error."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return Vmcoreinfo(fields)


# x86_64 kernels are loaded CONFIG_PHYSICAL_ALIGN aligned, at least 2 MiB, and
# KASLR moves them by multiples of it.
_KERNEL_ALIGN: Final = 1 << 21


def check_vmcoreinfo(data: bytes, vmcore: str) -> None:
    """Refuse a VMCOREINFO drgn takes but the analysis cannot: a release that is
    not text, a KASLR offset that is not one (drgn would read every kernel
    object at a misaligned address)."""
    def corrupt(detail: str) -> DumpError:
        return DumpError(f"VMCORE {vmcore}: corrupt VMCOREINFO: {detail}", ErrorKind.CORRUPT_DUMP)

    for line in data.splitlines():
        key, _, value = line.partition(b"=")
        if key == b"OSRELEASE":
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise corrupt(f"OSRELEASE {value!r} is not text") from None
            if not text.isprintable():
                raise corrupt(f"OSRELEASE {value!r} is not text")
        elif key == b"KERNELOFFSET":
            try:
                offset = int(value, 16)
            except ValueError:
                raise corrupt(f"KERNELOFFSET={value.decode(errors='replace')} is not a number") from None
            if offset % _KERNEL_ALIGN:
                raise corrupt(f"KERNELOFFSET={offset:x} is not a KASLR offset (not 2 MiB-aligned)")


class DumpIdentity(NamedTuple):
    """The kernel a dump says it is from; each part None when the dump does not say.

    ``source`` says where it was read, or why nothing could be."""

    release: Optional[str]
    build_id: Optional[str]
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.release or self.build_id)


def _kdump_identity(path: str) -> DumpIdentity:
    header = read_kdump_header(path)
    info = Vmcoreinfo()
    if header.vmcoreinfo is not None:
        offset, size = header.vmcoreinfo
        with open(path, "rb") as file:
            file.seek(offset)
            info = parse_vmcoreinfo(file.read(min(size, _MAX_VMCOREINFO)))
    release = info.release or header.release
    source = "the dump's VMCOREINFO" if info.fields else "the kdump header"
    return DumpIdentity(release, info.build_id, source)


def dump_kernel_identity(path: str, kind: str) -> DumpIdentity:
    """The kernel release and build ID an uncompressed dump says it is from.

    ELF cores name them in VMCOREINFO (QEMU dumps of guests without
    ``-device vmcoreinfo`` do not); kdump-compressed files in VMCOREINFO and
    their header's utsname; a flattened stream is reassembled into the cache
    (the worker opens that same copy) and read as kdump-compressed.
    """
    if kind == "elf-core":
        from dfforensics.inputs.elffacts import read_elf_vmcoreinfo

        data = read_elf_vmcoreinfo(path)
        if not data:
            return DumpIdentity(None, None, "the ELF core has no VMCOREINFO note")
        info = parse_vmcoreinfo(data)
        return DumpIdentity(info.release, info.build_id, "the dump's VMCOREINFO")
    if kind == "flattened":
        return _kdump_identity(reassembled(path))
    if kind == "kdump-compressed":
        return _kdump_identity(path)
    return DumpIdentity(None, None, f"a {kind} file names no kernel")

