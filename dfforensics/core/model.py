"""
Result model
------------

The dataclasses every output renders from: the table, JSON and markdown of the
``dfforensics`` commands and the drgn commands alike. Pure: no drgn.

The JSON form is :func:`to_json_dict` of a :class:`Report`; its schema is
versioned by :data:`SCHEMA_VERSION` and documented field by field in README.md.
"""

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Final, Optional

from dfforensics.core.version import __version__

__all__ = (
    "SCHEMA_VERSION",
    "OUTPUT_FORMATS",
    "Verdict",
    "DfClass",
    "Status",
    "StackKind",
    "FrameKind",
    "RegionKind",
    "DfSource",
    "SweepVerdict",
    "Evidence",
    "Registers",
    "OrigAx",
    "Frame",
    "RspRegion",
    "DoubleFault",
    "KernelInfo",
    "AnnotatedWord",
    "SweptStack",
    "SweepResult",
    "Report",
    "to_json_dict",
)

SCHEMA_VERSION: Final = 2
#: The renderings of a Report (dfforensics.core.render.FORMATS has one function for each).
OUTPUT_FORMATS: Final = ("table", "json", "markdown")


class Verdict(str, enum.Enum):
    """Does the crash match the CPL-corruption double-fault signature?"""

    MATCH = "match"
    POSSIBLE = "possible"
    NO_MATCH = "no-match"
    NO_DOUBLE_FAULT = "no-double-fault"

    @property
    def strength(self) -> int:
        """Order for picking the strongest of several verdicts."""
        return _VERDICT_STRENGTH[self]


_VERDICT_STRENGTH: Final = {
    Verdict.NO_DOUBLE_FAULT: 0,
    Verdict.NO_MATCH: 1,
    Verdict.POSSIBLE: 2,
    Verdict.MATCH: 3,
}


class DfClass(str, enum.Enum):
    """What kind of double fault it is."""

    CPL_CORRUPTION = "cpl-corruption"
    KERNEL_STACK_OVERFLOW = "kernel-stack-overflow"
    WILD_RSP = "wild-rsp"
    SYSCALL_ENTRY_WINDOW = "syscall-entry-window"
    BARE_METAL = "bare-metal"
    KERNEL_ADDRESS_SPACE = "kernel-address-space"
    OTHER = "other"


class Status(str, enum.Enum):
    """Whether a check supports the signature."""

    #: Supports the signature (a proof, where the check is one).
    PASS = "pass"
    #: Argues against the signature.
    FAIL = "fail"
    #: The input cannot tell.
    UNKNOWN = "unknown"
    #: Does not apply here, or is not needed: neither for nor against.
    NOT_APPLICABLE = "n/a"


class StackKind(str, enum.Enum):
    """Which kind of stack memory a frame was found in."""

    USER = "user"
    KERNEL = "kernel"


class FrameKind(str, enum.Enum):
    """What a frame is, by its stack and whether its saved RSP points just above it."""

    CPL0_USER_STACK = "cpl0-user-stack"
    USER_STACK_INCONSISTENT = "user-stack-inconsistent"
    KERNEL_SAME_STACK = "kernel-same-stack"
    KERNEL_STACK_SWITCH = "kernel-stack-switch"

    @classmethod
    def of(cls, stack: StackKind, consistent: bool) -> "FrameKind":
        if stack is StackKind.USER:
            return cls.CPL0_USER_STACK if consistent else cls.USER_STACK_INCONSISTENT
        return cls.KERNEL_SAME_STACK if consistent else cls.KERNEL_STACK_SWITCH


class RegionKind(str, enum.Enum):
    """Where a saved stack pointer lies."""

    USER_STACK = "user-stack"
    USER_THREAD_STACK = "user-thread-stack"
    USER_ANON = "user-anon"
    USER_FILE = "user-file"
    #: A user address in no mapping of the task (positively: its mappings were read).
    USER_UNMAPPED = "user-unmapped"
    #: A user address whose mappings could not be read (or whose task is unknown).
    USER_RANGE = "user-range"
    KERNEL_TASK_STACK = "kernel-task-stack"
    KERNEL_GUARD_PAGE = "kernel-guard-page"
    IRQ_STACK = "irq-stack"
    EXCEPTION_STACK = "exception-stack"
    KERNEL_OTHER = "kernel-other"
    NEAR_NULL = "near-null"
    NON_CANONICAL = "non-canonical"

    @property
    def is_user_mapping(self) -> bool:
        """A real mapping of the task's, where a user stack can be."""
        return self in (RegionKind.USER_STACK, RegionKind.USER_THREAD_STACK,
                        RegionKind.USER_ANON, RegionKind.USER_FILE)

    @property
    def is_kernel_stack(self) -> bool:
        return self in (RegionKind.KERNEL_TASK_STACK, RegionKind.KERNEL_GUARD_PAGE,
                        RegionKind.IRQ_STACK, RegionKind.EXCEPTION_STACK)


