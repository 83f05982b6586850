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

import dataclasses
from dataclasses import dataclass
from typing import Optional

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
from dfforensics.dump.stackscan import StackRead, bounded_window, scan_user_range, symbolizer

__all__ = ("SweptUserStacks", "sweep_user_stacks")


@dataclass(frozen=True)
class SweptUserStacks:
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


def sweep_user_stacks(prog: Program, version: Optional[Version] = None) -> SweptUserStacks:
    """Read every thread's user stack mapping and find the frames pushed at CPL 0.

    Supports x86_64 kernels whose task, mm and VMA layouts drgn's helpers
    know (3.x–6.x). Each mapping is read once, at most
    :data:`~dfforensics.dump.stackscan.USER_SCAN_LIMIT` around the saved RSP,
    through the owning task's page tables.
    """
    encoding = kernel_facts.value_for(kernel_facts.ORIG_AX_ENCODING, version)
    tasks_scanned = tasks_unreadable = 0
    stacks: list[SweptStack] = []
    frames: list[Frame] = []
    problems: list[str] = []
    unlocated: list[str] = []
    reads: list[StackRead] = []
    scanned: set[tuple[int, int]] = set()
    for task in for_each_task(prog):
        try:
            mm = task.mm
            if not mm:
                continue  # kernel threads have no user stack
            pid, tid = int(task.tgid), int(task.pid)
            comm = task.comm.string_().decode(errors="replace")
            found, why_not = _stack_of(task)
        except drgn.FaultError as error:
            tasks_unreadable += 1
            problems.append(f"a task could not be read ({error})")
            continue
        tasks_scanned += 1
        if found is None:
            unlocated.append(f"{comm} (pid {pid}, tid {tid}): {why_not}")
            continue
        start, end, name, sp = found
        if (mm.value_(), start) in scanned:
            continue
        scanned.add((mm.value_(), start))
        low, high = bounded_window(start, end, sp)
        read = scan_user_range(task, low, high, name, encoding)
        proving = [f for f in read.frames if proves_cpl0_delivery(f)]
        namer = symbolizer(prog, task) if proving else None
        proving = [dataclasses.replace(f, rip_symbol=namer(f.rip), pid=pid, tid=tid) for f in proving]
        stacks.append(SweptStack(pid, tid, comm, name, low, high, read.pages_present, read.pages_missing,
                                 [f.address for f in proving], read.pages_not_resident))
        frames.extend(proving)
        if proving:
            reads.append(read)
    observation = SweepObservation(tasks_scanned, tasks_unreadable, tuple(stacks), tuple(frames),
                                   tuple(problems), tuple(unlocated))
    return SweptUserStacks(observation, tuple(reads))
