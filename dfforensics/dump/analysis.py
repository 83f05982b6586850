"""
Dump analysis
-------------

The pipeline for a dump, in order: open it (:mod:`~dfforensics.dump.opendump`),
find each #DF (:mod:`~dfforensics.dump.finddf`), read where its saved RSP lies
(:mod:`~dfforensics.dump.rspregion`), read the stacks and find frames
(:mod:`~dfforensics.dump.stackscan`), and hand each observation to the judge
(:mod:`~dfforensics.core.verdict`); the report is built once, from what the
judge decided. :func:`analyze` is the entry point for a drgn
:class:`~drgn.Program` (the drgn commands use it too).
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import drgn
from drgn import Object, Program
from drgn.helpers.linux.mm import vma_find

from dfforensics.core import kernel_facts, signature, x86
from dfforensics.core.annotate import annotate
from dfforensics.core.errors import ErrorKind, InputError
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import (
    AnnotatedWord, DoubleFault, Frame, KernelInfo, RegionKind, Report, RspRegion, StackKind, SweepResult,
)
from dfforensics.core.observation import Medium, Observation, PushSlot, Residency
from dfforensics.core.titles import title_and_key
from dfforensics.core.verdict import decide, decide_report, judge_sweep, strongest
from dfforensics.dump.context import confidential_guest, guest_context, kernel_version
from dfforensics.dump.finddf import FoundDf, find_double_faults
from dfforensics.dump.opendump import DUMP_LEVEL_USER_DATA, DUMP_LEVEL_ZERO_PAGES, open_dump, open_dump_from_guest
from dfforensics.dump.rspregion import kernel_stacks, rsp_region, thread_user_stack_pointers
from dfforensics.dump.stackscan import (
    StackRead, bounded_window, named, page_residency, scan_kernel_range, scan_user_range, symbolizer,
)
from dfforensics.dump.sweep import SweptUserStacks, sweep_user_stacks
from dfforensics.logs.consolelog import parse_log

__all__ = ("analyze", "analyze_vmcore_files")

# Words shown around the saved RSP and around each frame.
_RSP_WINDOW = (0x20, 0x40)
_FRAME_WINDOW = (0x10, 0x40)
# PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h, all eras).
_PID_MAX_LIMIT = 4 * 1024 * 1024

Namer = Callable[[int], Optional[str]]


def _dmesg(prog: Program) -> str:
    try:
        from drgn.helpers.linux.printk import get_dmesg
        return get_dmesg(prog).decode(errors="replace")
    except (LookupError, drgn.FaultError, ValueError):
        return ""


class _TaskIdentity(NamedTuple):
    pid: Optional[int]
    tid: Optional[int]
    comm: Optional[str]
    #: The task struct, when it reads as a task: only then is memory read through it.
    task: Optional[Object]
    warning: Optional[str] = None


def _task_identity(found: FoundDf) -> _TaskIdentity:
    """Who the #DF interrupted, and whether its task struct can be trusted."""
    task = found.task
    if task is None:
        return _TaskIdentity(None, None, None, None)
    try:
        tgid, pid = int(task.tgid), int(task.pid)
        comm = task.comm.string_().decode("ascii")
        if 0 <= tgid <= _PID_MAX_LIMIT and 0 <= pid <= _PID_MAX_LIMIT and comm.isprintable():
            return _TaskIdentity(tgid, pid, comm, task)
    except (drgn.FaultError, UnicodeDecodeError):
        pass
    logged = found.log_report
    warning = (f"#DF on CPU {found.cpu}: the task struct at {task.value_():#x} cannot be read from "
               "the dump or looks corrupt (implausible PID or name)"
               + (f"; the identity shown is the log's (PID {logged.pid}, {logged.comm})"
                  if logged is not None and logged.pid is not None else ""))
    if logged is not None:
        return _TaskIdentity(logged.pid, None, logged.comm, None, warning)
    return _TaskIdentity(None, None, None, None, warning)


