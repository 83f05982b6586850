"""
Find the #DF
------------

Every double fault a dump holds, from three sources that must agree: the
kernel log, the ``struct pt_regs`` the #DF entry saved at the top of each
CPU's double-fault IST stack, and the crashed thread's stack trace through the
#DF handler. After a panic the other CPUs leave the online mask, so every
*possible* CPU is examined.
"""

from dataclasses import dataclass, field
from typing import Optional

import drgn
from drgn import Object, Program
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.percpu import per_cpu
from drgn.helpers.linux.pid import find_task
from drgn.helpers.linux.sched import cpu_curr, task_cpu

from dfforensics.core import kernel_facts, x86
from dfforensics.core.frames import decode_fred, frame_problems
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import DfSource, Registers
from dfforensics.dump.stackscan import kernel_symbol_name
from dfforensics.logs.consolelog import DfReport

__all__ = ("IstRegs", "FoundDf", "DfSearch", "df_ist_index", "df_stack_top", "saved_df_regs",
           "find_double_faults")


@dataclass
class IstRegs:
    """The interrupted context a #DF entry saved on a CPU's double-fault stack."""

    cpu: int
    address: int
    regs: Registers
    orig_ax: int


@dataclass
class FoundDf:
    """One #DF with the sources that saw it."""

    cpu: Optional[int]
    task: Optional[Object]
    regs: Registers
    sources: list[DfSource] = field(default_factory=list)
    log_report: Optional[DfReport] = None
    ist: Optional[IstRegs] = None
    trace: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    #: Where CR2 came from (the log, or the #DF handler's stack frame).
    cr2_source: Optional[str] = None


@dataclass
class DfSearch:
    """Every #DF found, and a sentence for each source that could not be read."""

    found: list[FoundDf]
    problems: list[str]


def df_ist_index(prog: Program, version: Optional[Version] = None) -> int:
    """Return the zero-based ``tss.ist[]`` index of the #DF stack.

    Read from the IST field of IDT gate 8 (``idt_table``), which every kernel
    since 2.6 fills (the field holds index + 1); falls back to
    :data:`~dfforensics.core.kernel_facts.DF_IST_INDEX` when the IDT page is not in
    the dump.
    """
    try:
        gate = prog["idt_table"][8]
        try:
            # struct idt_bits inside struct gate_struct: "x86/idt: Unify gate_struct
            # handling for 32/64-bit kernels" (Thomas Gleixner's IDT rework, Aug 2017,
            # merged for 4.14; the exact release is unverified here).
            ist = int(gate.bits.ist)
        except AttributeError:
            ist = int(gate.ist)  # struct gate_struct64 of 2.6–4.14
        if ist:
            return ist - 1
    except (LookupError, drgn.FaultError):
        pass
    return kernel_facts.candidates(kernel_facts.DF_IST_INDEX, version)[0]


def _tss(prog: Program, cpu: int, version: Optional[Version]) -> Object:
    for name in kernel_facts.candidates(kernel_facts.TSS_PERCPU_SYMBOL, version):
        try:
            return per_cpu(prog[name], cpu)
        except LookupError:
            continue
    raise LookupError("no per-CPU TSS variable (init_tss, cpu_tss, cpu_tss_rw) in the debug info")


def df_stack_top(prog: Program, cpu: int, version: Optional[Version] = None) -> int:
    """Return the top of a CPU's double-fault IST stack (from its TSS).

    Supports the per-CPU TSS names of 2.6–4.0 (``init_tss``), 4.1–4.14
    (``cpu_tss``) and 4.15+ (``cpu_tss_rw``).

    :raises LookupError: if the kernel has none of those variables.
    :raises drgn.FaultError: if the TSS is not in the dump.
    """
    return int(_tss(prog, cpu, version).x86_tss.ist[df_ist_index(prog, version)])


