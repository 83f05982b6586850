"""
Stacks a thread has left
------------------------

The mapping under a thread's saved user RSP is where it runs now, not where it
ran when an interrupt arrived. Coroutine and fiber stacks, sigaltstacks, Go
goroutine stacks and green threads are stacks a thread switches away from and
back to, and a CPL-0 delivery leaves its frame wherever RSP was. So, besides the
mappings under the saved RSPs (:mod:`dfforensics.dump.sweep`), this module reads
each thread's registered sigaltstack and the resident pages of every private,
writable, anonymous mapping of each process: every mapping that can hold a
stack (a stack is written by pushes, so it is writable; file-backed and shared
memory is not where a runtime allocates one).

Bounded per process (:data:`BOUND_PAGES_PER_PROCESS` resident pages, the
smallest mappings first: stacks are small and heaps are big); what the bound
leaves unread is counted, and the judge never calls that clean. Each physical
page is decoded once, however many threads or forked processes map it.

Frames on a running guest are confirmed by a second read (:func:`confirm_frame`).
"""

from dataclasses import dataclass, field
from typing import Callable, Final, Iterable, Optional

import drgn
from drgn import Object, Program
from drgn.helpers.linux.mm import for_each_vma, vma_name

from dfforensics.core import x86
from dfforensics.core.frames import scan_frames
from dfforensics.core.model import Frame, StackKind, SweepCoverage, SweptStack
from dfforensics.core.signature import proves_cpl0_delivery
from dfforensics.dump.stackscan import (PAGE, USER_SCAN_LIMIT, entry_return_below, named, read_user_range,
                                        resident_pages)

__all__ = ("BOUND_PAGES_PER_PROCESS", "ProcessStacks", "CoverageRead", "read_left_stacks", "confirm_frame")

#: At most this many resident pages (64 MiB) per process are read from mappings
#: that no thread's saved RSP is in: enough for hundreds of fibers or goroutine
#: stacks, while a process whose heap is gigabytes costs a bounded time.
BOUND_PAGES_PER_PROCESS: Final = 16384

# vm_flags bits (include/linux/mm.h; the same values since 2.6).
_VM_WRITE: Final = 0x2
_VM_SHARED: Final = 0x8
_VM_GROWSDOWN: Final = 0x100
_VM_PFNMAP: Final = 0x400
_VM_IO: Final = 0x4000


@dataclass
class ProcessStacks:
    """One process, as the sweep met it: its mm, a thread to read it through,
    its threads' sigaltstacks and the windows already read under saved RSPs."""

    mm: Object
    task: Object
    pid: int
    comm: str
    #: tid -> (start, end) of its registered sigaltstack.
    sigaltstacks: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Windows read under the threads' saved RSPs: [start, end).
    windows_read: list[tuple[int, int]] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)


@dataclass
class CoverageRead:
    """What reading the left stacks gave: records for the judge, and frames."""

    coverage: SweepCoverage
    stacks: list[SweptStack] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    #: (start, end, pages) of each range with frames, for the annotated stack.
    reads_with_frames: list[tuple[int, int, dict[int, bytes]]] = field(default_factory=list)


def sigaltstack_of(task: Object) -> Optional[tuple[int, int]]:
    """The registered sigaltstack of a thread, [start, end), or None."""
    try:
        sp, size = int(task.sas_ss_sp), int(task.sas_ss_size)
    except (AttributeError, drgn.FaultError):
        return None
    if not size or not x86.is_plausible_user_pointer(sp) or not x86.is_plausible_user_pointer(sp + size - 1):
        return None
    return sp, sp + size


def _candidate_mappings(mm: Object) -> list[tuple[int, int, str]]:
    """The private, writable, anonymous mappings of a process: (start, end, name)."""
    found = []
    for vma in for_each_vma(mm):
        flags = int(vma.vm_flags)
        if not flags & _VM_WRITE or flags & (_VM_SHARED | _VM_IO | _VM_PFNMAP) or vma.vm_file:
            continue
        start, end = int(vma.vm_start), int(vma.vm_end)
        name = vma_name(vma).decode(errors="replace")
        if not name:
            name = "[stack]" if flags & _VM_GROWSDOWN else "anonymous mapping"
        found.append((start, end, name))
    return found


