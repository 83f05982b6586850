"""
Verdict rules: the one judge
----------------------------

Observations in, verdicts out. Every piece of evidence, every verdict,
``df_class``, summary and headline is made here, for console logs, dumps and
the sweep alike; the readers only observe (:mod:`dfforensics.core.observation`).
Pure: no drgn.

The signature is proven by any one of three proofs, each a function below:

(i) a self-consistent frame pushed without a stack switch onto a user stack;
(ii) the #DF's saved state is user code (CS RPL 3) on a user stack, and CR2 is
     the CPU's first push slot below that RSP: the CPU's own push faulted,
     which cannot happen at CPL 3, where every event switches stacks;
(iii) state saved with an SS that a healthy kernel never has with that CS
     (kernel CS with anything but SS 0/0x18; user CS with SS RPL 0).

Then the first rule of :data:`_PROVEN_RULES` (when a proof holds) or of
:data:`_UNPROVEN_RULES` (when none does) that applies gives the verdict. A
console log can show the marks but never prove them: from a log the best
verdict is ``possible``.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Final, NamedTuple, Optional, Sequence

from dfforensics.core import kernel_facts, signature, x86
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import (
    DfClass, DoubleFault, Evidence, Frame, FrameKind, RegionKind, Status, SweepResult, SweepVerdict, Verdict,
)
from dfforensics.core.observation import Medium, Observation, Residency, SweepObservation

__all__ = (
    "Decision",
    "decide",
    "decide_no_double_fault",
    "decide_report",
    "decide_unprinted_crash",
    "judge_sweep",
    "explain",
    "strongest",
)

# Kernel pointers in a register dump whose low 32 bits lie this close to a
# small RSP betray a kernel stack pointer truncated to 32 bits.
_TRUNCATION_WINDOW: Final = 0x10000


@dataclass
class Decision:
    verdict: Verdict
    df_class: Optional[DfClass]
    summary: str
    evidence: list[Evidence] = field(default_factory=list)


class _Ruling(NamedTuple):
    """What a rule decided, with the checks that only that rule makes."""

    verdict: Verdict
    df_class: Optional[DfClass]
    summary: str
    evidence: tuple[Evidence, ...] = ()


class _Proofs(NamedTuple):
    """The outcome of the three proofs, as evidence."""

    frames_on_user_stack: Evidence
    cr2_at_first_push_slot: Evidence
    impossible_ss: Evidence

    @property
    def any_passed(self) -> bool:
        return Status.PASS in (self.frames_on_user_stack.status, self.cr2_at_first_push_slot.status,
                               self.impossible_ss.status)


def _la57(obs: Observation) -> bool:
    """Whether the printed addresses show 5-level paging (kernel half from 0xff00...)."""
    rsp = obs.regs.rsp
    return x86.implies_la57([*obs.kernel_pointers, *([rsp] if rsp is not None else [])])


def _hex(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:#x}"


def _in_syscall_window(symbol: Optional[str]) -> bool:
    if not symbol:
        return False
    name = symbol.split("+", 1)[0].strip()
    # Every era's names: distributions backport entry-code renames.
    windows = kernel_facts.candidates(kernel_facts.SYSCALL_ENTRY_WINDOW, None)
    return any(name in window for window in windows) or name in kernel_facts.I386_SYSCALL_ENTRY


def _truncated_kernel_pointer(rsp: int, kernel_pointers: Sequence[int]) -> Optional[int]:
    if rsp >= 1 << 32:
        return None
    for pointer in kernel_pointers:
        if x86.is_kernel_address(pointer) and abs((pointer & 0xFFFFFFFF) - rsp) < _TRUNCATION_WINDOW:
            return pointer
    return None


def _old_direct_map(rsp: int, obs: Observation) -> bool:
    """Whether RSP lies in the direct map of x86_64 kernels before 2.6.11."""
    low, high = kernel_facts.X86_64_EARLY_DIRECT_MAP
    if not low <= rsp < high:
        return False
    if obs.version is not None:
        return obs.version < kernel_facts.X86_64_EARLY_LAYOUT_UNTIL
    return any(low <= pointer < high for pointer in obs.kernel_pointers)


# --- checks every #DF gets ---------------------------------------------------

def _double_fault_present(obs: Observation) -> Evidence:
    where = "the console log" if obs.medium is Medium.LOG else "guest memory"
    return Evidence("double-fault-present", Status.PASS, f"#DF seen in {where}")


def _running_under_hypervisor(obs: Observation) -> Evidence:
    if obs.environment == "guest":
        return Evidence("running-under-hypervisor", Status.PASS,
                        f"the guest saw a hypervisor ({obs.hypervisor or 'unnamed'})")
    if obs.environment == "bare-metal":
        return Evidence("running-under-hypervisor", Status.FAIL,
                        f"bare metal ({obs.hypervisor or 'no hypervisor named'}): "
                        "a hypervisor cannot be the cause")
    return Evidence("running-under-hypervisor", Status.UNKNOWN,
                    "the input does not say whether this ran under a hypervisor")


# What each paravirtual guest's printed selectors are (the CPU runs its kernel at CPL 3).
_PARAVIRT_SELECTORS: Final = {
    "Xen PV": "Xen runs this kernel at CPL 3 on its flat ring-3 selectors (CS e030/e033, "
              "SS e02b) and switches it between kernel and user mode itself",
    "PVM": "PVM runs this kernel at CPL 3 and prints the supervisor CS/SS it emulates from "
           "MSR_STAR (0x10/0x18); it switches the kernel between supervisor and user mode in "
           "software and writes the event frames itself",
}


def _paravirtual_selectors(obs: Observation) -> Optional[Evidence]:
    """A paravirtual kernel's selectors are its normal ones, not evidence either way."""
    if obs.paravirt not in _PARAVIRT_SELECTORS:
        return None
    return Evidence("paravirtual-selectors", Status.NOT_APPLICABLE,
                    f"a {obs.paravirt} guest: {_PARAVIRT_SELECTORS[obs.paravirt]}; its kernel "
                    "selectors are normal there, and the CPL the signature is about is the mode "
                    "the hypervisor tracks, not the CPU's")


