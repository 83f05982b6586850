"""
Where a stack pointer lies
--------------------------

Classify a saved RSP from what the drgn layer saw around it: the task's
mapping that holds it (or that none does, or that the mappings could not be
read), and the kernel stacks of its task and CPU. Pure: no drgn; the readers
in :mod:`dfforensics.dump.rspregion` gather the views.
"""

from typing import NamedTuple, Optional, Sequence

from dfforensics.core import x86
from dfforensics.core.model import RegionKind, RspRegion

__all__ = ("MappingView", "UserView", "KernelStack", "classify_rsp")


class MappingView(NamedTuple):
    """The task's mapping (VMA) that holds an address."""

    start: int
    end: int
    #: As /proc/PID/maps names it ("[stack]", a file path, "" for anonymous).
    name: str
    file_backed: bool
    #: VM_GROWSDOWN is set (the kernel grows it like a stack).
    grows_down: bool
    #: mm->start_stack lies in it: the process stack whatever its name.
    holds_start_stack: bool
    #: Threads whose saved user RSP lies in it.
    thread_ids: tuple[int, ...] = ()

    @property
    def bounds(self) -> str:
        return f"{self.start:#x}-{self.end:#x}"


class UserView(NamedTuple):
    """What is known of the task's user mappings at an address."""

    #: The task is not known (no task, or its struct could not be trusted).
    task_known: bool = True
    #: The task is a kernel thread: it has no user mappings at all.
    kernel_thread: bool = False
    #: Why the mappings could not be read, when they could not.
    unreadable: Optional[str] = None
    #: The mapping holding the address; None with ``unreadable`` None: no mapping.
    mapping: Optional[MappingView] = None


class KernelStack(NamedTuple):
    """One kernel stack of the task or its CPU."""

    start: int
    end: int
    kind: RegionKind
    name: str


def _classify_user(rsp: int, view: UserView) -> RspRegion:
    if not view.task_known:
        return RspRegion(RegionKind.USER_RANGE, f"RSP {rsp:#x} is a user address; the task is unknown")
    if view.kernel_thread:
        return RspRegion(RegionKind.USER_UNMAPPED, f"RSP {rsp:#x} is a user address, but the task is "
                                                   "a kernel thread with no user mappings")
    if view.unreadable is not None:
        return RspRegion(RegionKind.USER_RANGE, f"RSP {rsp:#x} is a user address; the task's mappings "
                                                f"cannot be read ({view.unreadable})")
    vma = view.mapping
    if vma is None:
        return RspRegion(RegionKind.USER_UNMAPPED, f"RSP {rsp:#x} lies in no mapping of the task")
    if vma.name == "[stack]" or vma.holds_start_stack:
        return RspRegion(RegionKind.USER_STACK, f"RSP {rsp:#x} is in the process stack [stack] "
                                                f"{vma.bounds}", vma.start, vma.end, "[stack]")
    if vma.thread_ids or vma.grows_down:
        tids = ", ".join(str(tid) for tid in sorted(vma.thread_ids)) or "none saved now"
        return RspRegion(RegionKind.USER_THREAD_STACK, f"RSP {rsp:#x} is in a thread stack {vma.bounds} "
                                                       f"(threads with their RSP there: {tids})",
                         vma.start, vma.end, vma.name or "thread stack")
    if vma.file_backed:
        return RspRegion(RegionKind.USER_FILE, f"RSP {rsp:#x} is in the file mapping {vma.name} "
                                               f"{vma.bounds}", vma.start, vma.end, vma.name)
    return RspRegion(RegionKind.USER_ANON, f"RSP {rsp:#x} is in an anonymous mapping {vma.bounds}"
                                           + (f" ({vma.name})" if vma.name else ""),
                     vma.start, vma.end, vma.name or None)


def classify_rsp(rsp: int, user: Optional[UserView], kernel_stacks: Sequence[KernelStack]) -> RspRegion:
    """Say where an RSP lies among a task's mappings and the kernel's stacks.

    :param user: what is known of the user mappings at ``rsp`` (needed for a
        user address; None is read as "the task is unknown").
    :param kernel_stacks: the task's and CPU's kernel stacks (for a kernel address).
    """
    if not x86.is_canonical(rsp):
        return RspRegion(RegionKind.NON_CANONICAL, f"RSP {rsp:#x} is not a canonical address")
    if rsp < x86.MMAP_MIN_ADDR:
        return RspRegion(RegionKind.NEAR_NULL, f"RSP {rsp:#x} is below mmap_min_addr: nothing can be "
                                               "mapped there")
    if x86.is_user_address(rsp):
        return _classify_user(rsp, user if user is not None else UserView(task_known=False))
    for stack in kernel_stacks:
        if stack.start <= rsp <= stack.end:
            return RspRegion(stack.kind, f"RSP {rsp:#x} is in the {stack.name} {stack.start:#x}-"
                                         f"{stack.end:#x}", stack.start, stack.end, stack.name)
    return RspRegion(RegionKind.KERNEL_OTHER, f"RSP {rsp:#x} is a kernel address outside the task's "
                                              "and CPU's stacks")
