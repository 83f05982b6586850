"""
Console-log analysis
--------------------

A console log in, a :class:`~dfforensics.core.model.Report` out: the parser finds
each #DF report, stack words quoted in the text go through the frame scanner,
and the verdict rules weigh each #DF. Pure: no drgn.
"""

from typing import Optional

from dfforensics.core import kernel_facts
from dfforensics.logs.consolelog import DfReport, LogFacts, parse_log
from dfforensics.core.frames import scan_frames, words_to_bytes
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import DfSource, DoubleFault, Frame, KernelInfo, Report, Verdict
from dfforensics.core.observation import Medium, Observation
from dfforensics.core.titles import title_and_key
from dfforensics.core.verdict import Decision, decide, decide_report, decide_unprinted_crash, strongest
from dfforensics.logs.textdump import parse_word_dumps

__all__ = ("analyze_log_text",)


def quoted_frames(text: str, version: Optional[Version]) -> list[Frame]:
    """Return the frames in stack words quoted in the text (crash ``rd``, gdb ``x``)."""
    encoding = kernel_facts.value_for(kernel_facts.ORIG_AX_ENCODING, version)
    frames = []
    for run in parse_word_dumps(text):
        frames.extend(scan_frames(words_to_bytes(run.words), run.start, encoding=encoding))
    return frames


def _observe(report: DfReport, facts: LogFacts, frames: list[Frame]) -> Observation:
    release = report.release or facts.release
    return Observation(
        medium=Medium.LOG,
        regs=report.regs,
        arch_bits=report.arch_bits,
        version=kernel_facts.parse_release(release) if release else None,
        environment=facts.environment,
        hypervisor=facts.hypervisor,
        paravirt=facts.paravirt,
        guard_page_hit=report.guard_page_hit,
        kernel_pointers=report.kernel_pointers,
        firmware_context=report.firmware_context,
        frames=frames,
        user_stack_problem="a console log holds no user stack memory",
        registers_missing=report.missing,
    )


def _double_fault(report: DfReport, decision: Decision) -> DoubleFault:
    return DoubleFault(
        verdict=decision.verdict,
        df_class=decision.df_class,
        summary=decision.summary,
        regs=report.regs,
        cpu=report.cpu,
        pid=report.pid,
        comm=report.comm,
        sources=[DfSource.LOG],
        header=report.header,
        log_line=report.line,
        call_trace=report.call_trace,
        evidence=decision.evidence,
    )


def analyze_log_text(text: str, path: str = "-", environment: Optional[str] = None) -> Report:
    """Analyse one console log and return its report.

    :param environment: ``"guest"`` or ``"bare-metal"`` when the user knows what
        the log does not say (old kernels print no ``Hardware name:``).

    A log can never prove the signature: the best verdict is ``possible``.
    """
    facts = parse_log(text)
    contradiction = None
    if environment is not None and facts.environment not in ("unknown", environment):
        contradiction = (f"--environment {environment} contradicts the log, which says "
                         f"{facts.environment}" + (f" ({facts.hypervisor})" if facts.hypervisor else "")
                         + (f", hardware name '{facts.hardware_name}'" if facts.hardware_name else "")
                         + ": the verdict follows what you stated")
    if environment is not None:
        facts.environment = environment
        facts.hypervisor = facts.hypervisor or "as the user stated"
    kernel = KernelInfo(
        release=facts.release,
        arch=("i386" if any(r.arch_bits == 32 for r in facts.reports) else "x86_64")
        if facts.reports else None,
        hardware_name=facts.hardware_name,
        environment=facts.environment,
        hypervisor=facts.hypervisor,
    )
    version = kernel_facts.parse_release(facts.release) if facts.release else None
    frames = quoted_frames(text, version)
    double_faults = [
        _double_fault(report, decide(_observe(report, facts, frames))) for report in facts.reports
    ]
    what = facts.other_crash[1] if facts.other_crash else "no crash"
    # A fragment (a header whose registers the log lost) cannot outvote a report
    # the log printed whole: it decides only when every report is a fragment.
    whole = [df for df, report in zip(double_faults, facts.reports) if report.missing is None]
    if not double_faults and facts.unprinted_crash:
        decision = decide_unprinted_crash(Medium.LOG, facts.unprinted_crash)
    else:
        decision = decide_report(Medium.LOG, whole or double_faults, what, None, kernel.release,
                                 version, None, paravirt=facts.paravirt)
    warnings = [contradiction] if contradiction else []
    if frames and double_faults:
        warnings.append(
            f"{len(frames)} frame(s) found in stack words quoted in the text; quoted memory "
            "cannot be checked against the dump it came from")
    if decision.verdict is Verdict.POSSIBLE:
        warnings.append("a console log can show the signature but not prove it: analyse the "
                        "vmcore with `dfforensics VMCORE VMLINUX` for a proof")
    deciding = whole or double_faults
    chosen = strongest(deciding) if deciding else None
    title, key = title_and_key(decision.verdict, decision.df_class, chosen, frames,
                               facts.unprinted_crash or what)
    return Report({"kind": "log", "path": path}, decision.verdict, decision.df_class,
                  decision.summary, kernel, double_faults, frames, decision.evidence, warnings,
                  explanation=decision.explanation, title=title, dedup_key=key)