def _rsp_is_user_address(obs: Observation) -> Evidence:
    rsp = obs.regs.rsp
    if rsp is None:
        return Evidence("rsp-is-user-address", Status.UNKNOWN, "the saved RSP is not known")
    user = x86.is_plausible_user_pointer(rsp, _la57(obs))
    return Evidence("rsp-is-user-address", Status.PASS if user else Status.FAIL,
                    f"RSP {rsp:#x} is " + ("a user-space address" if user else
                                           "not a mappable user-space address"))


def _rsp_in_user_mapping(obs: Observation) -> Optional[Evidence]:
    if obs.rsp_region is None:
        return None
    return Evidence("rsp-in-user-mapping",
                    Status.PASS if obs.rsp_region.kind.is_user_mapping else Status.FAIL,
                    obs.rsp_region.detail)


def _push_slot_page_not_present(obs: Observation) -> Optional[Evidence]:
    """Whether the page of the CPU's first push slot below a user RSP was present."""
    slot = obs.push_slot
    if slot is None:
        return None
    if slot.residency is Residency.UNREADABLE:
        return Evidence("push-slot-page-not-present", Status.UNKNOWN,
                        f"the page tables (or the task) that say whether {slot.address:#x} is "
                        "mapped cannot be read from the dump")
    if slot.residency is Residency.NOT_RESIDENT:
        return Evidence("push-slot-page-not-present", Status.PASS,
                        f"the page of the first push slot {slot.address:#x} is not present in the "
                        "task's page tables: a push there faults, as the #DF's did")
    return Evidence("push-slot-page-not-present", Status.FAIL,
                    f"the page of the first push slot {slot.address:#x} is present: a push there "
                    "would not have faulted (unless it was mapped after the #DF)")


def _cr2_source(obs: Observation) -> Optional[Evidence]:
    if not obs.cr2_source:
        return None
    return Evidence("cr2-source", Status.PASS if obs.regs.cr2 is not None else Status.UNKNOWN,
                    f"CR2 from {obs.cr2_source}")


# --- the three proofs ----------------------------------------------------------

class _Trails(NamedTuple):
    """Frames sorted by the kernel entry code's trail below them (:func:`signature.entry_trail_shown`)."""

    #: The version's entry code (``error_entry``, ``asm_``), None where it is not known.
    caller: Optional[str]
    #: Frames that count: the trail is there, or it cannot be told.
    kept: list[Frame]
    #: Frame-shaped words whose trail is not the entry code's: look-alikes.
    lookalikes: list[Frame]
    #: How many of the kept frames show the trail.
    trailed: int


def _trails(frames: Sequence[Frame], version: Optional[Version]) -> _Trails:
    caller = kernel_facts.value_for(kernel_facts.ENTRY_TRAIL_CALLER, version)
    shown = [(frame, signature.entry_trail_shown(frame, caller)) for frame in frames]
    return _Trails(caller, [f for f, trail in shown if trail is not False],
                   [f for f, trail in shown if trail is False], sum(trail is True for _, trail in shown))


def _proof_frames_on_user_stack(obs: Observation) -> Evidence:
    """(i) CPU-pushed frames on a user stack."""
    check = "cpl0-frames-on-user-stack"
    trails = _trails([f for f in obs.frames if f.kind is FrameKind.CPL0_USER_STACK], obs.version)
    if trails.kept:
        return Evidence(check, Status.PASS,
                        f"{len(trails.kept)} self-consistent frame(s) pushed without a stack "
                        f"switch onto a user stack, first at {trails.kept[0].address:#x}"
                        + (f"; {trails.trailed} with the kernel entry code's return address below their "
                           "pt_regs" if trails.trailed else ""))
    if trails.lookalikes:
        return Evidence(check, Status.UNKNOWN,
                        f"{len(trails.lookalikes)} frame-shaped candidate(s) on the user stack lack the kernel "
                        f"entry code's trail (no return address into {trails.caller}... below their pt_regs): "
                        "user code such as a user-mode IRETQ leaves such words")
    if obs.user_stack_read:
        return Evidence(check, Status.FAIL, "the user stack was read and holds no self-consistent frame")
    return Evidence(check, Status.UNKNOWN, obs.user_stack_problem or "no user stack memory in the input")