def _user_stack_ranges(task: Object, region: Optional[RspRegion], rsp: Optional[int],
                       all_threads: bool) -> list[tuple[int, int, str, int]]:
    """The user stack mappings to scan: (start, end, name, around)."""
    ranges = []
    if region is not None and region.start is not None and x86.is_user_address(region.start):
        ranges.append((region.start, region.end, region.name or region.kind.value, rsp))
    if all_threads:
        try:
            mm = task.mm
            for tid, sp in sorted(thread_user_stack_pointers(task).items()):
                vma = vma_find(mm, sp)
                if vma and all(int(vma.vm_start) != start for start, _, _, _ in ranges):
                    ranges.append((int(vma.vm_start), int(vma.vm_end), f"stack of thread {tid}", sp))
        except drgn.FaultError:
            pass
    return ranges


def _read_stacks(prog: Program, found: FoundDf, task: Optional[Object], region: Optional[RspRegion],
                 encoding: Optional[str]) -> tuple[list[StackRead], list[StackRead]]:
    """Read the user stacks the #DF's task used, and its kernel stack where rule (iii) may look."""
    regs = found.regs
    user_reads: list[StackRead] = []
    kernel_reads: list[StackRead] = []
    if task is None:
        return user_reads, kernel_reads
    for start, end, name, around in _user_stack_ranges(task, region, regs.rsp, all_threads=False):
        low, high = bounded_window(start, end, around or start)
        user_reads.append(scan_user_range(task, low, high, name, encoding))
    kernel_rsp = regs.rsp is not None and x86.is_kernel_address(regs.rsp)
    nothing_yet = not any(f.consistent for read in user_reads for f in read.frames)
    if nothing_yet or kernel_rsp:
        for start, end, name, around in _user_stack_ranges(task, None, None, all_threads=True):
            if any(read.start <= around < read.end for read in user_reads):
                continue
            low, high = bounded_window(start, end, around)
            user_reads.append(scan_user_range(task, low, high, name, encoding))
    if kernel_rsp or (regs.cs is not None and regs.ss is not None
                      and signature.kernel_cs_with_foreign_ss(regs.cs, regs.ss)):
        for stack in kernel_stacks(task, found.cpu, prog):
            if stack.kind is RegionKind.KERNEL_TASK_STACK:
                kernel_reads.append(scan_kernel_range(prog, stack.start, stack.end, stack.name, encoding))
    return user_reads, kernel_reads


def _proving_frames(reads: Sequence[StackRead], name: Namer) -> list[Frame]:
    return [named(f, name) for read in reads for f in read.frames if signature.proves_cpl0_delivery(f)]


def _user_stack_problem(reads: list[StackRead]) -> Optional[str]:
    if not reads:
        return "no user stack mapping to read"
    present = sum(read.pages_present for read in reads)
    missing = sum(read.pages_missing for read in reads)
    if present == 0 and missing:
        return (f"none of the user stack could be read: {missing} page(s) are not in the dump or "
                "sit behind page tables the dump lacks (makedumpfile dump levels with bit 8 drop "
                "user pages, exactly the evidence needed)")
    if present == 0:
        return "no page of the user stack is resident in the task"
    if missing:
        return f"{missing} user stack page(s) could not be read from the dump"
    return None


def _push_slot(task: Optional[Object], rsp: Optional[int]) -> Optional[PushSlot]:
    """The CPU's first push slot below a user RSP, and whether its page is present."""
    if task is None or rsp is None or not x86.is_plausible_user_pointer(rsp):
        return None
    slot = x86.first_push_slot(rsp)
    try:
        return PushSlot(slot, page_residency(task.mm, slot))
    except drgn.FaultError:
        return PushSlot(slot, Residency.UNREADABLE)


