"""The verdict rules on plain values: each rule, and the order between them."""

import pytest

from dfforensics.core.frames import scan_frames, words_to_bytes
from dfforensics.core.model import DfClass, RegionKind, Registers, RspRegion, Verdict
from dfforensics.core.observation import Medium, Observation
from dfforensics.core.verdict import decide


def obs(source="memory", **regs):
    extra = {k: regs.pop(k) for k in list(regs) if k in Observation._fields}
    return Observation(medium=Medium(source), regs=Registers(**regs),
                       environment=extra.pop("environment", "guest"), **extra)


def user_frame(base=0x7F0000001000):
    return list(scan_frames(words_to_bytes(
        [0xFFFFFFFFFFFFFFFF, 0x401000, 0x33, 0x202, base + 48, 0x2B]), base))


def test_rule_i_frames_on_user_stack_prove_it_from_memory():
    decision = decide(obs(rip=0x401000, cs=0x33, rsp=0x7F0000000FF8, ss=0x2B, frames=user_frame(),
                          user_stack_read=True))
    assert (decision.verdict, decision.df_class) == (Verdict.MATCH, DfClass.CPL_CORRUPTION)


def test_rule_i_frames_without_the_entry_trail_are_no_proof():
    # The same frame with the word below its pt_regs read (0x80 below the orig_ax slot on
    # x86_64): user data there, not the idtentry stub's return address a 6.1 kernel leaves.
    base = 0x7F0000001000
    words = [0x7F0000001F00] + [0] * 15 + [0xFFFFFFFFFFFFFFFF, 0x401000, 0x33, 0x202, base + 0x80 + 48, 0x2B]
    frames = list(scan_frames(words_to_bytes(words), base, entry_return_below=0x80))
    assert frames[0].entry_return == 0x7F0000001F00
    decision = decide(obs(rip=0x401000, cs=0x33, rsp=0x7F0000000FF8, ss=0x2B, frames=frames,
                          user_stack_read=True, version=(6, 1, 192)))
    assert decision.verdict is not Verdict.MATCH
    proof = next(e for e in decision.evidence if e.check == "cpl0-frames-on-user-stack")
    assert proof.status.value == "unknown" and "lack the kernel entry code's trail" in proof.detail


def test_rule_ii_cr2_at_first_push_slot_with_user_cs():
    # The builder's 6.1 emulation: RIP 0033:0x40166c RSP 0018:10003000 CR2 10002ff8.
    decision = decide(obs(rip=0x40166C, cs=0x33, rsp=0x10003000, ss=0x18, cr2=0x10002FF8))
    assert decision.verdict is Verdict.MATCH
    checks = {e.check: e.status.value for e in decision.evidence}
    assert checks["cr2-at-first-push-slot"] == "pass" and checks["impossible-ss"] == "pass"


def test_rule_ii_alignment_of_an_rsp_ending_in_8():
    decision = decide(obs(rip=0x40166C, cs=0x33, rsp=0x10003008, ss=0x2B, cr2=0x10002FF8))
    assert decision.verdict is Verdict.MATCH


def test_rule_iii_kernel_state_with_user_ss_even_in_a_stack_overflow():
    decision = decide(obs(rip=0xFFFFFFFF81000000, cs=0x10, rsp=0xFFFFC90000003F58, ss=0x2B,
                          guard_page_hit=True))
    assert decision.verdict is Verdict.MATCH


def test_a_log_is_never_better_than_possible():
    decision = decide(obs("log", rip=0x40166C, cs=0x33, rsp=0x10003000, ss=0x18, cr2=0x10002FF8))
    assert decision.verdict is Verdict.POSSIBLE


def test_bare_metal_overrides_the_signature():
    decision = decide(obs(rip=0x40166C, cs=0x33, rsp=0x10003000, ss=0x18, cr2=0x10002FF8,
                          environment="bare-metal"))
    assert (decision.verdict, decision.df_class) == (Verdict.NO_MATCH, DfClass.BARE_METAL)