def _proof_cr2_at_first_push_slot(obs: Observation) -> Evidence:
    """(ii) user state with CR2 at the first push slot."""
    check = "cr2-at-first-push-slot"
    cs, rsp, cr2 = obs.regs.cs, obs.regs.rsp, obs.regs.cr2
    if cs is None or rsp is None:
        return Evidence(check, Status.UNKNOWN, "the saved CS or RSP is not known")
    if not x86.is_user_cs(cs):
        at_slot = signature.cr2_at_first_push_slot(cr2, rsp)
        return Evidence(check, Status.NOT_APPLICABLE,
                        f"the #DF interrupted kernel code (CS {cs:#x}): this proof needs user code"
                        + (f" (CR2 {cr2:#x} is the first push slot below RSP, a mark, not a proof, "
                           "for kernel code)" if at_slot else ""))
    if cr2 is None:
        return Evidence(check, Status.UNKNOWN, f"user CS {cs:#x} but CR2 is not known")
    if signature.cr2_at_first_push_slot(cr2, rsp) and x86.is_plausible_user_pointer(rsp, _la57(obs)):
        return Evidence(check, Status.PASS,
                        f"user CS {cs:#x}, RSP {rsp:#x} and CR2 {cr2:#x} = (RSP & ~0xf) - 8: "
                        "the CPU's own push onto the user stack faulted")
    return Evidence(check, Status.FAIL, f"CR2 {cr2:#x} is not the first push slot "
                                        f"{x86.first_push_slot(rsp):#x} below RSP {rsp:#x}")


def _proof_impossible_ss(obs: Observation) -> Evidence:
    """(iii) impossible SS, in the #DF's own state or in frames found."""
    check = "impossible-ss"
    cs, ss = obs.regs.cs, obs.regs.ss
    if signature.impossible_ss(cs, ss):
        return Evidence(check, Status.PASS,
                        f"CS {cs:#x} saved with SS {ss:#x} ({x86.selector_name(ss)}): a healthy "
                        "kernel never has that pair, so an event was delivered at CPL 0 with "
                        "user segment state")
    ss_frames = [f for f in obs.frames if f.impossible_ss]
    if ss_frames:
        return Evidence(check, Status.PASS,
                        f"{len(ss_frames)} frame(s) saved CS {ss_frames[0].cs:#x} with SS "
                        f"{ss_frames[0].ss:#x}, first at {ss_frames[0].address:#x}")
    if cs is None or ss is None:
        return Evidence(check, Status.UNKNOWN, "the saved CS or SS is not known")
    # A healthy pair does not argue against the signature: the seed's own #DF saved
    # CS 0x33 with SS 0x2b. This proof simply does not apply.
    return Evidence(check, Status.NOT_APPLICABLE,
                    f"CS {cs:#x} with SS {ss:#x} is a healthy pair, in the #DF and in every frame found")


# --- rules when a proof holds, in order ------------------------------------------

_Rule = Callable[[Observation, _Proofs], Optional[_Ruling]]


def _proven_on_bare_metal(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    if obs.environment != "bare-metal":
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.BARE_METAL,
                   "the CPU delivered events at CPL 0 with user state, but on bare metal: no "
                   "hypervisor can have corrupted CPL")


