"""
Triage jobs and rows
--------------------

What the triage parent hands a worker (:class:`Job`) and what comes back
(:class:`Row`), typed on both sides and turned into JSON at the process
boundary by one function each way. The row's wire form is the row of the
output: the same field names (:data:`ROW_FIELDS`) and values as the JSONL and
CSV the user reads. No drgn.
"""

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final, Mapping, Optional

from dfforensics.core.errors import ErrorKind

__all__ = ("Job", "ROW_FIELDS", "Row", "error_row", "job_from_wire", "job_to_wire",
           "row_from_wire", "row_to_wire")

ROW_FIELDS: Final = (
    "path", "size", "mtime", "kind", "status", "mode", "verdict", "df_class", "kernel_release",
    "cpu", "pid", "comm", "frames", "error_kind", "error", "summary", "note", "log", "vmlinux",
    "seconds", "title", "dedup_key",
)


@dataclass(frozen=True)
class Job:
    """One discovered item, planned: what to analyse, and with which vmlinux."""

    path: str
    size: int
    mtime: float
    #: elf-core, kdump-compressed, flattened, log, incomplete, unreadable-compressed, or
    #: (named as a dump or a console log, and refused by discovery) unreadable,
    #: not-a-dump or not-a-log.
    kind: str
    log: Optional[str] = None
    vmlinux: Optional[str] = None
    release: Optional[str] = None
    #: Why no vmlinux was found, when it was not (said in the row).
    vmlinux_note: Optional[str] = None
    #: An error found while planning: the row is that error, no worker runs.
    plan_error: Optional[str] = None
    plan_error_kind: Optional[ErrorKind] = None
    duplicate_of: Optional[str] = None
    #: Without a debug vmlinux, fall back to the console log rather than read the
    #: guest's BTF and kallsyms (--require-debuginfo).
    require_debuginfo: bool = False
    #: What discovery says of the item (a symlink leaving the archive), put in its row's note.
    note: Optional[str] = None


@dataclass(frozen=True)
class Row:
    """One output row (README "Row fields"); None where a field does not apply."""

    path: Optional[str] = None
    size: Optional[int] = None
    mtime: Optional[float] = None
    kind: Optional[str] = None
    status: str = "error"
    mode: Optional[str] = None
    verdict: Optional[str] = None
    df_class: Optional[str] = None
    kernel_release: Optional[str] = None
    cpu: Optional[int] = None
    pid: Optional[int] = None
    comm: Optional[str] = None
    frames: Optional[int] = None
    error_kind: Optional[ErrorKind] = None
    error: Optional[str] = None
    summary: Optional[str] = None
    note: Optional[str] = None
    log: Optional[str] = None
    vmlinux: Optional[str] = None
    seconds: Optional[float] = None
    #: The answer's stable title and the key grouping the same event across dumps.
    title: Optional[str] = None
    dedup_key: Optional[str] = None

    def of_job(self, job: Job) -> "Row":
        """This result as the row of ``job``: the item's own fields filled in."""
        note = "; ".join(part for part in (job.note, self.note) if part) or None
        return replace(self, path=job.path, size=job.size, mtime=job.mtime, kind=job.kind, log=job.log,
                       note=note)


def error_row(kind: ErrorKind, message: str, status: str = "error") -> Row:
    return Row(status=status, error_kind=kind, error=message)


def _error_kind(value: Any) -> Optional[ErrorKind]:
    if value is None or isinstance(value, ErrorKind):
        return value
    try:
        return ErrorKind(value)
    except ValueError:
        return ErrorKind.INPUT


def job_to_wire(job: Job) -> dict[str, Any]:
    wire = asdict(job)
    wire["plan_error_kind"] = job.plan_error_kind.value if job.plan_error_kind else None
    return wire


def job_from_wire(wire: Mapping[str, Any]) -> Job:
    known = {f.name for f in fields(Job)}
    values = {key: value for key, value in wire.items() if key in known}
    values["plan_error_kind"] = _error_kind(values.get("plan_error_kind"))
    return Job(**values)


def row_to_wire(row: Row) -> dict[str, Any]:
    """The row as the output has it: every field of :data:`ROW_FIELDS`, in order."""
    wire = {name: getattr(row, name) for name in ROW_FIELDS}
    wire["error_kind"] = row.error_kind.value if row.error_kind else None
    return wire


def row_from_wire(wire: Mapping[str, Any]) -> Row:
    """A row from its JSON (a worker's answer, or a line of an earlier output)."""
    values = {name: wire[name] for name in ROW_FIELDS if name in wire}
    values["error_kind"] = _error_kind(values.get("error_kind"))
    if values.get("status") is None:
        values.pop("status", None)
    return Row(**values)
