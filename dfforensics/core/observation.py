"""
Observations
------------

What the readers (the console-log parser, the drgn layer) saw, as plain typed
values, handed up to the one judge (:mod:`dfforensics.core.verdict`). An
observation says what is there and what could not be read; it never says what
that means. Pure: no drgn.
"""

import enum
from typing import NamedTuple, Optional, Sequence

from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import Frame, Registers, RspRegion, SweepCoverage, SweptStack

__all__ = ("Medium", "Residency", "PushSlot", "Observation", "SweepObservation")


class Medium(str, enum.Enum):
    """What the evidence about a #DF was read from."""

    #: A console log: it shows marks, never proves them.
    LOG = "log"
    #: Guest memory saved in a dump.
    MEMORY = "memory"
    #: The memory of a running guest, read while it runs.
    LIVE = "live"

    @property
    def noun(self) -> str:
        """What the report reads from, for its sentences: "the {noun} shows ..."."""
        return {Medium.LOG: "log", Medium.MEMORY: "dump", Medium.LIVE: "running guest's memory"}[self]


class Residency(str, enum.Enum):
    """Whether a user page is mapped in a task's page tables."""

    RESIDENT = "resident"
    #: No page-table entry at the address itself: never touched, or swapped out.
    NOT_RESIDENT = "not-resident"
    #: The page tables (or the mm) reaching it could not be read: says nothing.
    UNREADABLE = "unreadable"


class PushSlot(NamedTuple):
    """The CPU's first push slot below a user RSP, and whether its page was present."""

    address: int
    residency: Residency


class Observation(NamedTuple):
    """What is known about one #DF, from a log or from memory."""

    medium: Medium
    regs: Registers
    arch_bits: int = 64
    #: The kernel version, parsed once per input (None: unknown).
    version: Optional[Version] = None
    #: "guest", "bare-metal" or "unknown".
    environment: str = "unknown"
    hypervisor: Optional[str] = None
    #: The log or the stack trace names a stack overflow (guard page hit).
    guard_page_hit: bool = False
    #: Kernel addresses of the task (task struct, thread_info, stack) from the
    #: log or dump; used to recognise truncated and old-layout kernel pointers.
    kernel_pointers: Sequence[int] = ()
    #: Memory only: where the saved RSP lies among the task's mappings.
    rsp_region: Optional[RspRegion] = None
    #: Frames found on stacks (user stacks, and kernel stacks for rule iii).
    frames: Sequence[Frame] = ()
    #: Memory only: whether any user stack page could be read (None: not tried).
    user_stack_read: Optional[bool] = None
    #: Why the user stack could not be read, when it could not.
    user_stack_problem: Optional[str] = None
    #: The #DF happened inside a firmware call (the log said so).
    firmware_context: Optional[str] = None
    #: The dump's level excluded user pages (makedumpfile -d with bit 8).
    user_pages_excluded: bool = False
    #: Memory only: the first push slot below a user RSP and its page's residency.
    push_slot: Optional[PushSlot] = None
    #: Where CR2 was read from (the log, the #DF handler's frame), when anywhere.
    cr2_source: Optional[str] = None
    #: Log only: what the report does not show of the #DF's state and why (a
    #: fragment: cut by a reboot, elided by the reporter), or None.
    registers_missing: Optional[str] = None
    #: Memory only: the confidential-VM kind the guest ran as (AMD SEV-ES/SNP, Intel TDX),
    #: whose register state the hypervisor cannot write; None when the dump shows none.
    confidential_guest: Optional[str] = None
    #: A paravirtual guest kernel ("Xen PV", "PVM") that runs at CPL 3 while it
    #: prints kernel selectors; None for a native or hardware-virtualized kernel.
    paravirt: Optional[str] = None


class SweepObservation(NamedTuple):
    """What the sweep of every thread's user stack read and found."""

    tasks_scanned: int = 0
    tasks_unreadable: int = 0
    stacks: Sequence[SweptStack] = ()
    #: Frames that prove CPL-0 delivery, with their task's pid and tid.
    frames: Sequence[Frame] = ()
    problems: Sequence[str] = ()
    #: User tasks whose stack could not be located (``comm (pid, tid): why``):
    #: their stacks were not read, so they cannot count as clean.
    stacks_not_located: Sequence[str] = ()
    #: The mappings read besides those under saved RSPs (None: not read).
    coverage: Optional[SweepCoverage] = None
    #: The kernel's version, for the facts its frames are judged by (None: unknown).
    version: Optional[Version] = None