def _subtract(start: int, end: int, taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) without the ranges already read."""
    pieces = [(start, end)]
    for low, high in taken:
        pieces = [part for a, b in pieces
                  for part in ((a, min(b, low)), (max(a, high), b)) if part[0] < part[1]]
    return pieces


def _runs(pages: dict[int, bytes]) -> Iterable[tuple[int, bytes]]:
    """Consecutive pages joined (a frame may straddle two), as (start, bytes)."""
    run: list[bytes] = []
    run_start = run_end = None
    for page in sorted(pages):
        if page != run_end and run:
            yield run_start, b"".join(run)
            run = []
        if not run:
            run_start = page
        run.append(pages[page])
        run_end = page + PAGE
    if run:
        yield run_start, b"".join(run)


def read_left_stacks(prog: Program, processes: Iterable[ProcessStacks], encoding: Optional[str],
                     namer_for: Callable[[Object], Callable[[int], Optional[str]]],
                     bound: int = BOUND_PAGES_PER_PROCESS,
                     gone: Optional[Callable[[Object, Object], bool]] = None) -> CoverageRead:
    """Read the sigaltstacks and private writable anonymous mappings of every
    process, except what was read under the saved RSPs, and find the frames.

    :param gone: on a running guest, whether a task (with its mm) has exited since the
        task list was walked: a process whose mappings or pages cannot be read because
        it has gone is counted in ``tasks_gone``, not as unread memory.
    """
    coverage = SweepCoverage(bound_pages_per_process=bound)
    result = CoverageRead(coverage)
    decoded: set[int] = set()  # physical pages already decoded, over all processes
    for proc in processes:
        # Sigaltstacks first (registered stacks, wherever they are mapped), then the
        # mappings smallest first, so the bound falls on the big heaps.
        ranges: list[tuple[int, int, str, str, Optional[int]]] = []
        for tid, (start, end) in sorted(proc.sigaltstacks.items()):
            low = max(start, end - USER_SCAN_LIMIT) & ~(PAGE - 1)  # signal frames grow down from the top
            ranges.append((low, end, f"sigaltstack of thread {tid}", "sigaltstack", tid))
        try:
            mappings = _candidate_mappings(proc.mm)
        except (drgn.FaultError, ValueError, LookupError, OverflowError, NotImplementedError) as error:
            # Unreadable (or, on a running guest, changed under the walk): counted as a
            # missing page, so that the sweep cannot be clean, unless the process has exited.
            if gone is not None and gone(proc.task, proc.mm):
                coverage.tasks_gone += 1
                continue
            result.stacks.append(SweptStack(proc.pid, None, proc.comm, f"mappings unreadable ({error})",
                                            0, 0, 0, 1, [], 0, "anonymous mapping"))
            continue
        only_thread = proc.threads[0] if len(proc.threads) == 1 else None
        for start, end, name in sorted(mappings, key=lambda m: m[1] - m[0]):
            ranges.append((start, end, name, "anonymous mapping", only_thread))
        taken = list(proc.windows_read)
        budget = bound
        cut = 0
        exited = False
        for start, end, name, reason, tid in ranges:
            for low, high in _subtract(start, end, taken) if not exited else ():
                taken.append((low, high))
                stack, pages, frames, beyond = _read_range(prog, proc, low, high, name, reason, tid,
                                                           budget, decoded, encoding, coverage)
                if stack.pages_missing and gone is not None and gone(proc.task, proc.mm):
                    coverage.tasks_gone += 1  # exited as we read it: its tables were freed
                    exited = True
                    break
                budget -= stack.pages_present + stack.pages_missing
                cut += beyond
                if not (stack.pages_present or stack.pages_missing or frames):
                    continue  # nothing resident: not worth a row
                coverage.mappings += 1
                if frames:
                    namer = namer_for(proc.task)
                    frames = [named(f, namer, pid=proc.pid, tid=tid) for f in frames]
                    stack.frame_addresses = [f.address for f in frames]
                    result.frames.extend(frames)
                    result.reads_with_frames.append((low, high, pages))
                result.stacks.append(stack)
        if cut:
            coverage.pages_beyond_bound += cut
            coverage.processes_beyond_bound.append(f"{proc.comm} (pid {proc.pid}): {cut} pages beyond the bound")
    return result


def _read_range(prog: Program, proc: ProcessStacks, low: int, high: int, name: str, reason: str,
                tid: Optional[int], budget: int, decoded: set[int], encoding: Optional[str],
                coverage: SweepCoverage) -> tuple[SweptStack, dict[int, bytes], list[Frame], int]:
    """Read one range's resident pages (within the budget), decode the new ones."""
    stack = SweptStack(proc.pid, tid, proc.comm, name, low, high, 0, 0, [], 0, reason)
    pages: dict[int, bytes] = {}
    beyond = 0
    resident = resident_pages(proc.mm, low, high)
    if resident is None:
        # No walk possible (5-level paging, tables missing): page by page, and only
        # as far as the budget goes, since each probe costs a translation.
        span = min(high, low + max(budget, 0) * PAGE)
        if span > low:
            read = read_user_range(proc.task, low, span, name)
            pages, stack.pages_present = read.pages, read.pages_present
            stack.pages_missing, stack.pages_not_resident = read.pages_missing, read.pages_not_resident
        beyond = (high - span) // PAGE if span < high else 0
        # Unknown residency beyond the budget: counted as beyond it (never as clean).
    else:
        stack.pages_not_resident = (high - low) // PAGE - len(resident)
        for page in sorted(resident):
            physical = resident[page]
            if physical in decoded:
                coverage.pages_shared += 1
                continue
            if budget - stack.pages_present - stack.pages_missing <= 0:
                beyond += 1
                continue
            try:
                pages[page] = prog.read(physical, PAGE, True)
                stack.pages_present += 1
                decoded.add(physical)
            except drgn.FaultError:
                stack.pages_missing += 1
    coverage.pages_read += stack.pages_present
    below = entry_return_below(prog)
    frames = [frame for start, data in _runs(pages)
              for frame in scan_frames(data, start, StackKind.USER, encoding, entry_return_below=below)
              if proves_cpl0_delivery(frame)]
    return stack, pages, frames, beyond


