"""
Find debug info for a dump
--------------------------

Find the debug vmlinux matching a dump's kernel identity
(:func:`dfforensics.inputs.formats.dump_kernel_identity`) in the usual
layouts of debug-info trees, then on debuginfod servers. No drgn: pyelftools
loaded on first use (triage imports this module while its workers start).
"""

import itertools
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Iterable, Iterator, Optional

from elftools.common.exceptions import ELFError

from dfforensics.batch.debuginfod import fetch_from_debuginfod
from dfforensics.core.errors import InputError
from dfforensics.inputs.formats import DumpIdentity, decompressed

if TYPE_CHECKING:
    from dfforensics.inputs.elffacts import VmlinuxFacts

__all__ = ("Lookup", "VmlinuxFinder", "facts_from_wire", "facts_to_wire", "fetch_from_debuginfod",
           "match_banner")

_COMPRESSED_SUFFIXES: Final = ("", ".xz", ".gz", ".zst")
_MAX_SCAN_FILES: Final = 20000
# Matching by banner reads each candidate's symbols (and decompresses it once):
# worth it for a handful of kernels, not for a whole debug-info mirror.
_MAX_BANNER_CANDIDATES: Final = 16


def _standard_candidates(directory: str, identity: DumpIdentity) -> Iterable[str]:
    if identity.build_id and len(identity.build_id) > 2:
        head, rest = identity.build_id[:2], identity.build_id[2:]
        for base in ("usr/lib/debug/.build-id", ".build-id"):
            yield os.path.join(directory, base, head, rest + ".debug")
    if identity.release:
        release = identity.release
        for relative in (f"usr/lib/debug/boot/vmlinux-{release}",
                         f"usr/lib/debug/lib/modules/{release}/vmlinux",
                         f"boot/vmlinux-{release}", f"lib/modules/{release}/vmlinux",
                         f"vmlinux-{release}", f"{release}/vmlinux"):
            yield os.path.join(directory, relative)


@dataclass(frozen=True)
class Lookup:
    """The vmlinux found for a dump, or None with the reason (for the row)."""

    vmlinux: Optional[str]
    why_none: Optional[str]