def _kernel_pointers(task: Optional[Object], found: FoundDf) -> list[int]:
    pointers = []
    if task is not None:
        try:
            pointers = [task.value_(), int(task.stack)]
        except drgn.FaultError:
            pass
    return pointers + [v for v in found.regs.others.values() if x86.is_kernel_address(v)]


def _window_words(reads: Sequence[StackRead], centres: list[tuple[int, tuple[int, int]]]) -> dict[int, Optional[int]]:
    words: dict[int, Optional[int]] = {}
    for centre, (below, above) in centres:
        for read in reads:
            if not read.start <= centre <= read.end:
                continue
            for address in range(max(read.start, centre - below), min(read.end, centre + above), 8):
                words[address] = read.word(address)
    return words


def _annotated(reads: Sequence[StackRead], frames: Sequence[Frame], name: Namer,
               rsp: Optional[int] = None, cr2: Optional[int] = None) -> list[AnnotatedWord]:
    """The user stack words around the saved RSP (when given) and around each frame."""
    user = [f for f in frames if f.stack is StackKind.USER]
    centres = [(f.address, _FRAME_WINDOW) for f in user[:8]]
    marks = {}
    if rsp is not None:
        if x86.is_user_address(rsp):
            centres.insert(0, (rsp & ~7, _RSP_WINDOW))
        marks[rsp & ~7] = "<- RSP saved at the #DF"
        marks.setdefault(x86.first_push_slot(rsp), "first push slot below that RSP"
                         + (" = CR2" if signature.cr2_at_first_push_slot(cr2, rsp) else ""))
    return annotate(_window_words(reads, centres), user, name, marks or None)


class _ObservedDf(NamedTuple):
    """One #DF as the dump shows it, before the judge weighs it."""

    found: FoundDf
    identity: _TaskIdentity
    observation: Observation
    frames: list[Frame]
    annotated_words: list[AnnotatedWord]
    warnings: list[str]


def _medium(prog: Program) -> Medium:
    """A dump, or a running guest (drgn's IS_LIVE: read over QMP while it runs)."""
    return Medium.LIVE if prog.flags & drgn.ProgramFlags.IS_LIVE else Medium.MEMORY


def _observe_double_fault(prog: Program, found: FoundDf, kernel: KernelInfo, version: Optional[Version],
                          encoding: Optional[str], user_pages_excluded: bool,
                          confidential: Optional[str] = None, paravirt: Optional[str] = None) -> _ObservedDf:
    regs = found.regs
    identity = _task_identity(found)
    task = identity.task
    region = rsp_region(prog, task, found.cpu, regs.rsp) if regs.rsp is not None else None
    user_reads, kernel_reads = _read_stacks(prog, found, task, region, encoding)
    name = symbolizer(prog, task)
    if regs.rip is not None and regs.rip_symbol is None and x86.is_user_address(regs.rip):
        # The frames name user RIPs by mapping (/victim+0x17c7): so does the register table.
        regs = dataclasses.replace(regs, rip_symbol=name(regs.rip))
    frames = _proving_frames(user_reads, name) + _proving_frames(kernel_reads, name)
    report = found.log_report
    guard = (report is not None and report.kind == "stack-overflow") or any(
        "handle_stack_overflow" in entry for entry in found.trace)
    observation = Observation(
        medium=_medium(prog), regs=regs, version=version, environment=kernel.environment,
        hypervisor=kernel.hypervisor, guard_page_hit=guard, kernel_pointers=_kernel_pointers(task, found),
        rsp_region=region, frames=frames,
        user_stack_read=any(read.pages_present for read in user_reads),
        user_stack_problem=_user_stack_problem(user_reads), user_pages_excluded=user_pages_excluded,
        push_slot=_push_slot(task, regs.rsp), cr2_source=found.cr2_source,
        confidential_guest=confidential, paravirt=paravirt,
    )
    warnings = [identity.warning] if identity.warning else []
    warnings += [f"{read.name} {read.start:#x}-{read.end:#x}: {read.pages_missing} page(s) could not be "
                 "read (left out by the dump level, the dump is cut, or the page tables reaching them "
                 "are not in the dump)" for read in user_reads if read.pages_missing]
    warnings += [f"#DF on CPU {found.cpu}: sources disagree: {d}" for d in found.disagreements]
    warnings += filter(None, [_module_without_debug_info(prog, regs.rip, regs.rip_symbol)])
    words = _annotated(user_reads, frames, name, regs.rsp, regs.cr2)
    return _ObservedDf(found, identity, observation, frames, words, warnings)