def confirm_frame(prog: Program, mm: Object, frame: Frame) -> bool:
    """Read a frame again, through a fresh walk of the page tables: True when the
    same physical pages still hold the same words.

    A running guest changes under the sweep: a page table may be freed and reused,
    a stack page reused by another task, a read torn by a vCPU's writes. A frame
    kept only when two reads agree was really in guest memory, word for word.
    """
    words = [frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss]
    start = frame.address + 8
    if frame.orig_ax.raw is not None:
        words.insert(0, frame.orig_ax.raw)
        start = frame.address
    end = start + 8 * len(words)
    first = start & ~(PAGE - 1)
    resident = resident_pages(mm, first, end)
    if resident is None:
        return False  # no walk, no second reading to trust: unconfirmed
    try:
        data = b""
        for page in range(first, end, PAGE):
            if page not in resident:
                return False
            data += prog.read(resident[page], PAGE, True)
    except drgn.FaultError:
        return False
    offset = start - first
    return _same(words, data[offset:offset + 8 * len(words)])


def _same(words: list[int], data: Optional[bytes]) -> bool:
    if data is None or len(data) != 8 * len(words):
        return False
    return all(int.from_bytes(data[8 * i:8 * i + 8], "little") == word & ((1 << 64) - 1)
               for i, word in enumerate(words))
