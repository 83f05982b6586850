"""
Dump analysis
-------------

The pipeline for a dump, in order: open it (:mod:`~dfforensics.dump.opendump`),
find each #DF (:mod:`~dfforensics.dump.finddf`), classify its saved RSP
(:mod:`~dfforensics.dump.rspregion`), scan the stacks for frames
(:mod:`~dfforensics.dump.stackscan`), weigh the evidence
(:mod:`~dfforensics.core.verdict`), and fill the one result model that every
output renders from. :func:`analyze` is the entry point for a drgn
:class:`~drgn.Program` (the drgn commands use it too).
"""

from typing import Any, Optional, Sequence

import drgn
from drgn import Object, Program
from drgn.helpers.linux.mm import vma_find

from dfforensics.core import x86
from dfforensics.core.annotate import annotate
from dfforensics.logs.consolelog import parse_log
from dfforensics.dump.context import guest_context
from dfforensics.dump.finddf import FoundDf, find_double_faults
from dfforensics.core.model import DfClass, DoubleFault, Evidence, Frame, Report, RspRegion, Status
from dfforensics.core.errors import InputError
from dfforensics.dump.opendump import DUMP_LEVEL_USER_DATA, DUMP_LEVEL_ZERO_PAGES, open_dump
from dfforensics.dump.rspregion import classify_rsp, kernel_stack_ranges, thread_user_stack_pointers
from dfforensics.dump.sweep import sweep_evidence, sweep_user_stacks
from dfforensics.dump.stackscan import (
    StackRead, page_residency, bounded_window, orig_ax_encoding, scan_kernel_range, scan_user_range, symbolizer,
)
from dfforensics.core.verdict import Observation, decide, decide_no_double_fault, explain, strongest

__all__ = ("analyze", "analyze_vmcore_files")

# Words shown around the saved RSP and around each frame.
_RSP_WINDOW = (0x20, 0x40)
_FRAME_WINDOW = (0x10, 0x40)


def _dmesg(prog: Program) -> str:
    try:
        from drgn.helpers.linux.printk import get_dmesg
        return get_dmesg(prog).decode(errors="replace")
    except (LookupError, drgn.FaultError, ValueError):
        return ""


# PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h, all eras).
_PID_MAX_LIMIT = 4 * 1024 * 1024


def _task_identity(task: Optional[Object]) -> tuple[Optional[int], Optional[int], Optional[str]]:
    """(tgid, pid, comm) of a task, or Nones when it cannot be read or is not a task."""
    if task is None:
        return None, None, None
    try:
        tgid, pid = int(task.tgid), int(task.pid)
        comm = task.comm.string_().decode("ascii")
    except (drgn.FaultError, UnicodeDecodeError):
        return None, None, None
    if not (0 <= tgid <= _PID_MAX_LIMIT and 0 <= pid <= _PID_MAX_LIMIT and comm.isprintable()):
        return None, None, None
    return tgid, pid, comm


def _user_stack_ranges(task: Object, region: Optional[RspRegion], rsp: Optional[int],
                       all_threads: bool) -> list[tuple[int, int, str, int]]:
    """The user stack mappings to scan: (start, end, name, around)."""
    ranges = []
    if region is not None and region.start is not None and x86.is_user_address(region.start):
        ranges.append((region.start, region.end, region.name or region.kind, rsp))
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


def _scan(prog: Program, found: FoundDf, region: Optional[RspRegion],
          encoding: Optional[str]) -> tuple[list[StackRead], list[StackRead]]:
    task, regs = found.task, found.regs
    user_reads: list[StackRead] = []
    kernel_reads: list[StackRead] = []
    if task is None:
        return user_reads, kernel_reads
    own = _user_stack_ranges(task, region, regs.rsp, all_threads=False)
    for start, end, name, around in own:
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
    if kernel_rsp or (regs.cs == x86.KERNEL_CS and regs.ss not in x86.HEALTHY_KERNEL_SS):
        for start, end, kind, name in kernel_stack_ranges(task, found.cpu, prog):
            if kind == "kernel-task-stack":
                kernel_reads.append(scan_kernel_range(prog, start, end, name, encoding))
    return user_reads, kernel_reads


def _evidence_frames(user_reads: list[StackRead], kernel_reads: list[StackRead]) -> list[Frame]:
    frames = [f for read in user_reads for f in read.frames if f.consistent or f.impossible_ss]
    frames += [f for read in kernel_reads for f in read.frames if f.impossible_ss]
    return frames


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


def _push_slot_page_status(found: FoundDf, user_pages_excluded: bool) -> Optional[Evidence]:
    """Whether the page of the CPU's first push slot below a user RSP is present."""
    rsp = found.regs.rsp
    if found.task is None or rsp is None or not x86.is_plausible_user_pointer(rsp):
        return None
    slot = x86.first_push_slot(rsp)
    try:
        residency = page_residency(found.task.mm, slot)
    except drgn.FaultError:
        residency = "unreadable"
    if residency == "unreadable":
        return Evidence("push-slot-page-not-present", Status.UNKNOWN,
                        f"the page tables (or the task) that say whether {slot:#x} is mapped "
                        "cannot be read from the dump")
    if residency == "not-resident":
        return Evidence("push-slot-page-not-present", Status.PASS,
                        f"the page of the first push slot {slot:#x} is not present in the task's "
                        "page tables: a push there faults, as the #DF's did")
    return Evidence("push-slot-page-not-present", Status.FAIL,
                    f"the page of the first push slot {slot:#x} is present: a push there would "
                    "not have faulted (unless it was mapped after the #DF)")


