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
