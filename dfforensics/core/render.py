"""
Rendering
---------

Every output is rendered from one :class:`~dfforensics.core.model.Report`: a text
table for terminals (the default), JSON for programs, markdown for bug
reports. Pure: no drgn.
"""

import functools
from typing import Callable, Final, Optional, Sequence

from dfforensics.core import signature, x86
from dfforensics.core.model import DoubleFault, Frame, Report, Status, to_json_dict

__all__ = ("FORMATS", "render", "render_many")

_STATUS_MARK: Final = {Status.PASS: "pass", Status.FAIL: "fail", Status.UNKNOWN: "unknown"}


def _hex(value: Optional[int], width: int = 16) -> str:
    return "-" if value is None else f"{value:0{width}x}"


def _selector(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:04x} ({x86.selector_name(value)})"


def _register_rows(df: DoubleFault) -> list[list[str]]:
    regs = df.regs
    rows = [
        ["RIP", _hex(regs.rip), regs.rip_symbol or ""],
        ["CS", _selector(regs.cs), "user mode (RPL 3)" if regs.cs is not None and regs.cs & 3 == 3
         else ("kernel mode" if regs.cs is not None else "")],
        ["RFLAGS", _hex(regs.rflags, 8), x86.rflags_names(regs.rflags) if regs.rflags is not None else ""],
        ["RSP", _hex(regs.rsp), df.rsp_region.detail if df.rsp_region else ""],
        ["SS", _selector(regs.ss), ""],
        ["CR2", _hex(regs.cr2),
         "= first push slot below RSP" if signature.cr2_at_first_push_slot(regs.cr2, regs.rsp) else ""],
        ["error code", _hex(regs.error_code, 1), ""],
    ]
    return rows


def _frame_rows(frames: Sequence[Frame]) -> list[list[str]]:
    return [
        [
            f"{frame.address:016x}",
            frame.kind.value,
            "-" if frame.vector is None else f"{frame.vector:#04x}",
            f"{frame.rip:016x}" + (f" {frame.rip_symbol}" if frame.rip_symbol else ""),
            f"{frame.cs:#04x}",
            f"{frame.rflags:#x}",
            f"{frame.rsp:016x}",
            f"{frame.ss:#04x}",
            "yes" if frame.consistent else "no",
        ]
        for frame in frames
    ]


_FRAME_HEADERS: Final = ["address", "kind", "vector", "RIP", "CS", "RFLAGS", "RSP", "SS", "consistent"]


def _df_title(df: DoubleFault, index: int) -> str:
    who = []
    if df.cpu is not None:
        who.append(f"CPU {df.cpu}")
    if df.pid is not None:
        who.append(f"PID {df.pid}" + (f" TID {df.tid}" if df.tid not in (None, df.pid) else ""))
    if df.comm:
        who.append(f"comm {df.comm}")
    where = f" (log line {df.log_line})" if df.log_line else ""
    return (f"Double fault #{index}{where}: {df.verdict.value}"
            + (f" / {df.df_class.value}" if df.df_class else "")
            + (f" — {', '.join(who)}" if who else "")
            + (f" [sources: {', '.join(source.value for source in df.sources)}]" if df.sources else ""))


