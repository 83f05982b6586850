"""What /proc says of the processes a test started: parents, children, command lines."""

import os
import time
from pathlib import Path
from typing import Callable, Optional


def _stat_fields(pid: int) -> list[str]:
    # The fields after the parenthesised command name, which may hold spaces: state, ppid, ...
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def parent_pid(pid: int) -> Optional[int]:
    """The parent of ``pid``, or None if it has gone."""
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    return [child for child in _all_pids() if parent_pid(child) == pid]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children, their children, ...)."""
    parents = {child: parent_pid(child) for child in _all_pids()}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def pids_running(command_part: bytes) -> list[int]:
    """The processes whose command line contains ``command_part``."""
    found = []
    for pid in _all_pids():
        try:
            if command_part in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def gone(pid: int, seconds: float = 5.0) -> bool:
    """Whether ``pid`` has ended (a SIGKILL takes effect when the process next runs)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if _stat_fields(pid)[0] == "Z":
                return True
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def wait_for(predicate: Callable[[], object], seconds: float = 300.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
