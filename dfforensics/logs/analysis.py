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
from dfforensics.core.model import DoubleFault, Frame, KernelInfo, Report, Verdict
from dfforensics.logs.textdump import parse_word_dumps
from dfforensics.core.verdict import Decision, Observation, decide, decide_no_double_fault, explain, strongest

__all__ = ("analyze_log_text",)


def quoted_frames(text: str, release: Optional[str]) -> list[Frame]:
    """Return the frames in stack words quoted in the text (crash ``rd``, gdb ``x``)."""
    version = kernel_facts.parse_release(release) if release else None
    encodings = kernel_facts.facts_for(kernel_facts.ORIG_AX_ENCODING, version)
    encoding = encodings[0].value if version is not None and encodings else None
    frames = []
    for run in parse_word_dumps(text):
        frames.extend(scan_frames(words_to_bytes(run.words), run.start, encoding=encoding))
    return frames


def _observe(report: DfReport, facts: LogFacts, frames: list[Frame]) -> Observation:
    return Observation(
        source="log",
        regs=report.regs,
        arch_bits=report.arch_bits,
        release=report.release or facts.release,
        environment=facts.environment,
        hypervisor=facts.hypervisor,
        guard_page_hit=report.guard_page_hit,
        kernel_pointers=report.kernel_pointers,
        firmware_context=report.firmware_context,
        frames=frames,
        user_stack_problem="a console log holds no user stack memory",
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
        sources=["log"],
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
    frames = quoted_frames(text, facts.release)
    source = {"kind": "log", "path": path}
    if not facts.reports:
        what = facts.other_crash[1] if facts.other_crash else "no crash"
        decision = decide_no_double_fault("log", what)
        return Report(source, decision.verdict, None, decision.summary, kernel,
                      frames=frames, evidence=decision.evidence)
    double_faults = [
        _double_fault(report, decide(_observe(report, facts, frames))) for report in facts.reports
    ]
    chosen = strongest(double_faults)
    warnings = []
    if frames:
        warnings.append(
            f"{len(frames)} frame(s) found in stack words quoted in the text; quoted memory "
            "cannot be checked against the dump it came from")
    if chosen.verdict is Verdict.POSSIBLE:
        warnings.append("a console log can show the signature but not prove it: analyse the "
                        "vmcore with `dfforensics VMCORE VMLINUX` for a proof")
    return Report(source, chosen.verdict, chosen.df_class, chosen.summary, kernel,
                  double_faults, frames, chosen.evidence, warnings,
                  explanation=explain(chosen.df_class, kernel.release, None))
