"""
Classify the stack pointer
--------------------------

Read what lies around a saved RSP: the task's mapping that holds it (its
``[stack]``, a thread's stack, another anonymous or file mapping), the kernel
stacks of the task and CPU (the task stack and its guard page, the IRQ stack,
the exception stacks). The pure :func:`dfforensics.core.regions.classify_rsp`
says which it is.
"""

from typing import Optional

import drgn
from drgn import Object, Program
from drgn.helpers.linux.mm import vma_find, vma_name
from drgn.helpers.linux.pid import for_each_task

from dfforensics.core import x86
from dfforensics.core.model import RegionKind, RspRegion
from dfforensics.core.regions import KernelStack, MappingView, UserView, classify_rsp

__all__ = ("user_stack_pointer", "thread_user_stack_pointers", "kernel_stacks", "rsp_region")

# VM_GROWSDOWN, the same in every kernel (include/linux/mm.h).
_VM_GROWSDOWN = 0x00000100


def user_stack_pointer(task: Object) -> Optional[int]:
    """Return the user RSP a task saved when it last entered the kernel.

    The kernel's task_pt_regs(): the pt_regs at the top of the task stack
    (x86_64, TOP_OF_KERNEL_STACK_PADDING 0 without FRED).
    """
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


def kernel_stacks(task: Optional[Object], cpu: Optional[int], prog: Program) -> list[KernelStack]:
    """Return the kernel stacks a CPU and task use.

    Relies on drgn's knowledge of the exception and IRQ stacks of each kernel
    version (``drgn.helpers.linux.stack``), and adds the task stack and, with
    VMAP_STACK, its guard page.
    """
    stacks: list[KernelStack] = []
    page = int(prog["PAGE_SIZE"])
    thread_size = int(prog["THREAD_SIZE"])
    if task is not None:
        try:
            base = int(task.stack)
            stacks.append(KernelStack(base, base + thread_size, RegionKind.KERNEL_TASK_STACK, "task stack"))
            stacks.append(KernelStack(base - page, base, RegionKind.KERNEL_GUARD_PAGE,
                                      "guard page below the task stack"))
        except drgn.FaultError:
            pass
    if task is not None and cpu is not None:
        try:
            from drgn.helpers.linux.stack import _x86_64_stack_ranges  # drgn 0.3.0+
            for start, end, kind in _x86_64_stack_ranges(task, cpu):
                if kind.name == "IRQ":
                    stacks.append(KernelStack(start, end, RegionKind.IRQ_STACK, f"CPU {cpu} IRQ stack"))
                elif kind.name in ("EXCEPTION", "NMI"):
                    stacks.append(KernelStack(start, end, RegionKind.EXCEPTION_STACK,
                                              f"CPU {cpu} {kind.name.lower()} stacks (cpu_entry_area)"))
        except (ImportError, LookupError, drgn.FaultError):
            pass
    return stacks


def _mapping_view(task: Object, vma: Object) -> MappingView:
    start, end = int(vma.vm_start), int(vma.vm_end)
    try:
        name = vma_name(vma).decode(errors="replace")
    except (drgn.FaultError, LookupError):
        name = ""
    threads = tuple(sorted(tid for tid, sp in thread_user_stack_pointers(task).items() if start <= sp < end))
    return MappingView(start, end, name, file_backed=bool(vma.vm_file),
                       grows_down=bool(int(vma.vm_flags) & _VM_GROWSDOWN),
                       holds_start_stack=start <= int(task.mm.start_stack) < end, thread_ids=threads)


def user_view(task: Optional[Object], address: int) -> UserView:
    """Read what the task's mappings say about a user address."""
    if task is None:
        return UserView(task_known=False)
    try:
        mm = task.mm
        if not mm:
            return UserView(kernel_thread=True)
        vma = vma_find(mm, address)
        return UserView(mapping=_mapping_view(task, vma) if vma else None)
    except drgn.FaultError as error:
        return UserView(unreadable=str(error))


def rsp_region(prog: Program, task: Optional[Object], cpu: Optional[int], rsp: int) -> RspRegion:
    """Say where an RSP lies among a task's mappings and the kernel's stacks."""
    if x86.is_user_address(rsp) and x86.is_canonical(rsp) and rsp >= x86.MMAP_MIN_ADDR:
        return classify_rsp(rsp, user_view(task, rsp), ())
    return classify_rsp(rsp, None, kernel_stacks(task, cpu, prog) if x86.is_kernel_address(rsp) else ())