def _df_pt_regs_candidates(prog: Program, top: int, pt_regs_size: int) -> list[tuple[int, bool]]:
    """Where the #DF entry's pt_regs may lie below the #DF stack top: IDT delivery builds
    them right at the top; FRED delivery (6.9+, FRED_RSP3 = the same DF stack top) pushes a
    struct fred_frame, pt_regs then 16 bytes of struct fred_info, so they start
    sizeof(struct fred_frame) below the top. Sizes from the kernel's own debug info."""
    candidates = [(top - pt_regs_size, False)]
    try:
        candidates.append((top - prog.type("struct fred_frame").size, True))
    except LookupError:
        pass  # a kernel without FRED (before 6.9, or built without CONFIG_X86_FRED types)
    return candidates


def saved_df_regs(prog: Program, cpu: int, version: Optional[Version] = None) -> Optional[IstRegs]:
    """Return the state a #DF saved on a CPU, or ``None`` if that CPU took none.

    The #DF entry builds a full ``struct pt_regs`` at the top of the IST
    stack; a CPU that never took a #DF has zeros there, which fail the frame
    checks of :func:`dfforensics.core.frames.frame_problems`.

    :raises drgn.FaultError: if the TSS or the #DF stack is not in the dump.
    """
    try:
        top = df_stack_top(prog, cpu, version)
    except LookupError:
        return None
    if not top:
        return None
    pt_regs_type = prog.type("struct pt_regs")
    for address, fred in _df_pt_regs_candidates(prog, top, pt_regs_type.size):
        regs = Object(prog, pt_regs_type, address=address).read_()
        rip, cs, flags = int(regs.ip), int(regs.cs) & 0xFFFF, int(regs.flags)
        sp, ss, orig_ax = int(regs.sp), int(regs.ss) & 0xFFFF, int(regs.orig_ax) & (2**64 - 1)
        if frame_problems(rip, cs, flags, sp, ss):
            continue
        if fred:
            # Under FRED the #DF frame says what it is: a hardware exception, vector 8.
            event = decode_fred(int(regs.csx), int(regs.ssx))
            if event is None or (event.event_type, event.vector) != (3, 8):
                continue
        break
    else:
        return None
    others = {("r" + name if name[0] != "r" else name): int(getattr(regs, name))
              for name in ("ax", "bx", "cx", "dx", "si", "di", "bp", "r8", "r9", "r10", "r11",
                           "r12", "r13", "r14", "r15")}
    return IstRegs(cpu, address, Registers(rip=rip, cs=cs, rflags=flags, rsp=sp, ss=ss,
                                           others=others), orig_ax)


def _handler_cr2(frame: drgn.StackFrame) -> Optional[int]:
    for local in {fact.value for fact in kernel_facts.DF_CR2_LOCAL}:
        try:
            return int(frame[local])
        except (KeyError, LookupError, drgn.FaultError, drgn.ObjectAbsentError, TypeError):
            continue
    return None


def _crashed_trace(prog: Program) -> tuple[Optional[Object], list[str], Optional[int]]:
    """The crashed thread, its trace's function names, and CR2 as the #DF handler read it."""
    try:
        thread = prog.crashed_thread()
        trace = thread.stack_trace()
    except (ValueError, LookupError, drgn.FaultError):
        return None, [], None
    handlers = {fact.value for fact in kernel_facts.DF_HANDLER}
    names, cr2 = [], None
    for frame in trace:
        if not x86.is_canonical(frame.pc):
            # The unwinder ran past the stack's end into data (e.g. the BIOS real-mode
            # IVT pattern 0xf000ff53f000ff53): no code is there.
            break
        name = frame.name or kernel_symbol_name(prog, frame.pc) or f"{frame.pc:#x}"
        names.append(name)
        if frame.name in handlers and cr2 is None:
            cr2 = _handler_cr2(frame)
    return thread.object, names, cr2


def _task_cpu(task: Object) -> Optional[int]:
    try:
        return task_cpu(task)  # drgn knows where each era keeps it
    except (AttributeError, LookupError, drgn.FaultError):
        return None


