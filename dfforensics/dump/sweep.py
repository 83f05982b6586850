"""
Sweep every user stack
----------------------

The hypervisor bug leaves frames on user stacks long before any double fault:
each CPL-0 delivery onto a present user stack page pushes a frame there, and
the task often goes on. This module reads, for every thread of every process,
the present pages of the mapping that holds its saved user RSP (bounded per
task) and hands what it found to the judge
(:func:`dfforensics.core.verdict.judge_sweep`). Works on dumps and on a live
kernel (``drgn`` as root).
"""

from typing import NamedTuple, Optional

import drgn
from drgn import Program
from drgn.helpers.linux.mm import vma_find, vma_name
from drgn.helpers.linux.pid import for_each_task

from dfforensics.core import kernel_facts, x86
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import Frame, SweptStack
from dfforensics.core.observation import SweepObservation
from dfforensics.core.signature import proves_cpl0_delivery
from dfforensics.dump.rspregion import user_stack_pointer
from dfforensics.dump.stackcoverage import (
    BOUND_PAGES_PER_PROCESS, ProcessStacks, confirm_frame, read_left_stacks, sigaltstack_of,
)
from dfforensics.dump.stackscan import StackRead, bounded_window, named, scan_user_range, symbolizer

__all__ = ("SweptUserStacks", "sweep_user_stacks")


class SweptUserStacks(NamedTuple):
    """What the sweep saw, and the stack memory where it found frames (to annotate)."""

    observation: SweepObservation
    reads_with_frames: tuple[StackRead, ...]


def _stack_of(task) -> tuple[Optional[tuple[int, int, str, int]], Optional[str]]:
    """The mapping holding a thread's saved user RSP, (start, end, name, rsp), or why none does."""
    sp = user_stack_pointer(task)
    if sp is None:
        return None, "its saved user registers cannot be read"
    if not x86.is_plausible_user_pointer(sp):
        return None, f"its saved user RSP {sp:#x} is not a user address"
    vma = vma_find(task.mm, sp)
    if not vma:
        return None, f"its saved user RSP {sp:#x} lies in no mapping"
    start, end = int(vma.vm_start), int(vma.vm_end)
    # Named as the #DF report names it (dfforensics.core.regions): an anonymous
    # mapping that holds a thread's saved RSP is that thread's stack.
    name = vma_name(vma).decode(errors="replace")
    if start <= int(task.mm.start_stack) < end:
        name = "[stack]"
    return (start, end, name or "thread stack", sp), None


def sweep_user_stacks(prog: Program, version: Optional[Version] = None,
                      bound: int = BOUND_PAGES_PER_PROCESS) -> SweptUserStacks:
    """Read every thread's user stack mapping and find the frames pushed at CPL 0.

    Supports x86_64 kernels whose task, mm and VMA layouts drgn's helpers
    know (3.x–6.x). Each mapping is read once, at most
    :data:`~dfforensics.dump.stackscan.USER_SCAN_LIMIT` around the saved RSP,
    through the owning task's page tables; then the stacks threads may have
    left (:mod:`dfforensics.dump.stackcoverage`), at most ``bound`` resident
    pages per process. On a running guest each frame is read twice.
    """
    encoding = kernel_facts.value_for(kernel_facts.ORIG_AX_ENCODING, version)
    tasks_scanned = tasks_unreadable = 0
    stacks: list[SweptStack] = []
    frames: list[Frame] = []
    problems: list[str] = []
    unlocated: list[str] = []
    reads: list[StackRead] = []
    frames_unconfirmed = 0
    scanned: set[tuple[int, int]] = set()
    processes: dict[int, ProcessStacks] = {}
    live = bool(prog.flags & drgn.ProgramFlags.IS_LIVE)
    tasks, walk_broken = _tasks(prog, problems)
    tasks_unreadable += walk_broken  # the tasks after the break were not read: never clean
    tasks_gone = 0
    for task in tasks:
        try:
            facts = _task_facts(task)
        except _CHANGES_UNDER_US as error:
            if not live and not isinstance(error, drgn.FaultError):
                raise  # a dump does not change under the read: not a race
            facts, error = _read_again(prog, task, error) if live else (None, error)
            if facts is _GONE:
                tasks_gone += 1
                continue
            if facts is None:
                tasks_unreadable += 1
                problems.append(f"a task could not be read ({error})")
                continue
        if facts is _KERNEL_THREAD:
            continue  # kernel threads have no user stack
        mm, pid, tid, comm, found, why_not, altstack = facts
        process = processes.setdefault(mm.value_(), ProcessStacks(mm, task, pid, comm))
        process.threads.append(tid)
        if altstack is not None:
            process.sigaltstacks[tid] = altstack
        tasks_scanned += 1
        if found is None:
            if live and _gone(prog, task):  # exiting as we read it: its mappings went first
                tasks_gone += 1
                continue
            unlocated.append(f"{comm} (pid {pid}, tid {tid}): {why_not}")
            continue
        start, end, name, sp = found
        if (mm.value_(), start) in scanned:
            continue
        scanned.add((mm.value_(), start))
        low, high = bounded_window(start, end, sp)
        process.windows_read.append((low, high))
        read = scan_user_range(task, low, high, name, encoding)
        if live and read.pages_missing and _gone(prog, task, mm):
            tasks_gone += 1  # its page tables went as we read them: nothing left to hold frames
            continue
        proving = [f for f in read.frames if proves_cpl0_delivery(f)]
        if live:
            proving, unconfirmed = _confirmed(prog, task, mm, proving)
            frames_unconfirmed += unconfirmed
        namer = symbolizer(prog, task) if proving else None
        proving = [named(f, namer, pid=pid, tid=tid) for f in proving]
        stacks.append(SweptStack(pid, tid, comm, name, low, high, read.pages_present, read.pages_missing,
                                 [f.address for f in proving], read.pages_not_resident))
        frames.extend(proving)
        if proving:
            reads.append(read)
    # The stacks the threads may have left: sigaltstacks and anonymous mappings.
    left = read_left_stacks(prog, processes.values(), encoding, lambda task: symbolizer(prog, task), bound,
                            (lambda task, mm: _gone(prog, task, mm)) if live else None)
    left_frames = left.frames
    if live:
        owners = {p.pid: p for p in processes.values()}
        left_frames, unconfirmed = _confirmed_by_owner(prog, owners, left_frames)
        frames_unconfirmed += unconfirmed
    left.coverage.frames_unconfirmed, left.coverage.live = frames_unconfirmed, live
    left.coverage.tasks_gone += tasks_gone
    stacks += left.stacks
    frames += left_frames
    for low, high, pages in left.reads_with_frames:
        read = StackRead(low, high, "left stack", pages_present=len(pages), pages=pages)
        read.frames = [f for f in left_frames if low <= f.address < high]
        reads.append(read)
    observation = SweepObservation(tasks_scanned, tasks_unreadable, tuple(stacks), tuple(frames),
                                   tuple(problems), tuple(unlocated), left.coverage, version)
    return SweptUserStacks(observation, tuple(reads))