class DfSource(str, enum.Enum):
    """Where a #DF was seen."""

    LOG = "log"
    #: The state saved on the CPU's #DF stack.
    IST_PT_REGS = "ist-pt_regs"
    #: The crashed thread's stack trace through the #DF handler.
    STACK_TRACE = "stack-trace"


class SweepVerdict(str, enum.Enum):
    """What the sweep of every user stack found."""

    CPL0_FRAMES_FOUND = "cpl0-frames-found"
    CLEAN = "clean"
    #: Stack pages or tasks could not be read: absence of frames proves nothing.
    INCOMPLETE = "incomplete"


@dataclass
class Evidence:
    """One check and its outcome. ``pass`` supports the signature."""

    check: str
    status: Status
    detail: str


@dataclass
class Registers:
    """The interrupted context the CPU saved at a #DF (or an oops)."""

    rip: Optional[int] = None
    rip_symbol: Optional[str] = None
    cs: Optional[int] = None
    rflags: Optional[int] = None
    rsp: Optional[int] = None
    ss: Optional[int] = None
    cr2: Optional[int] = None
    error_code: Optional[int] = None
    #: Other registers as printed or saved (rax, rbx, ..., cr3, fs_base), by name.
    others: dict[str, int] = field(default_factory=dict)


@dataclass
class OrigAx:
    """What the word below a frame's RIP (the orig_ax / error code slot) means."""

    raw: Optional[int]
    kind: str
    vector: Optional[int]
    error_code: Optional[int]
    meaning: str


@dataclass
class Frame:
    """An interrupt or exception frame found in stack memory."""

    #: Address of the orig_ax / error code slot (the word just below RIP).
    address: int
    #: Which kind of stack memory it was found in.
    stack: StackKind
    kind: FrameKind
    orig_ax: OrigAx
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    #: The saved RSP points just above the frame: pushed without a stack switch.
    consistent: bool
    #: SS that a healthy kernel never saves with this CS (e.g. CS 0x10, SS 0x2b).
    impossible_ss: bool
    rip_symbol: Optional[str] = None
    #: The task whose stack holds the frame, when known.
    pid: Optional[int] = None
    tid: Optional[int] = None
    #: The word just below the pt_regs the kernel's entry code built under the frame
    #: (its return address there: the entry trail), None where it was not read.
    entry_return: Optional[int] = None
    #: Its kernel symbol with offset, or None when it is not kernel text (or unknown).
    entry_return_symbol: Optional[str] = None

    @property
    def vector(self) -> Optional[int]:
        return self.orig_ax.vector


@dataclass
class RspRegion:
    """Where a saved stack pointer lies."""

    kind: RegionKind
    detail: str
    start: Optional[int] = None
    end: Optional[int] = None
    name: Optional[str] = None


@dataclass
class DoubleFault:
    """One #DF (or, for no-double-fault, the crash seen instead)."""

    verdict: Verdict
    df_class: Optional[DfClass]
    summary: str
    regs: Registers
    cpu: Optional[int] = None
    pid: Optional[int] = None
    tid: Optional[int] = None
    comm: Optional[str] = None
    rsp_region: Optional[RspRegion] = None
    #: Where it was seen.
    sources: list[DfSource] = field(default_factory=list)
    header: Optional[str] = None
    #: 1-based line in the log where its report starts.
    log_line: Optional[int] = None
    call_trace: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class KernelInfo:
    """What the log or dump says about the guest."""

    release: Optional[str] = None
    arch: Optional[str] = None
    hardware_name: Optional[str] = None
    #: "guest", "bare-metal" or "unknown".
    environment: str = "unknown"
    hypervisor: Optional[str] = None
    cpus: Optional[int] = None
    cpu_vendor: Optional[str] = None
    cpu_model: Optional[str] = None
    uptime_seconds: Optional[float] = None
    sysret_ss_workaround: Optional[bool] = None