def _module_without_debug_info(prog: Program, rip: Optional[int], symbol: Optional[str]) -> Optional[str]:
    """A hint when the #DF's RIP is in a module whose debug info was not given."""
    if rip is None or symbol is not None or not x86.is_kernel_address(rip):
        return None
    module = None
    try:
        module = prog.module(rip)
    except LookupError:
        # drgn creates module objects as it enumerates them; without any debug info
        # to load, nothing has enumerated the loaded modules yet.
        try:
            module = next((m for m, _ in prog.loaded_modules()
                           if any(start <= rip < end for start, end in [m.address_range or (0, 0)])), None)
        except (LookupError, ValueError, drgn.FaultError):
            return None
    if module is None or module.name == "kernel":
        return None
    return (f"RIP {rip:#x} is in module {module.name}, loaded without its debug info: give "
            f"--module-debuginfo {module.name}.ko (or its .debug file) to name the function")


def _double_fault(observed: _ObservedDf) -> DoubleFault:
    decision = decide(observed.observation)
    found, identity, report = observed.found, observed.identity, observed.found.log_report
    return DoubleFault(
        verdict=decision.verdict, df_class=decision.df_class, summary=decision.summary,
        regs=observed.observation.regs, cpu=found.cpu, pid=identity.pid, tid=identity.tid, comm=identity.comm,
        rsp_region=observed.observation.rsp_region, sources=found.sources,
        header=report.header if report else None, log_line=report.line if report else None,
        call_trace=found.trace or (report.call_trace if report else []), evidence=decision.evidence,
    )


def _stack_problems(problems: list[str], dump_level: Optional[int]) -> list[str]:
    if dump_level is None or not dump_level & DUMP_LEVEL_ZERO_PAGES:
        return problems
    # Such a dump leaves out all-zero pages: a CPU that never took a #DF
    # has an all-zero #DF stack, so its absence is what "no #DF" looks like.
    return [f"{problem}; with dump level {dump_level} (bit 1 leaves out zero pages) that means the "
            "stack was all zeros: no #DF on that CPU" for problem in problems]


def _merged_frames(observed: Sequence[_ObservedDf], swept: Optional[SweptUserStacks]) -> list[Frame]:
    """Every frame once: the #DFs' first (as the sweep saw them, with their task), then the sweep's."""
    by_sweep = {f.address: f for f in swept.observation.frames} if swept is not None else {}
    frames: list[Frame] = []
    for df in observed:
        frames += [by_sweep.get(f.address, f) for f in df.frames
                   if all(f.address != g.address for g in frames)]
    known = {f.address for f in frames}
    return frames + [f for f in by_sweep.values() if f.address not in known]