def _proof_pages_excluded(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    if not obs.user_pages_excluded:
        return None
    return _Ruling(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                   "the marks of the CPL-corruption signature, but the dump left out the user "
                   "pages that would prove it (take dumps with a level without bit 8)",
                   (Evidence("user-pages-in-dump", Status.UNKNOWN,
                             "the dump level excluded user pages (makedumpfile -d with bit 8): the "
                             "user stack, where the proof lives, was not captured"),))


def _proof_from_a_log(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    if obs.medium is not Medium.LOG:
        return None
    return _Ruling(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                   "the log shows the marks of the CPL-corruption signature (events delivered at "
                   "CPL 0 with user state); a dump can prove it",
                   (Evidence("proof-from-memory", Status.UNKNOWN,
                             "a console log shows the marks but cannot prove them; the dump can"),))


def _proven_from_memory(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    return _Ruling(Verdict.MATCH, DfClass.CPL_CORRUPTION,
                   "proven from guest memory: the CPU delivered events at CPL 0 with user state, "
                   "the CPL-corruption signature")


_PROVEN_RULES: Final[Sequence[_Rule]] = (
    _proven_on_bare_metal,
    _proof_pages_excluded,
    _proof_from_a_log,
    _proven_from_memory,
)


# --- rules when no proof holds, in order -------------------------------------------

def _syscall_entry_window(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    symbol = obs.regs.rip_symbol
    if not _in_syscall_window(symbol):
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.SYSCALL_ENTRY_WINDOW,
                   f"#DF at {symbol}, inside the SYSCALL entry/exit window where RSP is the user's "
                   "by design: a per-CPU/GS or entry-code problem",
                   (Evidence("outside-syscall-entry-window", Status.FAIL,
                             f"RIP {symbol} runs on the user RSP by design"),))


def _registers_unknown(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    if obs.regs.rsp is not None:
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.OTHER,
                   "a #DF whose saved registers are not known: no mark of the signature")


def _wild_address(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    rsp = obs.regs.rsp
    if x86.is_canonical(rsp, _la57(obs)) and rsp >= x86.MMAP_MIN_ADDR:
        return None
    what = "non-canonical" if not x86.is_canonical(rsp, _la57(obs)) else "below mmap_min_addr"
    return _Ruling(Verdict.NO_MATCH, DfClass.WILD_RSP,
                   f"RSP {rsp:#x} is {what}: kernel code ran on a wild stack pointer")


def _misaligned_kernel_rsp(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    rsp = obs.regs.rsp
    if obs.regs.cs is None or not x86.is_kernel_cs(obs.regs.cs) or not rsp % 8:
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.WILD_RSP,
                   f"kernel code with RSP {rsp:#x}, not 8-byte aligned: the kernel never runs on "
                   "such a stack pointer, it is garbage")


def _user_rsp_in_old_direct_map(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    rsp = obs.regs.rsp
    if not x86.is_user_address(rsp, _la57(obs)) or not _old_direct_map(rsp, obs):
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.KERNEL_ADDRESS_SPACE,
                   f"RSP {rsp:#x} is in the direct map of x86_64 kernels before 2.6.11 "
                   "(PAGE_OFFSET 0x10000000000), a kernel stack")


def _user_rsp_truncated_kernel_pointer(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    rsp = obs.regs.rsp
    truncated = _truncated_kernel_pointer(rsp, obs.kernel_pointers) if x86.is_user_address(rsp, _la57(obs)) else None
    if truncated is None:
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.WILD_RSP,
                   f"RSP {rsp:#x} is the kernel address {truncated:#x} cut to 32 bits: kernel code "
                   "loaded a truncated stack pointer")


def _user_rsp_unmapped(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    # Only a positive "no mapping" makes it wild; unreadable mappings do not.
    rsp = obs.regs.rsp
    if not x86.is_user_address(rsp, _la57(obs)) or obs.rsp_region is None \
            or obs.rsp_region.kind is not RegionKind.USER_UNMAPPED:
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.WILD_RSP,
                   f"RSP {rsp:#x} lies in no mapping of the task: a wild stack pointer, not a user stack")


def _user_mode_fault_off_stack(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    cs = obs.regs.cs
    if not x86.is_user_address(obs.regs.rsp, _la57(obs)) or cs is None or not x86.is_user_cs(cs) \
            or proofs.cr2_at_first_push_slot.status is not Status.FAIL:
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.OTHER,
                   "a #DF from user mode whose fault address is not on the user stack: the switch "
                   "to the kernel stack failed (TSS/RSP0 problem)")


def _user_rsp_on_bare_metal(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    rsp = obs.regs.rsp
    if not x86.is_user_address(rsp, _la57(obs)) or obs.environment != "bare-metal":
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.BARE_METAL,
                   f"user RSP {rsp:#x} at a #DF, but on bare metal: no hypervisor can have "
                   "corrupted CPL")


def _user_rsp_unproven(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    rsp = obs.regs.rsp
    if not x86.is_user_address(rsp, _la57(obs)):
        return None
    reason = ("from a console log" if obs.medium is Medium.LOG
              else obs.user_stack_problem or "no frame proves it")
    return _Ruling(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                   f"a #DF with the user RSP {rsp:#x} ({reason}): the mark of the signature, not "
                   "its proof")


def _kernel_stack_overflow_reason(obs: Observation) -> Optional[str]:
    rsp, cr2 = obs.regs.rsp, obs.regs.cr2
    if obs.guard_page_hit:
        return "the kernel reported a stack guard page hit"
    if obs.rsp_region is not None and obs.rsp_region.kind.is_kernel_stack:
        return obs.rsp_region.detail
    if cr2 is not None and x86.first_push_slot(rsp) - 0x100 <= cr2 <= x86.first_push_slot(rsp):
        return f"CR2 {cr2:#x} is just below the kernel RSP {rsp:#x}: a push ran off the stack"
    if rsp % 0x1000 == 0 and cr2 is not None and rsp - 0x1000 <= cr2 < rsp:
        return f"RSP {rsp:#x} sits on a page boundary and CR2 {cr2:#x} in the page below"
    return None


def _kernel_stack_overflow(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    reason = _kernel_stack_overflow_reason(obs)
    if reason is None:
        return None
    return _Ruling(Verdict.NO_MATCH, DfClass.KERNEL_STACK_OVERFLOW, f"a kernel stack overflow: {reason}",
                   (Evidence("not-a-kernel-stack-overflow", Status.FAIL, reason),))


def _healthy_kernel_stack(obs: Observation, proofs: _Proofs) -> Optional[_Ruling]:
    return _Ruling(Verdict.NO_MATCH, DfClass.OTHER,
                   f"a #DF on the kernel stack {obs.regs.rsp:#x} with healthy segment state: no "
                   "mark of the signature")


_UNPROVEN_RULES: Final[Sequence[_Rule]] = (
    _syscall_entry_window,
    _registers_unknown,
    _wild_address,
    _misaligned_kernel_rsp,
    _user_rsp_in_old_direct_map,
    _user_rsp_truncated_kernel_pointer,
    _user_rsp_unmapped,
    _user_mode_fault_off_stack,
    _user_rsp_on_bare_metal,
    _user_rsp_unproven,
    _kernel_stack_overflow,
    _healthy_kernel_stack,
)


# --- 32-bit kernels ----------------------------------------------------------------

def _decide_i386(obs: Observation) -> _Ruling:
    regs = obs.regs
    esp = regs.rsp
    if obs.firmware_context:
        return _Ruling(Verdict.NO_MATCH, DfClass.OTHER,
                       f"32-bit #DF inside a firmware call ({obs.firmware_context}): its ESP "
                       f"{_hex(esp)} is an offset in a BIOS stack segment")
    if _in_syscall_window(regs.rip_symbol):
        return _Ruling(Verdict.NO_MATCH, DfClass.SYSCALL_ENTRY_WINDOW,
                       f"32-bit #DF at {regs.rip_symbol}, on the stack SYSENTER/SYSCALL named "
                       f"(ESP {_hex(esp)}): an entry-path problem, not the hypervisor's CPL")
    if esp is not None and esp < x86.MMAP_MIN_ADDR:
        return _Ruling(Verdict.NO_MATCH, DfClass.WILD_RSP,
                       f"32-bit kernel with ESP {_hex(esp)}: no stack at all")
    if esp is not None and esp >= kernel_facts.I386_PAGE_OFFSET:
        return _Ruling(Verdict.NO_MATCH, DfClass.KERNEL_ADDRESS_SPACE,
                       f"32-bit kernel: ESP {_hex(esp)} is a kernel address (at or above "
                       f"PAGE_OFFSET {kernel_facts.I386_PAGE_OFFSET:#x}), not a user stack")
    kernel_eip = regs.rip is not None and regs.rip >= kernel_facts.I386_PAGE_OFFSET
    if esp is None or not (kernel_eip or regs.rip_symbol):
        return _Ruling(Verdict.NO_MATCH, DfClass.OTHER,
                       f"32-bit kernel with ESP {_hex(esp)} and no kernel EIP: no mark of the signature")
    # The same hypervisor bug (CPL taken from SS.DPL) leaves a 32-bit guest
    # running kernel code on a user stack.
    user_range = (Evidence("rsp-is-user-address", Status.PASS,
                           f"kernel EIP with ESP {esp:#x}, below PAGE_OFFSET: a user-range stack"),)
    if obs.environment == "bare-metal":
        return _Ruling(Verdict.NO_MATCH, DfClass.BARE_METAL,
                       f"32-bit kernel code on the user-range ESP {esp:#x}, but on bare metal: no "
                       "hypervisor can have corrupted CPL", user_range)
    return _Ruling(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                   f"32-bit kernel code on the user-range ESP {esp:#x}: the mark of the signature, "
                   "not its proof", user_range)


# --- fragments and look-alikes the registers cannot tell apart ---------------------

def _fragment(obs: Observation) -> Optional[_Ruling]:
    """A #DF header without the state it interrupted: the log cannot argue either way.

    ``no-match`` needs a check that argues against the signature; a fragment
    has none, so it is ``possible`` with no class, saying what is missing.
    """
    if obs.registers_missing is None or obs.regs.rsp is not None:
        return None
    missing = Evidence("registers-in-log", Status.UNKNOWN, obs.registers_missing)
    if obs.guard_page_hit:
        # The header itself argues: the kernel said its stack overflowed into the guard page.
        reason = "the kernel reported a stack guard page hit"
        return _Ruling(Verdict.NO_MATCH, DfClass.KERNEL_STACK_OVERFLOW,
                       f"a kernel stack overflow: {reason} (the log shows no registers)",
                       (Evidence("not-a-kernel-stack-overflow", Status.FAIL, reason), missing))
    return _Ruling(Verdict.POSSIBLE, None,
                   f"a #DF whose interrupted state the log does not show ({obs.registers_missing}): "
                   "it can be the signature or not; find a fuller log or the dump", (missing,))


def _rop_pivot_caveat(obs: Observation, ruling: _Ruling) -> _Ruling:
    """Kernel RIP on a user RSP is also what a kernel ROP stack pivot looks like.

    An exploit that pivots the kernel stack onto user memory (QEMU guest or
    not) dies with kernel RIP, user RSP and a #DF, no hypervisor involved.
    Registers alone cannot tell the two apart; memory can.
    """
    cs = obs.regs.cs
    if ruling.verdict is not Verdict.POSSIBLE or ruling.df_class is not DfClass.CPL_CORRUPTION:
        return ruling
    if any(f.kind is FrameKind.CPL0_USER_STACK for f in obs.frames):
        return ruling
    if cs is not None and x86.is_user_cs(cs):
        return ruling
    caveat = Evidence(
        "not-a-rop-stack-pivot", Status.UNKNOWN,
        "kernel code on a user stack is also what a kernel ROP stack pivot onto user memory "
        "leaves (an exploit, no hypervisor involved): the registers cannot tell them apart. "
        "A dump can: the signature leaves CPU-pushed frames (RIP, CS, RFLAGS, RSP, SS) on the "
        "user stack, a pivot leaves a chain of kernel gadget addresses there instead")
    return _Ruling(ruling.verdict, ruling.df_class,
                   ruling.summary + "; a kernel ROP stack pivot onto user memory would look the same",
                   ruling.evidence + (caveat,))


# --- the decisions -------------------------------------------------------------------

def _first_ruling(rules: Sequence[_Rule], obs: Observation, proofs: _Proofs) -> _Ruling:
    for rule in rules:
        ruling = rule(obs, proofs)
        if ruling is not None:
            return ruling
    raise AssertionError("the last rule of every table always rules")


def decide(obs: Observation) -> Decision:
    """Weigh the evidence about one #DF and return the verdict with its reasons."""
    evidence = [_double_fault_present(obs), _running_under_hypervisor(obs)]
    evidence += filter(None, [_paravirtual_selectors(obs)])
    fragment = _fragment(obs)
    if fragment is not None:
        ruling = fragment
    elif obs.arch_bits == 32:
        evidence.append(Evidence("64-bit-kernel", Status.FAIL, "a 32-bit (i386) kernel"))
        ruling = _decide_i386(obs)
    else:
        proofs = _Proofs(_proof_frames_on_user_stack(obs), _proof_cr2_at_first_push_slot(obs),
                         _proof_impossible_ss(obs))
        evidence += [proofs.frames_on_user_stack, proofs.cr2_at_first_push_slot, proofs.impossible_ss,
                     _rsp_is_user_address(obs)]
        evidence += filter(None, [_rsp_in_user_mapping(obs)])
        ruling = _first_ruling(_PROVEN_RULES if proofs.any_passed else _UNPROVEN_RULES, obs, proofs)
    ruling = _rop_pivot_caveat(obs, ruling)
    evidence += ruling.evidence
    # What memory showed besides the proofs: reported, never deciding.
    evidence += filter(None, [_push_slot_page_not_present(obs), _cr2_source(obs)])
    return Decision(ruling.verdict, ruling.df_class, ruling.summary, evidence)


def decide_no_double_fault(medium: Medium, what: str) -> Decision:
    """The decision for an input without any #DF (``what``: the crash it shows instead)."""
    detail = f"no double fault in the {medium.noun}" + (f"; it shows {what}" if what else "")
    return Decision(Verdict.NO_DOUBLE_FAULT, None, detail,
                    [Evidence("double-fault-present", Status.FAIL, detail)])


def _sweep_gaps(obs: SweepObservation, pages_present: int, pages_missing: int) -> list[str]:
    """What the sweep could not read that could have held frames."""
    gaps = []
    if pages_missing:
        gaps.append(f"{pages_missing} resident user stack page(s) could not be read"
                    + ("" if obs.coverage is not None and obs.coverage.live else " from the dump"))
    if obs.tasks_unreadable:
        gaps.append(f"{obs.tasks_unreadable} task(s) could not be read")
    if obs.stacks_not_located:
        gaps.append(f"the stack of {len(obs.stacks_not_located)} task(s) could not be located "
                    f"({obs.stacks_not_located[0]}"
                    + (", ..." if len(obs.stacks_not_located) > 1 else "") + ")")
    coverage = obs.coverage
    if coverage is not None and coverage.pages_beyond_bound:
        # Left unread by the stated bound, not lost: still not read, so never clean.
        gaps.append(f"{coverage.pages_beyond_bound} resident page(s) of anonymous mappings of "
                    f"{len(coverage.processes_beyond_bound)} process(es) were beyond the bound of "
                    f"{coverage.bound_pages_per_process} pages per process "
                    f"({coverage.processes_beyond_bound[0]}"
                    + (", ..." if len(coverage.processes_beyond_bound) > 1 else "") + ")")
    if coverage is not None and coverage.frames_unconfirmed:
        # A candidate that changed between two reads of a running guest may have been a
        # frame the stack then overwrote, or a torn read: neither a frame nor clean.
        gaps.append(f"{coverage.frames_unconfirmed} candidate frame(s) changed between two reads "
                    "of the running guest")
    if obs.tasks_scanned and not pages_present and not gaps:
        gaps.append(f"no user stack page of the {obs.tasks_scanned} task(s) could be read")
    return gaps


def decide_unprinted_crash(medium: Medium, what: str) -> "ReportDecision":
    """The decision for an input that shows a crash happened (``what``) but not its report."""
    detail = f"the {medium.noun} shows {what}, but not the crash report itself"
    return ReportDecision(
        Verdict.POSSIBLE, None,
        f"{detail}: it cannot tell whether it was a double fault, nor which kind; read the "
        "crash's own log (vmcore-dmesg.txt) or the dump",
        [Evidence("double-fault-present", Status.UNKNOWN, detail)], [])


def judge_sweep(obs: SweepObservation) -> SweepResult:
    """The sweep's verdict: frames found, clean, or incomplete (never clean when
    something that could hold frames was not read)."""
    pages_present = sum(stack.pages_present for stack in obs.stacks)
    pages_missing = sum(stack.pages_missing for stack in obs.stacks)
    trails = _trails(obs.frames, obs.version)
    frames, lookalikes = trails.kept, trails.lookalikes
    gaps = _sweep_gaps(obs, pages_present, pages_missing)
    problems = list(obs.problems) + list(obs.stacks_not_located)
    stacks = list(obs.stacks)
    if lookalikes:
        # A user-mode IRETQ leaves the same six words; the kernel's entry code, which
        # ran on that stack after a real CPL-0 delivery, leaves its return address below.
        first = lookalikes[0]
        found = first.entry_return_symbol or f"{first.entry_return:#x}"
        lookalike = (f"{len(lookalikes)} frame-shaped candidate(s) lack the kernel entry code's trail "
                     f"(the word below their pt_regs is not a return address into {trails.caller}...; at "
                     f"{first.address:#x} it is {found}): user code such as a user-mode IRETQ leaves "
                     "such words, a real frame whose trail was overwritten does too")
        gaps.append(lookalike)
        problems.append(lookalike)
        dropped = {f.address for f in lookalikes}
        stacks = [dataclasses.replace(stack, frame_addresses=[a for a in stack.frame_addresses if a not in dropped])
                  if dropped.intersection(stack.frame_addresses) else stack for stack in stacks]
    if frames:
        tasks = {(frame.pid, frame.tid) for frame in frames}
        verdict = SweepVerdict.CPL0_FRAMES_FOUND
        summary = (f"{len(frames)} CPU-pushed frame(s) on the user stacks of {len(tasks)} "
                   "task(s) prove CPL-0 event delivery"
                   + (f" ({trails.trailed} with the kernel entry code's return address below their pt_regs)"
                      if trails.trailed else ""))
    elif gaps:
        verdict = SweepVerdict.INCOMPLETE
        summary = "no frame found, but " + "; ".join(gaps)
    else:
        verdict = SweepVerdict.CLEAN
        summary = f"no frame on the user stacks of {obs.tasks_scanned} task(s) ({pages_present} pages read)"
    return SweepResult(verdict, summary, obs.tasks_scanned, obs.tasks_unreadable, pages_present,
                       pages_missing, stacks, frames, problems, obs.coverage)


def _sweep_evidence(result: SweepResult) -> Evidence:
    status = {SweepVerdict.CPL0_FRAMES_FOUND: Status.PASS,
              SweepVerdict.CLEAN: Status.FAIL}.get(result.verdict, Status.UNKNOWN)
    return Evidence("cpl0-frames-on-any-user-stack", status, f"sweep: {result.summary}")


class ReportDecision(NamedTuple):
    """The verdict of a whole input, over all its #DFs and the sweep."""

    verdict: Verdict
    df_class: Optional[DfClass]
    summary: str
    evidence: list[Evidence]
    explanation: list[str]


def _sweep_proof(sweep: SweepResult) -> str:
    tasks = len({(frame.pid, frame.tid) for frame in sweep.frames})
    return (f"{len(sweep.frames)} CPU-pushed frame(s) on user stacks of {tasks} task(s) prove "
            "CPL-0 event delivery")


def decide_report(medium: Medium, double_faults: Sequence[DoubleFault], other_crash: str,
                  sweep: Optional[SweepResult], release: Optional[str], version: Optional[Version],
                  cpu_vendor: Optional[str], sweep_requested: bool = False,
                  confidential_guest: Optional[str] = None,
                  paravirt: Optional[str] = None) -> ReportDecision:
    """Decide a whole input from its #DFs (already decided) and the sweep, if it ran.

    The top-level verdict answers the user's question, "did the hypervisor corrupt
    the guest's CPL?": ``match`` whenever guest memory proves CPL-0 delivery, by a
    #DF or by the sweep, whatever the crash was.

    :param other_crash: what the input shows when it holds no #DF.
    :param sweep_requested: the user asked for the sweep: its answer leads the summary.
    :param confidential_guest: the confidential-VM kind the dump shows, for :func:`explain`.
    :param paravirt: the paravirtual guest kind the input shows, for :func:`explain`.
    """
    sweep_evidence = [_sweep_evidence(sweep)] if sweep is not None else []
    proven_by_sweep = sweep is not None and sweep.verdict is SweepVerdict.CPL0_FRAMES_FOUND
    explain_cpl = explain(DfClass.CPL_CORRUPTION, release, version, cpu_vendor, confidential_guest,
                          paravirt)
    if not double_faults:
        decision = decide_no_double_fault(medium, other_crash)
        if proven_by_sweep:
            crash = Evidence("double-fault-present", Status.NOT_APPLICABLE,
                             decision.summary + ": the proof is the sweep's, no crash is needed")
            return ReportDecision(Verdict.MATCH, DfClass.CPL_CORRUPTION,
                                  f"no double fault, but {_sweep_proof(sweep)} "
                                  f"(the {medium.noun} shows {other_crash})", [crash] + sweep_evidence, explain_cpl)
        summary = decision.summary
        if sweep_requested and sweep is not None:
            summary = f"sweep {sweep.verdict.value}: {sweep.summary}; {summary}"
        return ReportDecision(decision.verdict, None, summary, decision.evidence + sweep_evidence, [])
    chosen = strongest(double_faults)
    if proven_by_sweep and chosen.verdict is not Verdict.MATCH:
        return ReportDecision(Verdict.MATCH, DfClass.CPL_CORRUPTION,
                              f"{_sweep_proof(sweep)}; the double fault itself: {chosen.summary}",
                              chosen.evidence + sweep_evidence, explain_cpl)
    summary = chosen.summary
    if sweep_requested and sweep is not None and not proven_by_sweep:
        summary = f"{summary}; sweep {sweep.verdict.value}: {sweep.summary}"
    return ReportDecision(chosen.verdict, chosen.df_class, summary, chosen.evidence + sweep_evidence,
                          explain(chosen.df_class, release, version, cpu_vendor, confidential_guest,
                                  paravirt))


def explain(df_class: Optional[DfClass], release: Optional[str], version: Optional[Version],
            cpu_vendor: Optional[str], confidential_guest: Optional[str] = None,
            paravirt: Optional[str] = None) -> list[str]:
    """What a CPL-corruption verdict means, for the report's reader.

    :param confidential_guest: the confidential-VM kind the dump shows (SEV-ES/SNP, TDX),
        whose register state the hypervisor cannot write.
    :param paravirt: the paravirtual guest kind ("Xen PV", "PVM"), whose kernel the CPU
        runs at CPL 3: there the hypervisor's software, not VMCB/VMCS state, is the mode.
    """
    if df_class is not DfClass.CPL_CORRUPTION:
        return []
    if paravirt in _PARAVIRT_SELECTORS:
        return [
            "The guest kernel took an event as if it had been in kernel mode while it ran user "
            "state: no switch to the kernel stack happened, so the frame went onto the user stack.",
            f"This is a {paravirt} guest: {_PARAVIRT_SELECTORS[paravirt]}. The CPU never runs "
            "this guest's kernel at CPL 0, so the known KVM/SVM cause (CPL taken from a zeroed "
            "SS) cannot act on its mode.",
            "What remains: the hypervisor's own tracking of the guest's kernel/user mode and its "
            "event delivery (for PVM the switcher and its switch_flags, for Xen the PV trap "
            "bounce), or, when that hypervisor itself runs in a VM, the outer hypervisor; compare "
            "with the hypervisor's version and fixes.",
        ]
    if confidential_guest:
        return [
            "The CPU delivered an interrupt or exception while the guest's CPL was 0 but its "
            "segment state (and often its code) was the user's: no stack switch happened, so the "
            "CPU pushed its frame onto the user stack.",
            f"This guest is a confidential VM ({confidential_guest}): its register state is "
            "encrypted or owned by the firmware (SEV-ES/SNP VMSA, TDX module) and KVM reads CPL "
            "from what the guest reports (the GHCB for SEV-ES), so the classic hypervisor cause "
            "(KVM/QEMU rewriting SS and CPL) is unlikely.",
            "What remains: the guest's own #VC/#VE handling (an instruction emulated or a GHCB "
            "state written back with a wrong CS/SS), the firmware or security module (SEV "
            "firmware, TDX module) restoring state, or a CPU erratum; compare with the host's "
            "firmware and microcode versions.",
        ]
    lines = [
        "The CPU delivered an interrupt or exception while the guest's CPL was 0 but its "
        "segment state (and often its code) was the user's: no stack switch happened, so the "
        "CPU pushed its frame onto the user stack. A guest cannot do this to itself; the "
        "hypervisor set CPL 0 while the guest ran user code.",
        "Known cause (KVM on AMD/SVM): KVM took the guest CPL from SS.DPL, and an SS marked "
        "unusable (P clear, as AMD CPUs leave it after SYSRET with a NULL SS) was written back "
        "by QEMU with its attributes zeroed, so DPL 0 and CPL 0.",
        "Fixed on the hypervisor side by both halves: " + "; ".join(kernel_facts.HYPERVISOR_FIXES)
        + ". Check the host's KVM and QEMU versions; CVE-2017-2583 (MOV SS, NULL emulation) is "
        "the same class.",
    ]
    if kernel_facts.value_for(kernel_facts.SYSRET_SS_WORKAROUND, version) is False:
        lines.append(f"This guest kernel ({release}) predates the AMD SYSRET SS workaround (4.1), so "
                     "it returns to user mode with SS unusable on AMD CPUs: the state the "
                     "hypervisor mishandled.")
    if cpu_vendor and "AMD" not in cpu_vendor.upper():
        lines.append(f"The guest's CPU vendor is {cpu_vendor}: the known KVM cause is specific to "
                     "AMD (SVM); look at the hypervisor's handling of CPL and SS for this vendor.")
    return lines


def strongest(double_faults: Sequence[DoubleFault]) -> DoubleFault:
    """Return the #DF whose verdict is strongest (the first among equals)."""
    return max(double_faults, key=lambda df: df.verdict.strength)
