"""
Classify the stack pointer
--------------------------

Where a saved RSP lies: in which of the task's real mappings (its ``[stack]``,
a thread's stack, another anonymous or file mapping), in which kernel stack
(the task stack or its guard page, the IRQ stack, the exception stacks), or in
nothing at all.
"""

from typing import Optional

import drgn
from drgn import Object, Program
from drgn.helpers.linux.mm import vma_find, vma_name
from drgn.helpers.linux.pid import for_each_task

from dfforensics.core import x86
from dfforensics.core.model import RspRegion

__all__ = ("user_stack_pointer", "thread_user_stack_pointers", "classify_rsp", "kernel_stack_ranges")

# VM_GROWSDOWN, the same in every kernel (include/linux/mm.h).
_VM_GROWSDOWN = 0x00000100


def user_stack_pointer(task: Object) -> Optional[int]:
    """Return the user RSP a task saved when it last entered the kernel."""
    try:
        from drgn.helpers.linux.sched import task_pt_regs  # type: ignore[attr-defined]
        return int(task_pt_regs(task).sp)
    except ImportError:
        pass
    except (drgn.FaultError, LookupError, AttributeError):
        return None
    prog = task.prog_
    try:
        top = int(task.stack) + int(prog["THREAD_SIZE"])
        regs = Object(prog, "struct pt_regs", address=top - prog.type("struct pt_regs").size)
        return int(regs.sp)
    except (drgn.FaultError, LookupError, AttributeError):
        return None


def thread_user_stack_pointers(task: Object) -> dict[int, int]:
    """Return {tid: saved user RSP} for every thread of a task's process."""
    prog = task.prog_
    result = {}
    try:
        mm = int(task.mm)
        tgid = int(task.tgid)
    except drgn.FaultError:
        return result
    if not mm:
        return result
    for thread in for_each_task(prog):
        try:
            if int(thread.tgid) != tgid:
                continue
            sp = user_stack_pointer(thread)
        except drgn.FaultError:
            continue
        if sp is not None and x86.is_plausible_user_pointer(sp):
            result[int(thread.pid)] = sp
    return result


def kernel_stack_ranges(task: Optional[Object], cpu: Optional[int], prog: Program) -> list[tuple[int, int, str, str]]:
    """Return (start, end, kind, name) of the kernel stacks a CPU and task use.

    Relies on drgn's knowledge of the exception and IRQ stacks of each kernel
    version (``drgn.helpers.linux.stack``), and adds the task stack and, with
    VMAP_STACK, its guard page.
    """
    ranges: list[tuple[int, int, str, str]] = []
    page = int(prog["PAGE_SIZE"])
    thread_size = int(prog["THREAD_SIZE"])
    if task is not None:
        try:
            base = int(task.stack)
            ranges.append((base, base + thread_size, "kernel-task-stack", "task stack"))
            ranges.append((base - page, base, "kernel-guard-page", "guard page below the task stack"))
        except drgn.FaultError:
            pass
    if task is not None and cpu is not None:
        try:
            from drgn.helpers.linux.stack import _x86_64_stack_ranges  # drgn 0.3.0+
            for start, end, kind in _x86_64_stack_ranges(task, cpu):
                if kind.name == "IRQ":
                    ranges.append((start, end, "irq-stack", f"CPU {cpu} IRQ stack"))
                elif kind.name in ("EXCEPTION", "NMI"):
                    ranges.append((start, end, "exception-stack",
                                   f"CPU {cpu} {kind.name.lower()} stacks (cpu_entry_area)"))
        except (ImportError, LookupError, drgn.FaultError):
            pass
    return ranges


def _vma_description(vma: Object) -> tuple[str, str, int, int]:
    start, end = int(vma.vm_start), int(vma.vm_end)
    try:
        name = vma_name(vma).decode(errors="replace")
    except (drgn.FaultError, LookupError):
        name = ""
    return name, f"{start:#x}-{end:#x}", start, end


def classify_rsp(prog: Program, task: Optional[Object], cpu: Optional[int], rsp: int) -> RspRegion:
    """Say where an RSP lies among a task's mappings and the kernel's stacks."""
    if not x86.is_canonical(rsp):
        return RspRegion("non-canonical", f"RSP {rsp:#x} is not a canonical address")
    if rsp < x86.MMAP_MIN_ADDR:
        return RspRegion("near-null", f"RSP {rsp:#x} is below mmap_min_addr: nothing can be mapped there")
    if x86.is_user_address(rsp):
        return _classify_user(prog, task, rsp)
    for start, end, kind, name in kernel_stack_ranges(task, cpu, prog):
        if start <= rsp <= end:
            return RspRegion(kind, f"RSP {rsp:#x} is in the {name} {start:#x}-{end:#x}", start, end, name)
    return RspRegion("kernel-other", f"RSP {rsp:#x} is a kernel address outside the task's and "
                                     "CPU's stacks")


def _classify_user(prog: Program, task: Optional[Object], rsp: int) -> RspRegion:
    if task is None:
        return RspRegion("user-range", f"RSP {rsp:#x} is a user address; the task is unknown")
    try:
        mm = task.mm
        if not mm:
            return RspRegion("user-unmapped", f"RSP {rsp:#x} is a user address, but the task is a "
                                              "kernel thread with no user mappings")
        vma = vma_find(mm, rsp)
    except drgn.FaultError as error:
        return RspRegion("user-range", f"RSP {rsp:#x} is a user address; the task's mappings "
                                       f"cannot be read ({error})")
    if not vma:
        return RspRegion("user-unmapped", f"RSP {rsp:#x} lies in no mapping of the task")
    name, bounds, start, end = _vma_description(vma)
    start_stack = int(mm.start_stack)
    if name == "[stack]" or start <= start_stack < end:
        return RspRegion("user-stack", f"RSP {rsp:#x} is in the process stack [stack] {bounds}",
                         start, end, "[stack]")
    other_threads = {tid: sp for tid, sp in thread_user_stack_pointers(task).items() if start <= sp < end}
    if other_threads or int(vma.vm_flags) & _VM_GROWSDOWN:
        tids = ", ".join(str(tid) for tid in sorted(other_threads)) or "none saved now"
        return RspRegion("user-thread-stack", f"RSP {rsp:#x} is in a thread stack {bounds} "
                                              f"(threads with their RSP there: {tids})",
                         start, end, name or "thread stack")
    if vma.vm_file:
        return RspRegion("user-file", f"RSP {rsp:#x} is in the file mapping {name} {bounds}",
                         start, end, name)
    return RspRegion("user-anon", f"RSP {rsp:#x} is in an anonymous mapping {bounds}"
                                  + (f" ({name})" if name else ""), start, end, name or None)
