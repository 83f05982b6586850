"""
Verdict rules
-------------

Evidence in, verdict out. Every rule that decides whether a double fault is
the hypervisor's CPL corruption lives here, for console logs and dumps alike.
Pure: no drgn.

The signature is proven by any one of:

(i) a self-consistent frame pushed without a stack switch onto a user stack;
(ii) the #DF's saved state is user code (CS RPL 3) on a user stack, and CR2 is
     the CPU's first push slot below that RSP: the CPU's own push faulted,
     which cannot happen at CPL 3, where every event switches stacks;
(iii) state saved with an SS that a healthy kernel never has with that CS
     (kernel CS with anything but SS 0/0x18; user CS with SS RPL 0).

A console log can show these marks but never prove them: from a log the best
verdict is ``possible``.
"""

from dataclasses import dataclass, field
from typing import Final, Optional, Sequence

from dfforensics.core import kernel_facts, x86
from dfforensics.core.model import DfClass, DoubleFault, Evidence, Frame, Registers, RspRegion, Status, Verdict

__all__ = ("Observation", "Decision", "decide", "decide_no_double_fault", "explain", "strongest")

# Kernel pointers in a register dump whose low 32 bits lie this close to a
# small RSP betray a kernel stack pointer truncated to 32 bits.
_TRUNCATION_WINDOW: Final = 0x10000
# RSP region kinds that are kernel stacks (from the dump layer).
_KERNEL_STACK_REGIONS: Final = frozenset(
    {"kernel-task-stack", "kernel-guard-page", "irq-stack", "exception-stack"}
)
_USER_MAPPED_REGIONS: Final = frozenset(
    {"user-stack", "user-thread-stack", "user-anon", "user-file"}
)


@dataclass
class Observation:
    """What is known about one #DF, from a log or from memory."""

    #: "log" or "memory".
    source: str
    regs: Registers
    arch_bits: int = 64
    release: Optional[str] = None
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
    #: Memory only: whether the user stack could be read (None: not tried).
    user_stack_read: Optional[bool] = None
    #: Why the user stack could not be read, when it could not.
    user_stack_problem: Optional[str] = None
    #: The #DF happened inside a firmware call (the log said so).
    firmware_context: Optional[str] = None
    #: The dump's level excluded user pages (makedumpfile -d with bit 8).
    user_pages_excluded: bool = False


@dataclass
class Decision:
    verdict: Verdict
    df_class: Optional[DfClass]
    summary: str
    evidence: list[Evidence] = field(default_factory=list)


