"""
Rendering
---------

Every output is rendered from one :class:`~dfforensics.core.model.Report`: a text
table for terminals (the default), JSON for programs, GitHub-flavoured markdown
for bug trackers. Pure: no drgn.

The text renderings put first what a triager reads first: the verdict and why,
the evidence, the #DF's registers, the frames (runs of alike frames collapsed),
then the annotated stack and the context.
"""

import os
import sys
from typing import Callable, Final, NamedTuple, Optional, Sequence

from dfforensics.core import signature, x86
from dfforensics.core.model import DoubleFault, Frame, KernelInfo, Report, to_json_dict

__all__ = ("FORMATS", "render", "render_many", "terminal_width")

#: A run of alike frames longer than this shows its first frame and one summary row.
_COLLAPSE_AFTER: Final = 2
# The widest a free-text cell gets when the width is unknown (a file or a pipe).
_UNWRAPPED: Final = None


def terminal_width() -> Optional[int]:
    """The width to wrap text tables to on a terminal (``$COLUMNS``, else the
    terminal's own); none for a file or a pipe, which keep whole lines."""
    try:
        if not sys.stdout.isatty():
            return None
        columns = os.environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() and int(columns) > 0 else os.get_terminal_size().columns
    except (OSError, ValueError, AttributeError):
        return None


def _hex(value: Optional[int], width: int = 16) -> str:
    return "-" if value is None else f"{value:0{width}x}"


def _selector(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:04x} ({x86.selector_name(value)})"