def _sections(report: Report, tablefmt: str) -> list[tuple[str, str]]:
    # Importing tabulate costs 3 ms (more with wcwidth installed): paid only by the
    # table renderings, not by JSON output or triage workers.
    from tabulate import tabulate as _tabulate

    # Cells are shown as the analysis wrote them: no number parsing (which would
    # realign and could reformat them, and costs a type guess per cell).
    tabulate = functools.partial(_tabulate, disable_numparse=True)

    sections: list[tuple[str, str]] = []
    kernel = report.kernel
    context = [
        ["input", f"{report.source.get('kind')}: {report.source.get('path')}"],
        ["kernel release", kernel.release or "unknown"],
        ["architecture", kernel.arch or "unknown"],
        ["environment", kernel.environment + (f" ({kernel.hypervisor})" if kernel.hypervisor else "")],
    ]
    if kernel.hardware_name:
        context.append(["hardware name", kernel.hardware_name])
    for label, value in (("CPUs", kernel.cpus), ("CPU vendor", kernel.cpu_vendor),
                         ("CPU model", kernel.cpu_model), ("uptime (s)", kernel.uptime_seconds),
                         ("AMD SYSRET SS workaround", kernel.sysret_ss_workaround)):
        if value is not None:
            context.append([label, str(value)])
    for key, value in report.source.items():
        if key not in ("kind", "path"):
            context.append([key, str(value)])
    sections.append(("Context", tabulate(context, tablefmt=tablefmt)))
    for index, df in enumerate(report.double_faults, 1):
        body = df.summary + "\n" + (f"header: {df.header}\n" if df.header else "")
        body += tabulate(_register_rows(df), headers=["register", "value", "meaning"], tablefmt=tablefmt)
        if df.call_trace:
            body += "\ncall trace: " + " ".join(df.call_trace[:24])
        sections.append((_df_title(df, index), body))
    if report.sweep is not None:
        sweep = report.sweep
        body = (f"{sweep.verdict.value}: {sweep.summary}\n"
                f"tasks scanned {sweep.tasks_scanned}, unreadable {sweep.tasks_unreadable}; "
                f"stack pages read {sweep.pages_present}, missing {sweep.pages_missing}\n")
        rows = [[s.pid, s.tid, s.comm, s.mapping, f"{s.start:x}-{s.end:x}", s.pages_present,
                 s.pages_missing, len(s.frame_addresses)]
                for s in sweep.stacks if s.frame_addresses or s.pages_missing]
        if rows:
            body += tabulate(rows, headers=["pid", "tid", "comm", "stack mapping", "range",
                                            "pages", "missing", "frames"], tablefmt=tablefmt)
        sections.append(("Sweep of every user stack", body))
    if report.frames:
        sections.append((f"Frames ({len(report.frames)})",
                         tabulate(_frame_rows(report.frames), headers=_FRAME_HEADERS, tablefmt=tablefmt)))
    if report.annotated_words:
        rows = [[f"{w.address:016x}", _hex(w.value), w.note] for w in report.annotated_words]
        sections.append(("Annotated stack", tabulate(rows, headers=["address", "value", "what it is"],
                                                     tablefmt=tablefmt)))
    if report.evidence:
        rows = [[e.check, _STATUS_MARK[e.status], e.detail] for e in report.evidence]
        sections.append(("Evidence", tabulate(rows, headers=["check", "status", "detail"],
                                              tablefmt=tablefmt, maxcolwidths=[None, None, 90])))
    if report.explanation:
        sections.append(("What this means", "\n".join(f"- {line}" for line in report.explanation)))
    if report.warnings:
        sections.append(("Warnings", "\n".join(f"- {w}" for w in report.warnings)))
    return sections


def render_table(report: Report) -> str:
    """Render a report for a terminal: the verdict line first, then tables."""
    parts = [report.headline]
    for title, body in _sections(report, "simple"):
        parts.append(f"\n== {title} ==\n{body}")
    return "\n".join(parts) + "\n"


def render_markdown(report: Report) -> str:
    """Render a report as markdown for pasting into a bug report."""
    parts = [f"**{report.headline}**"]
    for title, body in _sections(report, "github"):
        parts.append(f"\n### {title}\n\n{body}")
    return "\n".join(parts) + "\n"


def _json_text(value: object) -> str:
    import json  # here: only JSON output pays for it

    return json.dumps(value, indent=2) + "\n"


def render_json(report: Report) -> str:
    """Render a report as one JSON object (see README.md for the schema)."""
    return _json_text(to_json_dict(report))


FORMATS: Final[dict[str, Callable[[Report], str]]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
}


def render(report: Report, fmt: str = "table") -> str:
    """Render a report in one of :data:`FORMATS`."""
    return FORMATS[fmt](report)


def render_many(reports: Sequence[Report], fmt: str = "table") -> str:
    """Render several reports: JSON as one array, text formats one after another."""
    if len(reports) == 1:
        return render(reports[0], fmt)
    if fmt == "json":
        return _json_text([to_json_dict(r) for r in reports])
    return "\n".join(render(r, fmt) for r in reports)