def _hex(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:#x}"


def _in_syscall_window(symbol: Optional[str], release: Optional[str]) -> bool:
    if not symbol:
        return False
    name = symbol.split("+", 1)[0].strip()
    version = kernel_facts.parse_release(release) if release else None
    windows = kernel_facts.candidates(kernel_facts.SYSCALL_ENTRY_WINDOW, version)
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
    version = kernel_facts.parse_release(obs.release) if obs.release else None
    if version is not None:
        return version < kernel_facts.X86_64_EARLY_LAYOUT_UNTIL
    return any(low <= pointer < high for pointer in obs.kernel_pointers)


def _check(evidence: list[Evidence], check: str, status: Status, detail: str) -> Status:
    evidence.append(Evidence(check, status, detail))
    return status


def decide_no_double_fault(source: str, what: str) -> Decision:
    """The decision for an input without any #DF."""
    detail = f"no double fault in the {source}" + (f"; it shows {what}" if what else "")
    return Decision(
        Verdict.NO_DOUBLE_FAULT,
        None,
        detail,
        [Evidence("double-fault-present", Status.FAIL, detail)],
    )


def _decide_i386(obs: Observation, evidence: list[Evidence]) -> Decision:
    regs = obs.regs
    esp = regs.rsp
    if obs.firmware_context:
        return Decision(Verdict.NO_MATCH, DfClass.OTHER,
                        f"32-bit #DF inside a firmware call ({obs.firmware_context}): its ESP "
                        f"{_hex(esp)} is an offset in a BIOS stack segment", evidence)
    if _in_syscall_window(regs.rip_symbol, obs.release):
        return Decision(Verdict.NO_MATCH, DfClass.SYSCALL_ENTRY_WINDOW,
                        f"32-bit #DF at {regs.rip_symbol}, on the stack SYSENTER/SYSCALL named "
                        f"(ESP {_hex(esp)}): an entry-path problem, not the hypervisor's CPL",
                        evidence)
    if esp is not None and esp < x86.MMAP_MIN_ADDR:
        return Decision(Verdict.NO_MATCH, DfClass.WILD_RSP,
                        f"32-bit kernel with ESP {_hex(esp)}: no stack at all", evidence)
    if esp is not None and esp >= kernel_facts.I386_PAGE_OFFSET:
        return Decision(Verdict.NO_MATCH, DfClass.KERNEL_ADDRESS_SPACE,
                        f"32-bit kernel: ESP {_hex(esp)} is a kernel address (at or above "
                        f"PAGE_OFFSET {kernel_facts.I386_PAGE_OFFSET:#x}), not a user stack",
                        evidence)
    kernel_eip = regs.rip is not None and regs.rip >= kernel_facts.I386_PAGE_OFFSET
    if esp is not None and (kernel_eip or regs.rip_symbol):
        # The same hypervisor bug (CPL taken from SS.DPL) leaves a 32-bit guest
        # running kernel code on a user stack.
        _check(evidence, "rsp-is-user-address", Status.PASS,
               f"kernel EIP with ESP {esp:#x}, below PAGE_OFFSET: a user-range stack")
        if obs.environment == "bare-metal":
            return Decision(Verdict.NO_MATCH, DfClass.BARE_METAL,
                            f"32-bit kernel code on the user-range ESP {esp:#x}, but on bare "
                            "metal: no hypervisor can have corrupted CPL", evidence)
        return Decision(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                        f"32-bit kernel code on the user-range ESP {esp:#x}: the mark of the "
                        "signature, not its proof", evidence)
    return Decision(Verdict.NO_MATCH, DfClass.OTHER,
                    f"32-bit kernel with ESP {_hex(esp)} and no kernel EIP: no mark of the "
                    "signature", evidence)


def decide(obs: Observation) -> Decision:
    """Weigh the evidence about one #DF and return the verdict with its reasons."""
    regs = obs.regs
    evidence: list[Evidence] = []
    _check(evidence, "double-fault-present", Status.PASS, f"#DF seen in the {obs.source}")
    env_status = {"guest": Status.PASS, "bare-metal": Status.FAIL}.get(obs.environment, Status.UNKNOWN)
    _check(evidence, "running-under-hypervisor", env_status,
           {"guest": f"the guest saw a hypervisor ({obs.hypervisor or 'unnamed'})",
            "bare-metal": f"bare metal ({obs.hypervisor or 'no hypervisor named'}): "
                          "a hypervisor cannot be the cause"}.get(
               obs.environment, "the input does not say whether this ran under a hypervisor"))

    if obs.arch_bits == 32:
        _check(evidence, "64-bit-kernel", Status.FAIL, "a 32-bit (i386) kernel")
        return _decide_i386(obs, evidence)

    rsp, cs, ss, cr2 = regs.rsp, regs.cs, regs.ss, regs.cr2

    # (i) CPU-pushed frames on a user stack.
    user_frames = [f for f in obs.frames if f.stack == "user" and f.consistent]
    if user_frames:
        status_i = _check(evidence, "cpl0-frames-on-user-stack", Status.PASS,
                          f"{len(user_frames)} self-consistent frame(s) pushed without a stack "
                          f"switch onto a user stack, first at {user_frames[0].address:#x}")
    elif obs.user_stack_read:
        status_i = _check(evidence, "cpl0-frames-on-user-stack", Status.FAIL,
                          "the user stack was read and holds no self-consistent frame")
    else:
        status_i = _check(evidence, "cpl0-frames-on-user-stack", Status.UNKNOWN,
                          obs.user_stack_problem or "no user stack memory in the input")

    # (ii) user state with CR2 at the first push slot.
    if cs is None or rsp is None:
        status_ii = _check(evidence, "cr2-at-first-push-slot", Status.UNKNOWN,
                           "the saved CS or RSP is not known")
    elif x86.rpl(cs) != 3:
        status_ii = _check(evidence, "cr2-at-first-push-slot", Status.FAIL,
                           f"the #DF interrupted kernel code (CS {cs:#x}), not user code")
    elif cr2 is None:
        status_ii = _check(evidence, "cr2-at-first-push-slot", Status.UNKNOWN,
                           f"user CS {cs:#x} but CR2 is not known")
    elif cr2 == x86.first_push_slot(rsp) and x86.is_plausible_user_pointer(rsp):
        status_ii = _check(evidence, "cr2-at-first-push-slot", Status.PASS,
                           f"user CS {cs:#x}, RSP {rsp:#x} and CR2 {cr2:#x} = (RSP & ~0xf) - 8: "
                           "the CPU's own push onto the user stack faulted")
    else:
        status_ii = _check(evidence, "cr2-at-first-push-slot", Status.FAIL,
                           f"CR2 {cr2:#x} is not the first push slot "
                           f"{x86.first_push_slot(rsp):#x} below RSP {rsp:#x}")

    # (iii) impossible SS, in the #DF's own state or in frames found.
    ss_frames = [f for f in obs.frames if f.impossible_ss]
    regs_impossible = (
        cs is not None and ss is not None
        and ((cs == x86.KERNEL_CS and ss not in x86.HEALTHY_KERNEL_SS)
             or (x86.rpl(cs) == 3 and x86.rpl(ss) != 3))
    )
    if regs_impossible:
        status_iii = _check(evidence, "impossible-ss", Status.PASS,
                            f"CS {cs:#x} saved with SS {ss:#x} ({x86.selector_name(ss)}): a healthy "
                            "kernel never has that pair, so an event was delivered at CPL 0 with "
                            "user segment state")
    elif ss_frames:
        status_iii = _check(evidence, "impossible-ss", Status.PASS,
                            f"{len(ss_frames)} frame(s) saved CS {ss_frames[0].cs:#x} with SS "
                            f"{ss_frames[0].ss:#x}, first at {ss_frames[0].address:#x}")
    elif cs is None or ss is None:
        status_iii = _check(evidence, "impossible-ss", Status.UNKNOWN, "the saved CS or SS is not known")
    else:
        status_iii = _check(evidence, "impossible-ss", Status.FAIL,
                            f"CS {cs:#x} with SS {ss:#x} is a healthy pair")

    user_rsp = rsp is not None and x86.is_plausible_user_pointer(rsp)
    if rsp is None:
        _check(evidence, "rsp-is-user-address", Status.UNKNOWN, "the saved RSP is not known")
    else:
        _check(evidence, "rsp-is-user-address", Status.PASS if user_rsp else Status.FAIL,
               f"RSP {rsp:#x} is " + ("a user-space address" if user_rsp else
                                      "not a mappable user-space address"))
    if obs.rsp_region is not None:
        mapped = obs.rsp_region.kind in _USER_MAPPED_REGIONS
        _check(evidence, "rsp-in-user-mapping", Status.PASS if mapped else Status.FAIL,
               obs.rsp_region.detail)

    proven = Status.PASS in (status_i, status_ii, status_iii)
    if proven:
        if obs.environment == "bare-metal":
            return Decision(Verdict.NO_MATCH, DfClass.BARE_METAL,
                            "the CPU delivered events at CPL 0 with user state, but on bare "
                            "metal: no hypervisor can have corrupted CPL", evidence)
        if obs.user_pages_excluded:
            _check(evidence, "user-pages-in-dump", Status.UNKNOWN,
                   "the dump level excluded user pages (makedumpfile -d with bit 8): the user "
                   "stack, where the proof lives, was not captured")
            return Decision(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                            "the marks of the CPL-corruption signature, but the dump left out the "
                            "user pages that would prove it (take dumps with a level without bit 8)",
                            evidence)
        if obs.source == "log":
            _check(evidence, "proof-from-memory", Status.UNKNOWN,
                   "a console log shows the marks but cannot prove them; the dump can")
            return Decision(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                            "the log shows the marks of the CPL-corruption signature "
                            "(events delivered at CPL 0 with user state); a dump can prove it",
                            evidence)
        return Decision(Verdict.MATCH, DfClass.CPL_CORRUPTION,
                        "proven from guest memory: the CPU delivered events at CPL 0 with user "
                        "state, the CPL-corruption signature", evidence)

    if _in_syscall_window(regs.rip_symbol, obs.release):
        _check(evidence, "outside-syscall-entry-window", Status.FAIL,
               f"RIP {regs.rip_symbol} runs on the user RSP by design")
        return Decision(Verdict.NO_MATCH, DfClass.SYSCALL_ENTRY_WINDOW,
                        f"#DF at {regs.rip_symbol}, inside the SYSCALL entry/exit window where RSP "
                        "is the user's by design: a per-CPU/GS or entry-code problem", evidence)

    if rsp is None:
        return Decision(Verdict.NO_MATCH, DfClass.OTHER,
                        "a #DF whose saved registers are not known: no mark of the signature",
                        evidence)

    if not x86.is_canonical(rsp) or rsp < x86.MMAP_MIN_ADDR:
        return Decision(Verdict.NO_MATCH, DfClass.WILD_RSP,
                        f"RSP {rsp:#x} is " + ("non-canonical" if not x86.is_canonical(rsp)
                                               else "below mmap_min_addr") +
                        ": kernel code ran on a wild stack pointer", evidence)

    if cs == x86.KERNEL_CS and rsp % 8:
        return Decision(Verdict.NO_MATCH, DfClass.WILD_RSP,
                        f"kernel code with RSP {rsp:#x}, not 8-byte aligned: the kernel never "
                        "runs on such a stack pointer, it is garbage", evidence)

    if x86.is_user_address(rsp):
        if _old_direct_map(rsp, obs):
            return Decision(Verdict.NO_MATCH, DfClass.KERNEL_ADDRESS_SPACE,
                            f"RSP {rsp:#x} is in the direct map of x86_64 kernels before 2.6.11 "
                            "(PAGE_OFFSET 0x10000000000), a kernel stack", evidence)
        truncated = _truncated_kernel_pointer(rsp, obs.kernel_pointers)
        if truncated is not None:
            return Decision(Verdict.NO_MATCH, DfClass.WILD_RSP,
                            f"RSP {rsp:#x} is the kernel address {truncated:#x} cut to 32 bits: "
                            "kernel code loaded a truncated stack pointer", evidence)
        # Only a positive "no mapping" makes it wild; unreadable mappings do not.
        if obs.rsp_region is not None and obs.rsp_region.kind == "user-unmapped":
            return Decision(Verdict.NO_MATCH, DfClass.WILD_RSP,
                            f"RSP {rsp:#x} lies in no mapping of the task: a wild stack "
                            "pointer, not a user stack", evidence)
        if cs is not None and x86.rpl(cs) == 3 and status_ii == Status.FAIL:
            return Decision(Verdict.NO_MATCH, DfClass.OTHER,
                            "a #DF from user mode whose fault address is not on the user stack: "
                            "the switch to the kernel stack failed (TSS/RSP0 problem)", evidence)
        if obs.environment == "bare-metal":
            return Decision(Verdict.NO_MATCH, DfClass.BARE_METAL,
                            f"user RSP {rsp:#x} at a #DF, but on bare metal: no hypervisor can "
                            "have corrupted CPL", evidence)
        reason = ("from a console log" if obs.source == "log"
                  else obs.user_stack_problem or "no frame proves it")
        return Decision(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                        f"a #DF with the user RSP {rsp:#x} ({reason}): the mark of the signature, "
                        "not its proof", evidence)

    # A kernel RSP.
    overflow_reason = None
    if obs.guard_page_hit:
        overflow_reason = "the kernel reported a stack guard page hit"
    elif obs.rsp_region is not None and obs.rsp_region.kind in _KERNEL_STACK_REGIONS:
        overflow_reason = obs.rsp_region.detail
    elif cr2 is not None and x86.first_push_slot(rsp) - 0x100 <= cr2 <= x86.first_push_slot(rsp):
        overflow_reason = f"CR2 {cr2:#x} is just below the kernel RSP {rsp:#x}: a push ran off the stack"
    elif rsp % 0x1000 == 0 and cr2 is not None and rsp - 0x1000 <= cr2 < rsp:
        overflow_reason = f"RSP {rsp:#x} sits on a page boundary and CR2 {cr2:#x} in the page below"
    if overflow_reason:
        _check(evidence, "not-a-kernel-stack-overflow", Status.FAIL, overflow_reason)
        return Decision(Verdict.NO_MATCH, DfClass.KERNEL_STACK_OVERFLOW,
                        f"a kernel stack overflow: {overflow_reason}", evidence)
    return Decision(Verdict.NO_MATCH, DfClass.OTHER,
                    f"a #DF on the kernel stack {rsp:#x} with healthy segment state: "
                    "no mark of the signature", evidence)


def explain(df_class: Optional[DfClass], release: Optional[str], cpu_vendor: Optional[str]) -> list[str]:
    """What a CPL-corruption verdict means, for the report's reader."""
    if df_class is not DfClass.CPL_CORRUPTION:
        return []
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
    version = kernel_facts.parse_release(release) if release else None
    workaround = kernel_facts.facts_for(kernel_facts.SYSRET_SS_WORKAROUND, version)
    if version is not None and workaround and not workaround[0].value:
        lines.append(f"This guest kernel ({release}) predates the AMD SYSRET SS workaround (4.1), so "
                     "it returns to user mode with SS unusable on AMD CPUs: the state the "
                     "hypervisor mishandled.")
    if cpu_vendor and "AMD" not in cpu_vendor.upper():
        lines.append(f"The guest's CPU vendor is {cpu_vendor}: the known KVM cause is specific to "
                     "AMD (SVM); look at the hypervisor's handling of CPL and SS for this vendor.")
    return lines


def strongest(double_faults: list[DoubleFault]) -> DoubleFault:
    """Return the #DF whose verdict is strongest (the first among equals)."""
    return max(double_faults, key=lambda df: df.verdict.strength)