def _register_rows(df: DoubleFault) -> list[list[str]]:
    regs = df.regs
    return [
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


def _frame_row(frame: Frame) -> list[str]:
    return [
        f"{frame.address:016x}",
        frame.kind.value,
        "-" if frame.vector is None else f"{frame.vector:#04x}",
        f"{frame.rip:016x}" + (f" {frame.rip_symbol}" if frame.rip_symbol else ""),
        f"{frame.cs:#04x}",
        f"{frame.rflags:#x}",
        f"{frame.rsp:016x}",
        f"{frame.ss:#04x}",
        "yes" if frame.consistent else "no",
        "-" if frame.pid is None else f"{frame.pid}" + (f"/{frame.tid}" if frame.tid != frame.pid else ""),
    ]


def _alike(frame: Frame) -> tuple:
    return (frame.stack, frame.kind, frame.rip_symbol or frame.rip, frame.cs, frame.ss, frame.pid, frame.tid)


def _frame_rows(frames: Sequence[Frame]) -> list[list[str]]:
    """One row per frame, and one summary row for the rest of each long run of alike frames."""
    rows: list[list[str]] = []
    index = 0
    while index < len(frames):
        run = [frames[index]]
        while index + len(run) < len(frames) and _alike(frames[index + len(run)]) == _alike(run[0]):
            run.append(frames[index + len(run)])
        rows.append(_frame_row(run[0]))
        if len(run) > _COLLAPSE_AFTER:
            # The run's extent and what its frames share; JSON keeps every frame.
            first = run[0]
            rows.append([f"..{run[-1].address:016x}", f"+{len(run) - 1} more like this one", "",
                         first.rip_symbol or f"{first.rip:#x}", f"{first.cs:#04x}", "", "",
                         f"{first.ss:#04x}", "yes" if first.consistent else "no", ""])
        else:
            rows += [_frame_row(frame) for frame in run[1:]]
        index += len(run)
    return rows


_FRAME_HEADERS: Final = ["address", "kind", "vector", "RIP", "CS", "RFLAGS", "RSP", "SS", "consistent",
                         "pid/tid"]


def _annotated_rows(report: Report) -> list[list[str]]:
    """The annotated words, with a row marking each gap between the windows shown."""
    rows: list[list[str]] = []
    previous: Optional[int] = None
    for word in report.annotated_words:
        if previous is not None and word.address > previous + 8:
            rows.append(["...", "", f"({word.address - previous - 8:#x} bytes not shown)"])
        rows.append([f"{word.address:016x}", _hex(word.value), word.note])
        previous = word.address
    return rows


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


def _cell(value: object) -> str:
    """A context value as a reader writes it: no Python spellings of booleans or None."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _environment(kernel: KernelInfo) -> str:
    return kernel.environment + (f": {kernel.hypervisor}" if kernel.hypervisor else "")


def _input(report: Report) -> str:
    path = report.source.get("path")
    return str(report.source.get("kind")) + (f" {path}" if path is not None else "")


def _context_line(report: Report) -> str:
    kernel = report.kernel
    cpus = f"{kernel.cpus} CPU(s)" if kernel.cpus is not None else None
    cpu = " ".join(part for part in (cpus, kernel.cpu_vendor, kernel.cpu_model) if part)
    parts = [f"kernel {kernel.release or 'unknown'} {kernel.arch or ''}".rstrip(), _environment(kernel), cpu,
             _input(report)]
    return " | ".join(part for part in parts if part)


def _context_rows(report: Report) -> list[list[str]]:
    kernel = report.kernel
    rows = [["input", _input(report)],
            ["kernel release", kernel.release or "unknown"],
            ["architecture", kernel.arch or "unknown"],
            ["environment", _environment(kernel)]]
    for label, value in (("hardware name", kernel.hardware_name), ("CPUs", kernel.cpus),
                         ("CPU vendor", kernel.cpu_vendor), ("CPU model", kernel.cpu_model),
                         ("uptime (s)", kernel.uptime_seconds),
                         ("AMD SYSRET SS workaround", kernel.sysret_ss_workaround)):
        if value is not None:
            rows.append([label, _cell(value)])
    rows += [[key.replace("_", " "), _cell(value)] for key, value in report.source.items()
             if key not in ("kind", "path") and value is not None]
    return rows


class _Style(NamedTuple):
    """What differs between the terminal table and markdown."""

    tablefmt: str
    #: Width to wrap free-text cells to (None: no wrapping; markdown never wraps).
    width: Optional[int]
    #: Escape for text outside code (markdown would read <UNK> as HTML).
    text: Callable[[str], str]
    #: Quote a verbatim line of the input (a log header).
    code: Callable[[str], str] = lambda line: line
    bullet: str = "- "


def _wrap(style: _Style, fixed: int) -> Optional[int]:
    return None if style.width is None else max(30, style.width - fixed)


def _coverage_line(coverage) -> str:
    """What the sweep read besides the stacks under saved RSPs, and its bound."""
    line = (f"besides the stacks under saved RSPs: {coverage.mappings} sigaltstack(s) and anonymous "
            f"mapping(s), {coverage.pages_read} pages read ({coverage.pages_shared} shared pages "
            f"decoded once), at most {coverage.bound_pages_per_process} pages per process")
    if coverage.pages_beyond_bound:
        line += f"; {coverage.pages_beyond_bound} pages beyond the bound not read"
    if coverage.live:
        line += (f"; running guest: each frame read twice, {coverage.frames_unconfirmed} "
                 f"candidate(s) changed between the reads, {coverage.tasks_gone} task(s) exited "
                 "during the sweep")
    return line


def _sections(report: Report, style: _Style) -> list[tuple[str, str]]:
    # Importing tabulate costs 3 ms (more with wcwidth installed): paid only by the
    # table renderings, not by JSON output or triage workers.
    from tabulate import tabulate as _tabulate

    # Cells are shown as the analysis wrote them: no number parsing (which would
    # realign and could reformat them, and costs a type guess per cell).
    def table(rows, headers, wrap_last=None):
        widths = None if wrap_last is None else [None] * (len(headers) - 1) + [wrap_last]
        cells = [[style.text(str(cell)) for cell in row] for row in rows]
        return _tabulate(cells, headers=headers, tablefmt=style.tablefmt, disable_numparse=True,
                         maxcolwidths=widths)

    text = style.text
    sections: list[tuple[str, str]] = []
    if report.evidence:
        rows = [[e.check, e.status.value, e.detail] for e in report.evidence]
        sections.append(("Evidence", table(rows, ["check", "status", "detail"], _wrap(style, 40))))
    for index, df in enumerate(report.double_faults, 1):
        body = text(df.summary) + "\n\n" + (f"header: {style.code(df.header)}\n\n" if df.header else "")
        body += table(_register_rows(df), ["register", "value", "meaning"], _wrap(style, 32))
        if df.call_trace:
            body += "\n\ncall trace: " + text(" ".join(df.call_trace[:24]))
        sections.append((text(_df_title(df, index)), body))
    if report.sweep is not None:
        sweep = report.sweep
        body = (f"{sweep.verdict.value}: {text(sweep.summary)}\n\n"
                f"tasks scanned {sweep.tasks_scanned}, unreadable {sweep.tasks_unreadable}; "
                f"stack pages read {sweep.pages_present}, missing {sweep.pages_missing}")
        if sweep.coverage is not None:
            body += "\n\n" + text(_coverage_line(sweep.coverage))
        rows = [[s.pid, s.tid, s.comm, s.mapping, f"{s.start:x}-{s.end:x}", s.pages_present,
                 s.pages_missing, len(s.frame_addresses)]
                for s in sweep.stacks if s.frame_addresses or s.pages_missing]
        if rows:
            body += "\n\n" + table(rows, ["pid", "tid", "comm", "stack mapping", "range", "pages",
                                          "missing", "frames"])
        sections.append(("Sweep of every user stack", body))
    if report.frames:
        sections.append((f"Frames ({len(report.frames)})", table(_frame_rows(report.frames), _FRAME_HEADERS)))
    if report.annotated_words:
        sections.append(("Annotated stack", table(_annotated_rows(report), ["address", "value", "what it is"],
                                                  _wrap(style, 38))))
    if report.explanation:
        sections.append(("What this means", "\n".join(style.bullet + text(line) for line in report.explanation)))
    sections.append(("Context", table(_context_rows(report), ["field", "value"], _wrap(style, 28))))
    if report.warnings:
        sections.append(("Warnings", "\n".join(style.bullet + text(w) for w in report.warnings)))
    return sections


def _plain(value: str) -> str:
    return value


def _markdown_text(value: str) -> str:
    # Cells are one line in GFM tables, '|' ends a cell, and '<...>' is HTML to a renderer.
    return (value.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("*", "\\*").replace("_", "\\_").replace("\n", " "))


def render_table(report: Report, width: Optional[int] = _UNWRAPPED) -> str:
    """Render a report for a terminal: the verdict line first, then tables.

    :param width: wrap free-text cells to fit this many columns (None: no wrapping).
    """
    parts = [report.headline, _context_line(report)]
    for title, body in _sections(report, _Style("simple", width, _plain)):
        parts.append(f"\n== {title} ==\n{body}")
    return "\n".join(parts) + "\n"


def render_markdown(report: Report) -> str:
    """Render a report as GitHub-flavoured markdown, for pasting into a bug tracker."""
    parts = [f"**{_markdown_text(report.headline)}**", "", _markdown_text(_context_line(report))]
    style = _Style("github", None, _markdown_text, code=lambda line: f"`{line.replace('`', '')}`")
    for title, body in _sections(report, style):
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
    """Render a report in one of :data:`FORMATS` (a table wraps to :func:`terminal_width`)."""
    if fmt == "table":
        return render_table(report, terminal_width())
    return FORMATS[fmt](report)


def render_many(reports: Sequence[Report], fmt: str = "table") -> str:
    """Render several reports: JSON as one array, text formats one after another."""
    if len(reports) == 1:
        return render(reports[0], fmt)
    if fmt == "json":
        return _json_text([to_json_dict(r) for r in reports])
    return "\n".join(render(r, fmt) for r in reports)
