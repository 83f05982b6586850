"""
Discover dumps in an archive
----------------------------

Walk paths and recognise crash dumps by content, not by name: ELF cores,
makedumpfile's kdump-compressed format, the makedumpfile *flattened* stream,
and any of them compressed with gzip, xz, zstd or bzip2. Pair each dump with
its console log (kdump's ``vmcore-dmesg.txt``, Ubuntu's ``dmesg.<ts>`` beside
``dump.<ts>``); a console log without a dump is a log-only case. Files are only
ever opened for reading. No drgn.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Final, Iterable, Iterator, Optional

from dfforensics.inputs.formats import SNIFF_BYTES, sniff

__all__ = ("Item", "iter_discover", "dump_identity")

_LOG_NAME_RE: Final = re.compile(r"^(?:vmcore-dmesg\.txt|dmesg(?:\.\d+)?(?:\.txt)?|console(?:\.txt)?|.*\.log)$")
_KERNEL_LINE_RE: Final = re.compile(rb"\[\s*\d+\.\d+\]|Linux version|Call Trace:|RIP: |<\d>")


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


def _walk(paths: Iterable[str]) -> Iterator[str]:
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield os.path.join(root, name)
        else:
            yield path


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
    claimed its own. Every file that is neither is left out; a kdump
    ``vmcore-incomplete`` (kdump was still writing when it stopped) is an item
    of kind ``incomplete``, so that it is reported, never skipped silently.
    """
    paired: set[str] = set()  # the logs some dump has claimed
    logs: list[str] = []
    seen_real: set[str] = set()
    identities: dict[str, str] = {}
    for path in _walk(paths):
        real = os.path.realpath(path)
        if real in seen_real or not os.path.isfile(path):
            continue
        seen_real.add(real)
        try:
            stat = os.stat(path)
        except OSError:
            continue
        kind, compression = sniff(path)
        if os.path.basename(path) == "vmcore-incomplete":
            kind = "incomplete"
        if kind is None:
            if _looks_like_log(path):
                logs.append(path)
            continue
        beside = _logs_beside(path)
        item = Item(path, kind, compression, stat.st_size, stat.st_mtime, beside[0] if beside else None)
        if kind != "incomplete":
            identity = dump_identity(path)
            first = identities.get(identity)
            if first is None:
                identities[identity] = path
            else:
                item.duplicate_of = first
        paired.update(beside)
        yield item
    for path in logs:
        if path not in paired:
            try:
                stat = os.stat(path)
            except OSError:
                continue  # gone since the walk saw it
            yield Item(path, "log", None, stat.st_size, stat.st_mtime)