@dataclass
class AnnotatedWord:
    """One stack word as a kernel engineer would annotate ``rd -s`` output."""

    address: int
    value: Optional[int]
    note: str


@dataclass
class SweptStack:
    """One user stack mapping read by the sweep."""

    pid: int
    #: The thread whose stack it is; None for a mapping of the process that no
    #: thread's saved RSP or sigaltstack is in (a stack the threads have left).
    tid: Optional[int]
    comm: str
    mapping: str
    start: int
    end: int
    pages_present: int
    #: Resident in the task but not in the dump.
    pages_missing: int
    #: Addresses of the frames found on it (the frames are in Report.frames).
    frame_addresses: list[int] = field(default_factory=list)
    #: Not resident in the task (never touched or swapped out).
    pages_not_resident: int = 0
    #: Why it was read: "saved RSP" (a thread's stack now), "sigaltstack", or
    #: "anonymous mapping" (private, writable: where a stack the thread left may be).
    reason: str = "saved RSP"


@dataclass
class SweepCoverage:
    """What the sweep read besides the mappings under the threads' saved RSPs, and its bound."""

    #: At most this many resident pages per process are read from those mappings.
    bound_pages_per_process: int = 0
    mappings: int = 0
    pages_read: int = 0
    #: Pages another mapping already mapped (the same physical page): decoded once.
    pages_shared: int = 0
    #: Resident pages not read because their process reached the bound.
    pages_beyond_bound: int = 0
    #: ``comm (pid N): M pages beyond the bound`` for each process cut by the bound.
    processes_beyond_bound: list[str] = field(default_factory=list)
    #: A running guest: candidate frames a second read did not return unchanged
    #: (the stack moved on between the reads, or a read was torn): never reported as frames.
    frames_unconfirmed: int = 0
    #: Whether guest memory was read while the guest ran (a live sweep).
    live: bool = False
    #: A running guest: tasks that exited between the walk of the task list and the
    #: read of their stack (no stack left to hold a frame).
    tasks_gone: int = 0


@dataclass
class SweepResult:
    """Frames pushed at CPL 0 on the user stacks of every task."""

    verdict: SweepVerdict
    summary: str = ""
    tasks_scanned: int = 0
    tasks_unreadable: int = 0
    pages_present: int = 0
    pages_missing: int = 0
    stacks: list[SweptStack] = field(default_factory=list)
    frames: list["Frame"] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    coverage: Optional[SweepCoverage] = None


@dataclass
class Report:
    """The whole answer for one input (a console log or a dump)."""

    source: dict[str, Any]
    verdict: Verdict
    df_class: Optional[DfClass]
    summary: str
    kernel: KernelInfo = field(default_factory=KernelInfo)
    double_faults: list[DoubleFault] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    annotated_words: list[AnnotatedWord] = field(default_factory=list)
    #: For the signature: what it means and where the hypervisor side was fixed.
    explanation: list[str] = field(default_factory=list)
    #: The sweep of every user stack, when it ran.
    sweep: Optional[SweepResult] = None
    #: A stable one-line title, and a key grouping the same event across inputs
    #: (dfforensics.core.titles).
    title: str = ""
    dedup_key: str = ""
    #: The dfforensics version that made the report.
    tool_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    @property
    def headline(self) -> str:
        """The verdict line every rendering starts with."""
        cls = f" ({self.df_class.value})" if self.df_class else ""
        return f"verdict: {self.verdict.value}{cls} — {self.summary}"

    def __str__(self) -> str:
        # The whole report is a rendering (dfforensics.core.render), which builds on
        # this module: the model itself only knows its headline.
        return self.headline


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Frame):
            result["vector"] = value.vector
        if isinstance(value, SweepResult):
            result.pop("frames")  # they are the report's frames
        return result
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def to_json_dict(report: Report) -> dict[str, Any]:
    """Return a report as plain JSON-ready data (integers stay integers)."""
    data = _jsonable(report)
    # schema_version first, for people reading the raw JSON.
    return {"schema_version": data.pop("schema_version"), **data}