def _window_words(reads: list[StackRead], centres: list[tuple[int, tuple[int, int]]]) -> dict[int, Optional[int]]:
    words: dict[int, Optional[int]] = {}
    for centre, (below, above) in centres:
        for read in reads:
            if not read.start <= centre <= read.end:
                continue
            for address in range(max(read.start, centre - below), min(read.end, centre + above), 8):
                words[address] = read.word(address)
    return words


def _annotated_frames(reads: list[StackRead], frames: list[Frame], name) -> list:
    user = [f for f in frames if f.stack == "user"]
    return annotate(_window_words(reads, [(f.address, _FRAME_WINDOW) for f in user[:8]]), user, name)


def _annotated(found: FoundDf, user_reads: list[StackRead], frames: list[Frame], name) -> list:
    regs = found.regs
    centres = [(f.address, _FRAME_WINDOW) for f in frames if f.stack == "user"][:8]
    if regs.rsp is not None and x86.is_user_address(regs.rsp):
        centres.insert(0, (regs.rsp & ~7, _RSP_WINDOW))
    words = _window_words(user_reads, centres)
    marks = {}
    if regs.rsp is not None:
        marks[regs.rsp & ~7] = "<- RSP saved at the #DF"
        marks.setdefault(x86.first_push_slot(regs.rsp), "first push slot below that RSP"
                         + (" = CR2" if regs.cr2 == x86.first_push_slot(regs.rsp) else ""))
    return annotate(words, [f for f in frames if f.stack == "user"], name, marks)


def _double_fault(prog: Program, found: FoundDf, kernel, encoding, warnings: list[str],
                  user_pages_excluded: bool = False):
    regs = found.regs
    pid, tid, comm = _task_identity(found.task)
    if found.task is not None and pid is None:
        logged = found.log_report
        warnings.append(f"#DF on CPU {found.cpu}: the task struct at {found.task.value_():#x} "
                        "cannot be read from the dump or looks corrupt (implausible PID or name)"
                        + (f"; the identity shown is the log's (PID {logged.pid}, {logged.comm})"
                           if logged is not None and logged.pid is not None else ""))
        if logged is not None:
            pid, comm = logged.pid, logged.comm
        found.task = None  # nothing read through it can be trusted
    region = classify_rsp(prog, found.task, found.cpu, regs.rsp) if regs.rsp is not None else None
    user_reads, kernel_reads = _scan(prog, found, region, encoding)
    frames = _evidence_frames(user_reads, kernel_reads)
    name = symbolizer(prog, found.task)
    for frame in frames:
        frame.rip_symbol = name(frame.rip)
    report = found.log_report
    guard = (report is not None and report.kind == "stack-overflow") or any(
        "handle_stack_overflow" in entry for entry in found.trace)
    kernel_pointers = []
    if found.task is not None:
        try:
            kernel_pointers = [found.task.value_(), int(found.task.stack)]
        except drgn.FaultError:
            pass
    kernel_pointers += [v for v in regs.others.values() if x86.is_kernel_address(v)]
    problem = _user_stack_problem(user_reads)
    decision = decide(Observation(
        source="memory", regs=regs, release=kernel.release, environment=kernel.environment,
        hypervisor=kernel.hypervisor, guard_page_hit=guard, kernel_pointers=kernel_pointers,
        rsp_region=region, frames=frames,
        user_stack_read=any(read.pages_present for read in user_reads), user_stack_problem=problem,
        user_pages_excluded=user_pages_excluded,
    ))
    for read in user_reads:
        if read.pages_missing:
            warnings.append(f"{read.name} {read.start:#x}-{read.end:#x}: {read.pages_missing} "
                            "page(s) could not be read (left out by the dump level, the dump is cut, "
                            "or the page tables reaching them are not in the dump)")
    warnings.extend(f"#DF on CPU {found.cpu}: sources disagree: {d}" for d in found.disagreements)
    push_page = _push_slot_page_status(found, user_pages_excluded)
    if push_page is not None:
        decision.evidence.append(push_page)
    if found.cr2_source:
        decision.evidence.append(Evidence("cr2-source", Status.PASS if regs.cr2 is not None
                                          else Status.UNKNOWN, f"CR2 from {found.cr2_source}"))
    df = DoubleFault(
        verdict=decision.verdict, df_class=decision.df_class, summary=decision.summary, regs=regs,
        cpu=found.cpu, pid=pid, tid=tid, comm=comm, rsp_region=region, sources=found.sources,
        header=report.header if report else None, log_line=report.line if report else None,
        call_trace=found.trace or (report.call_trace if report else []), evidence=decision.evidence,
    )
    return df, frames, _annotated(found, user_reads, frames, name)


