"""
Classify the stack pointer
--------------------------

Read what lies around a saved RSP: the task's mapping that holds it (its
``[stack]``, a thread's stack, another anonymous or file mapping), the kernel
stacks of the task and CPU (the task stack and its guard page, the IRQ stack,
the exception stacks). The pure :func:`dfforensics.core.regions.classify_rsp`
says which it is.
"""

import itertools
from typing import Optional

import drgn
from drgn import Object, Program
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.mm import vma_find, vma_name
from drgn.helpers.linux.percpu import per_cpu
from drgn.helpers.linux.pid import for_each_task

from dfforensics.core import kernel_facts, x86
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import RegionKind, RspRegion
from dfforensics.core.regions import KernelStack, MappingView, UserView, classify_rsp
from dfforensics.dump.context import kernel_version

__all__ = ("task_stack_padding", "task_pt_regs_address", "user_stack_pointer", "thread_user_stack_pointers", "kernel_stacks", "rsp_region")

# VM_GROWSDOWN, the same in every kernel (include/linux/mm.h).
_VM_GROWSDOWN = 0x00000100


def _percpu_word(prog: Program, cpu: int, symbol: str, member: str) -> int:
    value = per_cpu(prog[symbol], cpu)
    for name in filter(None, member.split(".")):
        value = getattr(value, name)
    return int(value)


def _measured_padding(prog: Program, version: Optional[Version]) -> Optional[int]:
    """TOP_OF_KERNEL_STACK_PADDING as the kernel applied it: on each CPU the scheduler
    stores task_top_of_stack(current) (= task_pt_regs() + 1) per CPU, so
    ``current->stack + THREAD_SIZE - that`` is the padding. The CPUs must agree; a CPU
    caught between the two per-CPU writes of __switch_to() is outvoted."""
    thread_size = int(prog["THREAD_SIZE"])
    seen: dict[int, int] = {}
    tops = kernel_facts.candidates(kernel_facts.TOP_OF_STACK_PERCPU, version)
    currents = kernel_facts.candidates(kernel_facts.CURRENT_TASK_PERCPU, version)
    for cpu in for_each_possible_cpu(prog):
        for (top_symbol, top_member), (cur_symbol, cur_member) in itertools.product(tops, currents):
            try:
                top = _percpu_word(prog, cpu, top_symbol, top_member)
                task = Object(prog, "struct task_struct *", _percpu_word(prog, cpu, cur_symbol, cur_member))
                padding = int(task.stack) + thread_size - top
            except (LookupError, AttributeError, drgn.FaultError):
                continue
            # x86 pads by whole words and never by more than a FRED frame's extra 64 bytes;
            # anything else is another era's variable read on this kernel: try the next.
            if 0 <= padding <= 64 and padding % 8 == 0:
                seen[padding] = seen.get(padding, 0) + 1
                break
    return max(seen, key=lambda padding: seen[padding]) if seen else None


def task_stack_padding(prog: Program, version: Optional[Version] = None) -> int:
    """TOP_OF_KERNEL_STACK_PADDING of the dumped kernel: measured from its per-CPU top of
    stack, else (per-CPU data missing from the dump) the kernel fact of its version for a
    kernel with FRED built in (it has :data:`~kernel_facts.FRED_ENTRY_SYMBOL`), else 0.
    Cached per program: one kernel, one padding."""
    cached = prog.cache.get("dfforensics_stack_padding")
    if cached is not None:
        return cached
    if version is None:
        version = kernel_version(prog)
    padding = _measured_padding(prog, version)
    if padding is None:
        try:
            prog.symbol(kernel_facts.FRED_ENTRY_SYMBOL)
            fred = True
        except LookupError:
            fred = False
        rows = kernel_facts.candidates(kernel_facts.TOP_OF_KERNEL_STACK_PADDING_FRED, version)
        padding = rows[0] if fred else 0
    prog.cache["dfforensics_stack_padding"] = padding
    return padding


def task_pt_regs_address(task: Object) -> int:
    """The kernel's task_pt_regs(): the user-entry pt_regs at the top of the task stack,
    below TOP_OF_KERNEL_STACK_PADDING (16 bytes on CONFIG_X86_FRED=y kernels, 6.9+)."""
    prog = task.prog_
    top = int(task.stack) + int(prog["THREAD_SIZE"]) - task_stack_padding(prog)
    return top - prog.type("struct pt_regs").size


def user_stack_pointer(task: Object) -> Optional[int]:
    """Return the user RSP a task saved when it last entered the kernel (task_pt_regs()->sp)."""
    prog = task.prog_
    try:
        regs = Object(prog, "struct pt_regs", address=task_pt_regs_address(task))
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