_KERNEL_THREAD = object()
# What reading a task that changes under the read raises: a fault, or garbage read as
# an mm, a VMA tree or a page table (bad values, absent objects, overflowing ints; drgn's
# maple-tree walk raises NotImplementedError for a node type torn mid-update).
_CHANGES_UNDER_US = (drgn.FaultError, ValueError, LookupError, OverflowError, NotImplementedError)


def _task_facts(task):
    """What the sweep needs of one task, read at once: mm, pid, tid, comm, its stack
    (or why none), its sigaltstack; or :data:`_KERNEL_THREAD`."""
    mm = task.mm
    if not mm:
        return _KERNEL_THREAD
    pid, tid = int(task.tgid), int(task.pid)
    comm = task.comm.string_().decode(errors="replace")
    found, why_not = _stack_of(task)
    return mm, pid, tid, comm, found, why_not, sigaltstack_of(task)


_GONE = object()


def _read_again(prog: Program, task, error: Exception):
    """A running guest's task that could not be read: it may have exited (and its memory
    been reused) since the walk of the task list. Gone: :data:`_GONE` (no stack left to
    hold frames); still there: read once more; (facts or None, the last error)."""
    if _gone(prog, task):
        return _GONE, error
    try:
        return _task_facts(task), error
    except _CHANGES_UNDER_US as again:
        return (_GONE if _gone(prog, task) else None), again


# include/linux/sched.h, the same since 2.6: set by do_exit() before exit_mm() frees the
# task's memory.
_PF_EXITING = 0x4


def _gone(prog: Program, task, mm=None) -> bool:
    """Whether a task of a running guest has exited, or begun to, since the walk: its
    pid no longer names it, it is exiting (its mm and page tables are being freed, so
    what they point to may be reused), its mm is no longer ``mm``, or it cannot be read."""
    from drgn.helpers.linux.pid import find_task

    try:
        if find_task(prog, int(task.pid)).value_() != task.value_() or int(task.flags) & _PF_EXITING:
            return True
        return mm is not None and task.mm.value_() != mm.value_()
    except _CHANGES_UNDER_US:
        return True


# PID_MAX_LIMIT on 64-bit kernels: more tasks than this means the list changed under us.
_MAX_TASKS = 4 * 1024 * 1024


def _tasks(prog: Program, problems: list[str]) -> tuple[list, int]:
    """Every task once, and 1 when the walk broke off. On a running guest the task
    list changes under the walk: a task seen twice is skipped, and a walk that runs
    away (a freed task's pointers) or faults stops, with the reason among the problems."""
    seen: set[int] = set()
    tasks = []
    try:
        for task in for_each_task(prog):
            if task.value_() in seen:
                continue
            seen.add(task.value_())
            if len(seen) > _MAX_TASKS:
                problems.append(f"the task list did not end after {_MAX_TASKS} tasks")
                return tasks, 1
            tasks.append(task)
    except drgn.FaultError as error:
        problems.append(f"the task list could not be walked to its end ({error})")
        return tasks, 1
    return tasks, 0


def _confirmed(prog: Program, task, mm, frames: list[Frame]) -> tuple[list[Frame], int]:
    """The frames a second read confirms, on a running guest: the same words through a
    fresh page-table walk, and their task still the one the walk found (a task that
    exited may have left its page tables to be reused)."""
    kept = [f for f in frames if confirm_frame(prog, mm, f)]
    if kept and _gone(prog, task, mm):
        kept = []
    return kept, len(frames) - len(kept)


def _confirmed_by_owner(prog: Program, owners: dict, frames: list[Frame]) -> tuple[list[Frame], int]:
    kept = []
    for frame in frames:
        owner = owners[frame.pid]
        if confirm_frame(prog, owner.mm, frame) and not _gone(prog, owner.task, owner.mm):
            kept.append(frame)
    return kept, len(frames) - len(kept)
