"""
Sweep every user stack
----------------------

The hypervisor bug leaves frames on user stacks long before any double fault:
each CPL-0 delivery onto a present user stack page pushes a frame there, and
the task often goes on. This module scans, for every thread of every process,
the present pages of the mapping that holds its saved user RSP (bounded per
task) for self-consistent frames pushed without a stack switch. Works on dumps
and on a live kernel (``drgn`` as root).
"""

from typing import Optional

import drgn
from drgn import Program
from drgn.helpers.linux.mm import vma_find, vma_name
from drgn.helpers.linux.pid import for_each_task

from dfforensics.core import x86
from dfforensics.core.model import Evidence, Status, SweepResult, SweptStack
from dfforensics.dump.rspregion import user_stack_pointer
from dfforensics.dump.stackscan import StackRead, bounded_window, orig_ax_encoding, scan_user_range, symbolizer

__all__ = ("sweep_user_stacks", "sweep_evidence")


def _stack_of(task) -> Optional[tuple[int, int, str, int]]:
    """The mapping holding a thread's saved user RSP: (start, end, name, rsp)."""
    sp = user_stack_pointer(task)
    if sp is None or not x86.is_plausible_user_pointer(sp):
        return None
    vma = vma_find(task.mm, sp)
    if not vma:
        return None
    name = vma_name(vma).decode(errors="replace") or "anonymous"
    return int(vma.vm_start), int(vma.vm_end), name, sp


def sweep_user_stacks(prog: Program, reads_with_frames: Optional[list[StackRead]] = None) -> SweepResult:
    """Scan every thread's user stack mapping for frames pushed at CPL 0.

    Supports x86_64 kernels whose task, mm and VMA layouts drgn's helpers
    know (3.x–6.x). Each mapping is read once, at most
    :data:`~dfforensics.dump.stackscan.USER_SCAN_LIMIT` around the saved RSP, through
    the owning task's page tables.

    :param reads_with_frames: receives the stack memory read where frames
        were found (for annotating the words around them).
    """
    encoding = orig_ax_encoding(prog)
    result = SweepResult(verdict="clean")
    scanned: set[tuple[int, int]] = set()
    for task in for_each_task(prog):
        try:
            mm = task.mm
            if not mm:
                continue  # kernel threads have no user stack
            pid, tid = int(task.tgid), int(task.pid)
            comm = task.comm.string_().decode(errors="replace")
            found = _stack_of(task)
        except drgn.FaultError as error:
            result.tasks_unreadable += 1
            result.problems.append(f"a task could not be read ({error})")
            continue
        result.tasks_scanned += 1
        if found is None:
            continue
        start, end, name, sp = found
        if (mm.value_(), start) in scanned:
            continue
        scanned.add((mm.value_(), start))
        low, high = bounded_window(start, end, sp)
        read = scan_user_range(task, low, high, name, encoding)
        frames = [f for f in read.frames if f.consistent or f.impossible_ss]
        namer = symbolizer(prog, task) if frames else None
        for frame in frames:
            frame.rip_symbol = namer(frame.rip) if namer else None
            frame.pid, frame.tid = pid, tid
        result.pages_present += read.pages_present
        result.pages_missing += read.pages_missing
        result.stacks.append(SweptStack(pid, tid, comm, name, low, high, read.pages_present,
                                        read.pages_missing, [f.address for f in frames],
                                        read.pages_not_resident))
        result.frames.extend(frames)
        if frames and reads_with_frames is not None:
            reads_with_frames.append(read)
    tasks_with_frames = {(f.pid, f.tid) for f in result.frames}
    if result.frames:
        result.verdict = "cpl0-frames-found"
        result.summary = (f"{len(result.frames)} CPU-pushed frame(s) on the user stacks of "
                          f"{len(tasks_with_frames)} task(s) prove CPL-0 event delivery")
    elif result.pages_missing or result.tasks_unreadable:
        result.verdict = "incomplete"
        result.summary = (f"no frame found, but {result.pages_missing} resident user stack page(s) "
                          f"were not in the dump and {result.tasks_unreadable} task(s) could not "
                          "be read")
    else:
        result.summary = (f"no frame on the user stacks of {result.tasks_scanned} task(s) "
                          f"({result.pages_present} pages read)")
    return result


def sweep_evidence(result: SweepResult) -> Evidence:
    """The sweep as one line of evidence."""
    status = {"cpl0-frames-found": Status.PASS, "clean": Status.FAIL}.get(result.verdict, Status.UNKNOWN)
    return Evidence("cpl0-frames-on-any-user-stack", status, f"sweep: {result.summary}")
