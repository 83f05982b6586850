"""The sweep's verdict on plain observations: clean only when everything that could hold a
frame was read."""

from dfforensics.core.frames import scan_frames, words_to_bytes
from dfforensics.core.model import SweepVerdict, SweptStack
from dfforensics.core.observation import SweepObservation
from dfforensics.core.verdict import judge_sweep

READ = SweptStack(40, 40, "sv-main", "[stack]", 0x7FFFFDDDE000, 0x7FFFFDDFF000, 12, 0, [], 21)


def test_all_read_and_no_frame_is_clean():
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(READ,)))
    assert result.verdict is SweepVerdict.CLEAN and "12 pages read" in result.summary


def test_frames_found():
    (frame,) = scan_frames(words_to_bytes([0xFFFFFFFFFFFFFFFF, 0x401000, 0x33, 0x202,
                                           0x7F0000001030, 0x2B]), 0x7F0000001000)
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(READ,), frames=(frame,)))
    assert result.verdict is SweepVerdict.CPL0_FRAMES_FOUND


def test_missing_pages_make_it_incomplete():
    stack = SweptStack(40, 40, "sv-main", "[stack]", 0, 0x1000, 3, 2, [])
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(stack,)))
    assert result.verdict is SweepVerdict.INCOMPLETE and "2 resident" in result.summary


def test_a_stack_that_could_not_be_located_is_never_clean():
    # A kernel whose pt_regs the reader misplaced (7.2 with FRED padding) gives RSPs in no mapping.
    result = judge_sweep(SweepObservation(
        tasks_scanned=2, stacks=(READ,),
        stacks_not_located=("victim (pid 41, tid 41): its saved user RSP 0x1 lies in no mapping",)))
    assert result.verdict is SweepVerdict.INCOMPLETE
    assert "could not be located" in result.summary and "victim (pid 41" in result.summary


def test_tasks_scanned_but_no_page_read_is_incomplete():
    empty = SweptStack(40, 40, "sv-main", "[stack]", 0, 0x1000, 0, 0, [], 0)
    result = judge_sweep(SweepObservation(tasks_scanned=6, stacks=(empty,)))
    assert result.verdict is SweepVerdict.INCOMPLETE and "no user stack page" in result.summary


def test_unreadable_tasks_make_it_incomplete():
    result = judge_sweep(SweepObservation(tasks_scanned=1, tasks_unreadable=1, stacks=(READ,)))
    assert result.verdict is SweepVerdict.INCOMPLETE


# The user stack below a CPL-0 timer interrupt on 6.1, as the fixtures show it: the CPU's
# frame at 0x7f00000019d0 (orig_ax -1 first), the 15 GPRs of pt_regs below it, and below
# pt_regs the idtentry stub's return address (offsetof(struct pt_regs, orig_ax) + 8 = 0x80
# below the orig_ax slot on x86_64).
STUB_RETURN = 0xFFFFFFFF8140100B
BELOW = 0x80


def _stack(word_below_pt_regs):
    words = [word_below_pt_regs] + [0x1111] * 15 + [0xFFFFFFFFFFFFFFFF, 0x10001CCC, 0x33, 0x202,
                                                     0x7F0000001A00, 0x2B]
    (frame,) = scan_frames(words_to_bytes(words), 0x7F0000001950, entry_return_below=BELOW)
    return frame


def _named(frame, symbol):
    import dataclasses
    return dataclasses.replace(frame, entry_return_symbol=symbol, pid=40, tid=40)


def test_the_word_below_pt_regs_is_recorded_from_the_bytes():
    frame = _stack(STUB_RETURN)
    assert frame.address == 0x7F00000019D0 and frame.entry_return == STUB_RETURN


def test_a_frame_with_the_entry_trail_proves_and_says_so():
    frame = _named(_stack(STUB_RETURN), "asm_sysvec_apic_timer_interrupt+0xb")
    stack = SweptStack(40, 40, "sv-main", "[stack]", 0x7F0000000000, 0x7F0000002000, 2, 0, [frame.address])
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(stack,), frames=(frame,), version=(6, 1, 192)))
    assert result.verdict is SweepVerdict.CPL0_FRAMES_FOUND
    assert "1 with the kernel entry code's return address" in result.summary


def test_a_user_mode_iretq_look_alike_is_never_a_finding():
    # User code that pushed SS, RSP, RFLAGS, CS, RIP and ran IRETQ leaves the same six words,
    # but below them only its own data: no return address into the kernel's entry code.
    lookalike = _named(_stack(0x7F0000001F00), None)
    stack = SweptStack(40, 40, "jit", "[stack]", 0x7F0000000000, 0x7F0000002000, 2, 0, [lookalike.address])
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(stack,), frames=(lookalike,),
                                          version=(6, 1, 192)))
    assert result.verdict is SweepVerdict.INCOMPLETE and result.frames == []
    assert "lack the kernel entry code's trail" in result.summary and "0x7f0000001f00" in result.summary
    assert result.stacks[0].frame_addresses == []


def test_a_kernel_return_address_of_another_function_is_no_trail_either():
    wrong = _named(_stack(0xFFFFFFFF81234567), "do_syscall_64+0x57")
    result = judge_sweep(SweepObservation(tasks_scanned=1, frames=(wrong,), version=(7, 2, 13)))
    assert result.verdict is SweepVerdict.INCOMPLETE


def test_on_5_10_the_trail_is_error_entry_s_own_return_address():
    frame = _named(_stack(0xFFFFFFFF81A0105C), "error_entry+0x5c")
    assert judge_sweep(SweepObservation(tasks_scanned=1, frames=(frame,), version=(5, 10, 223))).verdict \
        is SweepVerdict.CPL0_FRAMES_FOUND
    stub = _named(_stack(STUB_RETURN), "asm_sysvec_apic_timer_interrupt+0xb")
    assert judge_sweep(SweepObservation(tasks_scanned=1, frames=(stub,), version=(5, 10, 223))).verdict \
        is SweepVerdict.INCOMPLETE


def test_without_the_word_or_the_version_the_trail_cannot_tell_and_does_not_decide():
    unread = _named(scan_frames(words_to_bytes([0xFFFFFFFFFFFFFFFF, 0x401000, 0x33, 0x202, 0x7F0000001030,
                                                0x2B]), 0x7F0000001000, entry_return_below=BELOW).__next__(),
                    None)
    assert unread.entry_return is None
    for frame, version in ((unread, (6, 1, 192)), (_named(_stack(0x1234), None), None)):
        assert judge_sweep(SweepObservation(tasks_scanned=1, frames=(frame,), version=version)).verdict \
            is SweepVerdict.CPL0_FRAMES_FOUND