def test_wild_rsp_near_zero_looks_like_the_signature_but_is_not():
    # The look-alike: kernel RIP, RSP 0x1000, CR2 = RSP-8.
    decision = decide(obs(rip=0xFFFFFFFFC0000000, cs=0x10, rsp=0x1000, ss=0x18, cr2=0xFF8))
    assert (decision.verdict, decision.df_class) == (Verdict.NO_MATCH, DfClass.WILD_RSP)


def test_user_range_rsp_in_no_mapping_is_wild_from_memory():
    region = RspRegion(RegionKind("user-unmapped"), "RSP lies in no VMA of the task")
    decision = decide(obs(rip=0xFFFFFFFFC0000000, cs=0x10, rsp=0x7000000000, ss=0x18,
                          rsp_region=region, user_stack_read=False))
    assert decision.df_class is DfClass.WILD_RSP


def test_kernel_code_on_a_user_stack_without_proof_is_possible():
    region = RspRegion(RegionKind("user-stack"), "[stack]")
    decision = decide(obs(rip=0xFFFFFFFFC0000000, cs=0x10, rsp=0x7FFD00001000, ss=0x18,
                          rsp_region=region, user_stack_read=False, user_stack_problem="page missing"))
    assert (decision.verdict, decision.df_class) == (Verdict.POSSIBLE, DfClass.CPL_CORRUPTION)


@pytest.mark.parametrize("rsp, cr2, region, expected", [
    (0xFFFFC90000010000, 0xFFFFC9000000FFF8, None, DfClass.KERNEL_STACK_OVERFLOW),
    (0xFFFFC90000013F00, 0x6001, None, DfClass.OTHER),
    (0xFFFFC90000013F00, None, RspRegion(RegionKind("kernel-guard-page"), "guard page"), DfClass.KERNEL_STACK_OVERFLOW),
])
def test_kernel_rsp(rsp, cr2, region, expected):
    decision = decide(obs(rip=0xFFFFFFFF81000000, cs=0x10, rsp=rsp, ss=0x18, cr2=cr2, rsp_region=region))
    assert (decision.verdict, decision.df_class) == (Verdict.NO_MATCH, expected)


def test_syscall_entry_window():
    decision = decide(obs(rip=0xFFFFFFFF81A00003, rip_symbol="entry_SYSCALL_64+0x3/0x29", cs=0x10,
                          rsp=0x7F2A8BCBD438, ss=0x18))
    assert decision.df_class is DfClass.SYSCALL_ENTRY_WINDOW


def test_every_decision_explains_itself():
    decision = decide(obs(rip=0xFFFFFFFF81000000, cs=0x10, rsp=0xFFFFC90000013F00, ss=0x18))
    assert decision.summary and all(e.detail for e in decision.evidence)


def test_a_dump_without_user_pages_is_never_better_than_possible():
    # Rule (ii) from kernel-side state alone, but the dump level dropped the
    # user pages that would show the push slot and the frames.
    decision = decide(obs(rip=0x40166C, cs=0x33, rsp=0x10003000, ss=0x2B, cr2=0x10002FF8,
                          user_pages_excluded=True))
    assert (decision.verdict, decision.df_class) == (Verdict.POSSIBLE, DfClass.CPL_CORRUPTION)
    assert any(e.check == "user-pages-in-dump" for e in decision.evidence)


def test_a_guard_page_header_without_registers_is_still_a_stack_overflow():
    # "BUG: stack guard page was hit at ..." and the log cut right after: the kernel's own
    # words argue against the signature, so this look-alike must not read as possible.
    decision = decide(obs(source="log", guard_page_hit=True, registers_missing="the log ends there"))
    assert (decision.verdict, decision.df_class) == (Verdict.NO_MATCH, DfClass.KERNEL_STACK_OVERFLOW)
    assert {e.check for e in decision.evidence} >= {"not-a-kernel-stack-overflow", "registers-in-log"}