def _task_of(prog: Program, cpu: Optional[int], pid: Optional[int]) -> Optional[Object]:
    """The task on a CPU, or (when the run queue is unreadable) the task the log named."""
    if cpu is not None:
        try:
            return cpu_curr(prog, cpu)
        except (LookupError, drgn.FaultError, IndexError):
            pass
    if pid is not None:
        try:
            task = find_task(prog, pid)
            return task if task else None
        except (LookupError, drgn.FaultError):
            pass
    return None


def find_double_faults(prog: Program, log_reports: list[DfReport],
                       version: Optional[Version] = None) -> DfSearch:
    """Find every #DF in a dump, and say which sources saw each and which
    sources could not be read (a CPU's #DF stack missing from the dump, ...).

    :param log_reports: the #DF reports the log parser found in the dump's own
        kernel log.
    """
    problems: list[str] = []
    handlers = {fact.value for fact in kernel_facts.DF_HANDLER}
    crashed_task, trace, handler_cr2 = _crashed_trace(prog)
    trace_has_df = any(name.split("+")[0] in handlers for name in trace)
    crashed_cpu = _task_cpu(crashed_task) if crashed_task is not None else None

    found: dict[int, FoundDf] = {}
    for cpu in for_each_possible_cpu(prog):
        try:
            ist = saved_df_regs(prog, cpu, version)
        except drgn.FaultError as error:
            problems.append(f"CPU {cpu}: its #DF stack (TSS IST slot) is not in the dump ({error})")
            continue
        if ist is None:
            continue
        task = _task_of(prog, cpu, None)
        ist.regs.rip_symbol = kernel_symbol_name(prog, ist.regs.rip)
        found[cpu] = FoundDf(cpu, task, ist.regs, [DfSource.IST_PT_REGS], ist=ist)

    unmatched_logs = []
    for report in log_reports:
        entry = found.get(report.cpu) if report.cpu is not None else None
        if entry is None and len(found) == 1 and report.cpu is None:
            entry = next(iter(found.values()))
        if entry is None:
            unmatched_logs.append(report)
            continue
        entry.sources.append(DfSource.LOG)
        entry.log_report = report
        logged = report.regs
        for name in ("rsp", "ss", "cs"):
            ours, theirs = getattr(entry.regs, name), getattr(logged, name)
            if theirs is not None and ours != theirs:
                entry.disagreements.append(f"{name.upper()}: IST pt_regs {ours:#x}, log {theirs:#x}")
        # CR2 and the error code are not in pt_regs; the log printed them.
        entry.regs.cr2 = logged.cr2
        entry.regs.error_code = logged.error_code
        if logged.cr2 is not None:
            entry.cr2_source = "the dump's kernel log"
    for report in unmatched_logs:
        task = _task_of(prog, report.cpu, report.pid)
        found[report.cpu if report.cpu is not None else -1 - len(found)] = FoundDf(
            report.cpu, task, report.regs, [DfSource.LOG], log_report=report)

    if trace_has_df:
        entry = found.get(crashed_cpu) if crashed_cpu is not None else None
        if entry is None and len(found) == 1:
            entry = next(iter(found.values()))
        if entry is not None:
            entry.sources.append(DfSource.STACK_TRACE)
            entry.trace = trace
            if handler_cr2 is not None:
                # Read at the #DF's entry: what the log printed later may have changed since.
                if entry.regs.cr2 is not None and entry.regs.cr2 != handler_cr2:
                    entry.disagreements.append(f"CR2: #DF handler {handler_cr2:#x}, log {entry.regs.cr2:#x}")
                entry.regs.cr2 = handler_cr2
                entry.cr2_source = "the #DF handler's read of CR2 (its stack frame)"
            if entry.task is None:
                entry.task = crashed_task
        else:
            found[crashed_cpu if crashed_cpu is not None else -100] = FoundDf(
                crashed_cpu, crashed_task, Registers(), [DfSource.STACK_TRACE], trace=trace)
    return DfSearch([found[key] for key in sorted(found)], problems)