class VmlinuxFinder:
    """Finds the debug vmlinux of each dump in debug-info trees, then debuginfod.

    One finder serves one triage run: it remembers the identity (build ID,
    release) of every candidate file it opened, keyed by the file's version, so
    the dumps of one kernel read its vmlinux once. Safe to share between the
    threads that plan jobs.
    """

    def __init__(self, directories: Iterable[str]) -> None:
        self.directories = list(directories)
        self._facts: dict[tuple[str, int, int, int], Optional["VmlinuxFacts"]] = {}
        self._lock = threading.Lock()

    def find(self, identity: DumpIdentity) -> Optional[str]:
        """The path of the vmlinux matching ``identity``, or ``None``.

        Tries the standard layouts first (``usr/lib/debug/boot/vmlinux-<release>``,
        ``usr/lib/debug/lib/modules/<release>/vmlinux``, ``.build-id/xx/rest.debug``,
        each also ``.xz``/``.gz``/``.zst``), then any file named ``vmlinux*``
        below the trees whose build ID (or release) matches, then the debuginfod
        servers of ``$DEBUGINFOD_URLS`` by build ID.
        """
        if not identity.release and not identity.build_id:
            return None
        found = self._find_in_trees(identity)
        if found is None and identity.build_id:
            fetched = fetch_from_debuginfod(identity.build_id)
            if fetched and self._matches(fetched, identity):
                return fetched
        return found

    def _candidate_facts(self, path: str) -> Optional["VmlinuxFacts"]:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        # One lock for all: two threads asking for the same compressed vmlinux would
        # otherwise both decompress it.
        with self._lock:
            if key not in self._facts:
                from dfforensics.inputs.elffacts import vmlinux_facts

                try:
                    self._facts[key] = vmlinux_facts(decompressed(path, "VMLINUX"))
                except InputError:
                    self._facts[key] = None
            return self._facts[key]

    def _matches(self, path: str, identity: DumpIdentity) -> bool:
        facts = self._candidate_facts(path)
        if facts is None:
            return False
        if identity.build_id and facts.build_id:
            return facts.build_id.lower() == identity.build_id
        return bool(identity.release) and facts.release == identity.release

    def _find_in_trees(self, identity: DumpIdentity) -> Optional[str]:
        for directory in self.directories:
            for candidate in _standard_candidates(directory, identity):
                for suffix in _COMPRESSED_SUFFIXES:
                    if os.path.isfile(candidate + suffix) and self._matches(candidate + suffix, identity):
                        return candidate + suffix
        return next((path for path in self._tree_files() if self._matches(path, identity)), None)

    def _tree_files(self) -> Iterator[str]:
        """Every ``vmlinux*`` and ``*.debug`` file below the trees (at most
        ``_MAX_SCAN_FILES`` files looked at)."""
        scanned = 0
        for directory in self.directories:
            for root, dirs, files in os.walk(directory):
                dirs.sort()
                for name in sorted(files):
                    scanned += 1
                    if scanned > _MAX_SCAN_FILES:
                        return
                    if name.startswith("vmlinux") or name.endswith(".debug"):
                        yield os.path.join(root, name)

    def lookup(self, identity: DumpIdentity, kind: str) -> Optional[Lookup]:
        """The vmlinux of one dump by the kernel it names, or why there is none;
        None when it must be matched by banner (:meth:`banner_candidates`).

        A dump that names its kernel is matched by :meth:`find`. An ELF core
        that names none (a QEMU dump of a guest without ``-device vmcoreinfo``)
        is matched by banner: the vmlinux whose ``linux_banner`` is in the
        dump's memory at a load address, tried when there are few candidates.
        That reads the dump, so it is not done here but by the dump's worker
        (:func:`match_banner`), on the dump's limits.
        """
        if identity:
            return Lookup(self.find(identity), None)
        if kind != "elf-core":
            return Lookup(None, identity.source)
        return None

    def banner_candidates(self) -> tuple[list[tuple[str, "VmlinuxFacts"]], Optional[str]]:
        """The vmlinux files to match a dump's memory against, with their facts
        (read once per run), or none and why."""
        if not self.directories:
            return [], ("the dump has no VMCOREINFO naming its kernel, and no "
                        "--debuginfo-dir to match a vmlinux's banner against its memory")
        paths = list(itertools.islice(self._tree_files(), _MAX_BANNER_CANDIDATES + 1))
        if len(paths) > _MAX_BANNER_CANDIDATES:
            return [], (f"the dump has no VMCOREINFO naming its kernel, and the "
                        f"--debuginfo-dir trees hold more than {_MAX_BANNER_CANDIDATES} "
                        "vmlinux files, too many to match by banner against its memory")
        candidates = [(path, facts) for path in paths if (facts := self._candidate_facts(path)) is not None]
        if not candidates:
            return [], _no_banner_match(len(paths))
        return candidates, None


def _no_banner_match(count: int) -> str:
    return (f"the dump has no VMCOREINFO naming its kernel, and the linux_banner of "
            f"none of the {count} vmlinux files under --debuginfo-dir is in its memory")


def match_banner(dump: str, candidates: list[tuple[str, "VmlinuxFacts"]]) -> Lookup:
    """The candidate whose ``linux_banner`` is in the (uncompressed) ELF core's memory."""
    from dfforensics.inputs.elffacts import CorePhysicalMemory, kernel_load_address

    try:
        with CorePhysicalMemory(dump) as memory:
            for path, facts in candidates:
                if kernel_load_address(memory.read, facts) is not None:
                    return Lookup(path, None)
    except (OSError, ValueError, ELFError) as error:
        return Lookup(None, f"the dump has no VMCOREINFO and its memory cannot be read ({error})")
    return Lookup(None, _no_banner_match(len(candidates)))


def facts_to_wire(path: str, facts: "VmlinuxFacts") -> dict:
    """A candidate's facts as JSON, for the worker that matches them against a dump."""
    return {"path": path, "build_id": facts.build_id, "banner": facts.banner.hex() if facts.banner else None,
            "release": facts.release, "symbols": dict(facts.symbols)}


def facts_from_wire(wire: dict) -> "VmlinuxFacts":
    from dfforensics.inputs.elffacts import VmlinuxFacts

    banner = bytes.fromhex(wire["banner"]) if wire.get("banner") else None
    return VmlinuxFacts(wire.get("build_id"), banner, wire.get("release"), dict(wire.get("symbols") or {}))
