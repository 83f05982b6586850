"""
Discover dumps in an archive
----------------------------

Walk paths and recognise crash dumps by content, not by name: ELF cores,
makedumpfile's kdump-compressed format, the makedumpfile *flattened* stream,
and any of them compressed with gzip, xz, zstd or bzip2. Pair each dump with
its console log (kdump's ``vmcore-dmesg.txt``, Ubuntu's ``dmesg.<ts>`` beside
``dump.<ts>``); a console log without a dump is a log-only case. A file named
as a dump or a console log that is not one (empty, garbage, a FIFO, a device, a
symlink that loops) is an item too, refused with the reason, so that every
candidate gets a row. Files are only ever opened for reading, and never opened
at all unless they are regular files. No drgn.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Final, Iterable, Iterator, Optional

from dfforensics.core.errors import DumpError, ErrorKind
from dfforensics.inputs.formats import SNIFF_BYTES, check_input_file, sniff
from dfforensics.logs.logbytes import looks_binary

__all__ = ("Item", "iter_discover", "dump_identity")

_LOG_NAME_RE: Final = re.compile(r"^(?:vmcore-dmesg\.txt|dmesg(?:\.\d+)?(?:\.txt)?|console(?:\.txt)?|.*\.log)$")
_KERNEL_LINE_RE: Final = re.compile(rb"\[\s*\d+\.\d+\]|Linux version|Call Trace:|RIP: |<\d>")
# Names that say "console log" whatever the content (``*.log`` alone does not: any
# program writes one): such a file that is not a kernel log gets a row saying so.
_CONSOLE_NAME_RE: Final = re.compile(r"^(?:vmcore-dmesg\.txt|dmesg(?:\.\d+)?(?:\.txt)?|console(?:\.txt|\.log)?)$")
# Names that say "dump" (kdump's vmcore*, Ubuntu's dump.<ts>, *.vmcore), their
# compressed forms included, but not the checksums and notes kept beside them.
_DUMP_NAME_RE: Final = re.compile(r"^(?:vmcore|dump\.\d|.*\.vmcore)")
_NOT_A_DUMP_NAME_RE: Final = re.compile(r"\.(?:txt|log|md5|sha\d*|sig|asc|json|html?)$")


@dataclass
class Item:
    """One thing to analyse: a dump (with its log, if any) or a lone console log."""

    path: str
    #: elf-core, kdump-compressed, flattened, log, or incomplete.
    kind: str
    compression: Optional[str]
    size: int
    mtime: float
    log: Optional[str] = None
    #: Path of an earlier item with the same content, if any.
    duplicate_of: Optional[str] = None
    #: Why a candidate cannot be used (kinds unreadable, not-a-dump, not-a-log): its row's error.
    problem: Optional[str] = None
    problem_kind: Optional[ErrorKind] = None
    #: What the row should say besides (a symlink that leaves the archive).
    note: Optional[str] = None

    @property
    def key(self) -> tuple[str, int, float]:
        """What --resume matches on: path, size and mtime."""
        return (self.path, self.size, self.mtime)


def _head(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(SNIFF_BYTES)


def _looks_like_log(path: str) -> bool:
    if not _LOG_NAME_RE.match(os.path.basename(path)):
        return False
    try:
        head = _head(path)
    except OSError:
        return False
    return b"\0" not in head and bool(_KERNEL_LINE_RE.search(head))


def _walk(paths: Iterable[str]) -> Iterator[tuple[str, Optional[str]]]:
    """Every file under the paths, with the archive (the directory given) it was found in."""
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield os.path.join(root, name), path
        else:
            yield path, None


def _outside(path: str, archive: Optional[str]) -> Optional[str]:
    """Where ``path`` leads, when it is a symlink out of the archive it was found in."""
    if archive is None:
        return None
    real, top = os.path.realpath(path), os.path.realpath(archive)
    return real if os.path.commonpath([real, top]) != top else None


def _named_as(path: str) -> Optional[str]:
    """What the file's name says it is ("log" or "dump"), when it says so."""
    name = os.path.basename(path)
    if _CONSOLE_NAME_RE.match(name):
        return "log"
    if _DUMP_NAME_RE.match(name) and not _NOT_A_DUMP_NAME_RE.search(name):
        return "dump"
    return None


def _unusable(path: str, named: str) -> Optional[tuple[str, str, ErrorKind]]:
    """Why a file named as a dump or a log that is not one cannot be used:
    (kind, reason, error kind), or None when it is readable."""
    try:
        check_input_file(path, "VMCORE" if named == "dump" else "console log")
    except DumpError as error:
        if os.path.islink(path) and not os.path.lexists(os.path.realpath(path)):
            return "unreadable", f"{path}: a dangling symlink (to {os.readlink(path)})", ErrorKind.INPUT
        if not str(error).endswith("empty file"):
            return "unreadable", str(error), ErrorKind.INPUT
        if named == "dump":
            return "not-a-dump", str(error), ErrorKind.NOT_A_DUMP
        return "not-a-log", str(error), ErrorKind.INPUT
    return None