def analyze(prog: Program, source: Optional[dict[str, Any]] = None,
            sweep: Optional[bool] = None) -> Report:
    """Analyse a Linux x86_64 crash dump (or live kernel) for the CPL-corruption signature.

    Supports x86_64 kernels from 3.x on (per-CPU TSS names and IST layouts of
    every era, see :mod:`dfforensics.core.kernel_facts`).

    :param source: what to record as the input (path, vmlinux, ...).
    :param sweep: scan every task's user stack too: always (True), never
        (False), or when no double fault is found (None, the default).
    :return: the report: verdict, double faults, frames, evidence.
    """
    source = dict(source or {"kind": "program"})
    kernel = guest_context(prog)
    log = parse_log(_dmesg(prog))
    if kernel.environment == "unknown" and log.environment != "unknown":
        kernel.environment, kernel.hypervisor = log.environment, log.hypervisor
    kernel.hardware_name = log.hardware_name
    encoding = orig_ax_encoding(prog)
    warnings: list[str] = list(source.pop("notes", []))
    problems: list[str] = []
    found_all = find_double_faults(prog, log.reports, problems)
    dump_level = source.get("dump_level")
    if dump_level is not None and dump_level & DUMP_LEVEL_ZERO_PAGES:
        # Such a dump leaves out all-zero pages: a CPU that never took a #DF
        # has an all-zero #DF stack, so its absence is what "no #DF" looks like.
        problems = [f"{problem}; with dump level {dump_level} (bit 1 leaves out zero pages) "
                    "that means the stack was all zeros: no #DF on that CPU" for problem in problems]
    warnings.extend(problems)
    if not found_all:
        # The log parser looks for every panic drgn's panic_message() knows, and more.
        what = log.other_crash[1] if log.other_crash else "no panic message"
        decision = decide_no_double_fault("dump", what)
        report = Report(source, decision.verdict, None, decision.summary, kernel,
                        evidence=decision.evidence, warnings=warnings)
        if sweep is not False:
            _attach_sweep(prog, report, headline=True)
        return report
    double_faults, frames, words = [], [], []
    user_pages_excluded = dump_level is not None and bool(dump_level & DUMP_LEVEL_USER_DATA)
    if user_pages_excluded:
        warnings.append(f"dump level {dump_level} excludes user pages (makedumpfile -d bit 8): user "
                        "stacks, where frames pushed at CPL 0 would be, are not in this dump")
    for found in found_all:
        df, df_frames, df_words = _double_fault(prog, found, kernel, encoding, warnings,
                                                user_pages_excluded)
        double_faults.append(df)
        frames.extend(f for f in df_frames if all(f.address != g.address for g in frames))
        if not words:
            words = df_words
    chosen = strongest(double_faults)
    report = Report(source, chosen.verdict, chosen.df_class, chosen.summary, kernel, double_faults,
                    frames, chosen.evidence, warnings, words,
                    explain(chosen.df_class, kernel.release, kernel.cpu_vendor))
    if sweep:
        _attach_sweep(prog, report, headline=False)
    return report


def _attach_sweep(prog: Program, report: Report, headline: bool) -> None:
    reads: list[StackRead] = []
    result = sweep_user_stacks(prog, reads)
    report.sweep = result
    known = {f.address: f for f in report.frames}
    for frame in result.frames:
        if frame.address in known:
            known[frame.address].pid, known[frame.address].tid = frame.pid, frame.tid
        else:
            report.frames.append(frame)
    report.evidence.append(sweep_evidence(result))
    report.warnings.extend(result.problems[:20])
    if headline and result.verdict == "cpl0-frames-found":
        tasks = len({(f.pid, f.tid) for f in result.frames})
        report.summary = (f"no double fault, but {len(result.frames)} CPU-pushed frame(s) on user "
                          f"stacks of {tasks} task(s) prove CPL-0 event delivery")
        report.explanation = explain(DfClass.CPL_CORRUPTION, report.kernel.release,
                                     report.kernel.cpu_vendor)
    if not report.annotated_words and result.frames:
        report.annotated_words = _annotated_frames(reads, result.frames, symbolizer(prog, None))


def analyze_vmcore_files(vmcore: str, vmlinux: str, module_debuginfo: Sequence[str] = (),
                         sweep: Optional[bool] = None) -> Report:
    """Open a dump with its debug info and analyse it.

    :raises InputError: on unusable inputs (one line for the user).
    """
    opened = open_dump(vmcore, vmlinux, module_debuginfo)
    source = {"kind": "vmcore", "path": vmcore, "vmlinux": vmlinux, "format": opened.format,
              "dump_level": opened.dump_level, "vmcoreinfo": opened.vmcoreinfo_source,
              "notes": opened.notes}
    try:
        return analyze(opened.prog, source, sweep)
    except drgn.FaultError as error:
        raise InputError(f"VMCORE {vmcore}: memory the analysis needs is missing or corrupt "
                         f"({error})") from None