def analyze(prog: Program, source: Optional[dict[str, Any]] = None, sweep: Optional[bool] = None,
            notes: Sequence[str] = ()) -> Report:
    """Analyse a Linux x86_64 crash dump (or live kernel) for the CPL-corruption signature.

    Supports x86_64 kernels from 3.x on (per-CPU TSS names and IST layouts of
    every era, see :mod:`dfforensics.core.kernel_facts`).

    :param source: what to record as the input (path, vmlinux, ...).
    :param sweep: scan every task's user stack too: always (True), never
        (False), or when no double fault is found (None, the default).
    :param notes: what opening the input did that the reader should know.
    :return: the report: verdict, double faults, frames, evidence.
    """
    source = dict(source or {"kind": "program"})
    version = kernel_version(prog)
    log = parse_log(_dmesg(prog))
    kernel = guest_context(prog, log)
    encoding = kernel_facts.value_for(kernel_facts.ORIG_AX_ENCODING, version)
    search = find_double_faults(prog, log.reports, version)
    dump_level = source.get("dump_level")
    user_pages_excluded = dump_level is not None and bool(dump_level & DUMP_LEVEL_USER_DATA)
    warnings = list(notes) + _stack_problems(search.problems, dump_level)
    if search.found and user_pages_excluded:
        warnings.append(f"dump level {dump_level} excludes user pages (makedumpfile -d bit 8): user "
                        "stacks, where frames pushed at CPL 0 would be, are not in this dump")
    confidential = confidential_guest(prog)
    # The guest's own log says whether it is a paravirtual kernel (Xen PV, PVM).
    observed = [_observe_double_fault(prog, found, kernel, version, encoding, user_pages_excluded,
                                      confidential, log.paravirt)
                for found in search.found]
    double_faults = [_double_fault(df) for df in observed]
    warnings += [warning for df in observed for warning in df.warnings]
    run_sweep = sweep is True or (sweep is None and not search.found)
    swept = sweep_user_stacks(prog, version) if run_sweep else None
    sweep_result: Optional[SweepResult] = judge_sweep(swept.observation) if swept is not None else None
    if sweep_result is not None:
        warnings += sweep_result.problems[:20]
    # The log parser looks for every panic drgn's panic_message() knows, and more.
    other_crash = log.other_crash[1] if log.other_crash else "no panic message"
    decision = decide_report(_medium(prog), double_faults, other_crash, sweep_result, kernel.release,
                             version, kernel.cpu_vendor, confidential_guest=confidential,
                             sweep_requested=sweep is True, paravirt=log.paravirt)
    words = next((df.annotated_words for df in observed if df.annotated_words), [])
    if not words and swept is not None and swept.observation.frames:
        words = _annotated(swept.reads_with_frames, swept.observation.frames, symbolizer(prog, None))
    frames = _merged_frames(observed, swept)
    chosen = strongest(double_faults) if double_faults else None
    title, key = title_and_key(decision.verdict, decision.df_class, chosen, frames, other_crash)
    return Report(source, decision.verdict, decision.df_class, decision.summary, kernel, double_faults,
                  frames, decision.evidence, warnings, words, decision.explanation, sweep_result,
                  title=title, dedup_key=key)


def analyze_vmcore_files(vmcore: str, vmlinux: Optional[str] = None, module_debuginfo: Sequence[str] = (),
                         sweep: Optional[bool] = None, btf: Optional[str] = None) -> Report:
    """Open a dump with its debug info and analyse it.

    :param vmlinux: the debug vmlinux; None reads types from the guest's BTF (or
        ``btf``, a detached BTF file) and symbols from its kallsyms.
    :raises InputError: on unusable inputs (one line for the user).
    """
    if vmlinux is None:
        if module_debuginfo:
            raise InputError("--module-debuginfo needs VMLINUX: module debug info is DWARF")
        opened = open_dump_from_guest(vmcore, btf)
    else:
        opened = open_dump(vmcore, vmlinux, module_debuginfo)
    source = {"kind": "vmcore", "path": vmcore, "vmlinux": vmlinux, "format": opened.format,
              "dump_level": opened.dump_level, "vmcoreinfo": opened.vmcoreinfo_source,
              "debug_info": opened.debug_info}
    try:
        report = analyze(opened.prog, source, sweep, opened.notes)
    except drgn.FaultError as error:
        raise InputError(f"VMCORE {vmcore}: memory the analysis needs is missing or corrupt "
                         f"({error})", ErrorKind.CORRUPT_DUMP) from None
    if vmlinux is None:
        from dfforensics.dump.guestdebuginfo import keep_answers

        keep_answers(opened.prog)
    return report