def _rejected(path: str, named: str, compression: Optional[str]) -> tuple[str, str, ErrorKind]:
    """Why a readable file named as a dump or a log is not one: (kind, reason, error kind)."""
    if named == "log":
        try:
            head = _head(path)
        except OSError as error:
            return "unreadable", f"{path}: cannot read: {error.strerror or error}", ErrorKind.INPUT
        what = "binary data" if looks_binary(head) else "no kernel message in its first 4 KiB"
        return "not-a-log", f"{path}: not a console log ({what})", ErrorKind.INPUT
    if compression:
        return ("not-a-dump", f"VMCORE {path}: {compression} data that is not a dump (nor "
                "a kdump-compressed or flattened one)", ErrorKind.NOT_A_DUMP)
    return ("not-a-dump", f"VMCORE {path}: not an ELF core file (nor a kdump-compressed or "
            "flattened dump)", ErrorKind.NOT_A_DUMP)


def _logs_beside(path: str) -> list[str]:
    """The console logs that belong to the dump at ``path``, the one to analyse first.

    A dump claims every one of them: kdump's own ``vmcore-dmesg.txt`` is the
    one analysed, and a serial ``console.log`` beside it is the same crash,
    not a log-only case of its own.
    """
    directory, name = os.path.split(path)
    candidates = [os.path.join(directory, "vmcore-dmesg.txt")]
    # A serial console.log belongs to a dump only in a one-dump directory
    # layout (<dir>/vmcore*), not beside a pile of loose dumps.
    if name.startswith("vmcore"):
        candidates.append(os.path.join(directory, "console.log"))
    match = re.match(r"^dump\.(\d+)", name)
    if match:
        candidates.insert(0, os.path.join(directory, f"dmesg.{match.group(1)}"))
    return [candidate for candidate in candidates if os.path.isfile(candidate)]


def dump_identity(path: str) -> str:
    """A cheap content identity (size + hash of the first and last MiB) to spot duplicates."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as file:
        digest.update(file.read(1 << 20))
        if size > 2 << 20:
            file.seek(-(1 << 20), os.SEEK_END)
            digest.update(file.read(1 << 20))
    return digest.hexdigest()


def iter_discover(paths: Iterable[str]) -> Iterator[Item]:
    """Find the dumps and lone console logs under the given paths, as it goes.

    Each dump is yielded as soon as it is recognised (so triage can start on it
    while the walk goes on), the lone logs at the end, when every dump has
    claimed its own. A kdump ``vmcore-incomplete`` (kdump was still writing
    when it stopped) is an item of kind ``incomplete``, and a file named as a
    dump or a console log that is not one an item of kind ``not-a-dump``,
    ``not-a-log`` or ``unreadable`` (with its ``problem``), so that they are
    reported, never skipped silently; every other file is left out.
    """
    paired: set[str] = set()  # the logs some dump has claimed
    logs: list[tuple[str, Optional[str]]] = []  # with their notes
    not_logs: list[tuple[str, Optional[str]]] = []  # named as console logs, and not
    seen_real: set[str] = set()
    identities: dict[str, str] = {}
    for path, archive in _walk(paths):
        real = os.path.realpath(path)
        if real in seen_real:
            continue
        seen_real.add(real)
        outside = _outside(path, archive)
        note = f"a symlink to {outside}, outside {archive}: read all the same" if outside else None
        named = _named_as(path)
        if not os.path.isfile(path):
            # Never opened: a FIFO would block the walk, a device never end.
            unusable = _unusable(path, named) if named else None
            if unusable is not None:
                try:
                    link = os.lstat(path)
                except OSError:
                    continue  # gone since the walk saw it
                kind, problem, problem_kind = unusable
                yield Item(path, kind, None, link.st_size, link.st_mtime, problem=problem,
                           problem_kind=problem_kind, note=note)
            continue
        try:
            stat = os.stat(path)
        except OSError:
            continue
        kind, compression = sniff(path)
        if os.path.basename(path) == "vmcore-incomplete":
            kind = "incomplete"
        if kind is None:
            if _looks_like_log(path):
                logs.append((path, note))
            elif named == "log":
                # Like a log, it may yet be a dump's (its row is then the dump's).
                not_logs.append((path, note))
            elif named:
                kind, problem, problem_kind = _unusable(path, named) or _rejected(path, named, compression)
                yield Item(path, kind, compression, stat.st_size, stat.st_mtime, problem=problem,
                           problem_kind=problem_kind, note=note)
            continue
        beside = _logs_beside(path)
        item = Item(path, kind, compression, stat.st_size, stat.st_mtime, beside[0] if beside else None,
                    note=note)
        if kind != "incomplete":
            identity = dump_identity(path)
            first = identities.get(identity)
            if first is None:
                identities[identity] = path
            else:
                item.duplicate_of = first
        paired.update(beside)
        yield item
    for path, note in logs:
        if path not in paired:
            try:
                stat = os.stat(path)
            except OSError:
                continue  # gone since the walk saw it
            yield Item(path, "log", None, stat.st_size, stat.st_mtime, note=note)
    for path, note in not_logs:
        if path not in paired:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            kind, problem, problem_kind = _unusable(path, "log") or _rejected(path, "log", None)
            yield Item(path, kind, None, stat.st_size, stat.st_mtime, problem=problem,
                       problem_kind=problem_kind, note=note)
