"""Where a saved RSP lies, on plain values (the drgn layer only gathers the views)."""

import pytest

from dfforensics.core.model import RegionKind
from dfforensics.core.regions import KernelStack, MappingView, UserView, classify_rsp

STACK = MappingView(0x7FFC1C749000, 0x7FFC1C76B000, "[stack]", False, True, True)
THREAD = MappingView(0x7F05C44FF000, 0x7F05C4CFF000, "", False, False, False, (57,))
ANON = MappingView(0x7F0000000000, 0x7F0000100000, "", False, False, False)
FILE = MappingView(0x10000000, 0x10002000, "/victim", True, False, False)
KERNEL = [KernelStack(0xFFFFC9000000C000, 0xFFFFC90000010000, RegionKind.KERNEL_TASK_STACK, "task stack"),
          KernelStack(0xFFFFC9000000B000, 0xFFFFC9000000C000, RegionKind.KERNEL_GUARD_PAGE, "guard page")]


@pytest.mark.parametrize("rsp, view, kind", [
    (0x7FFC1C749008, UserView(mapping=STACK), RegionKind.USER_STACK),
    # A [stack] renamed or split is still the process stack when it holds mm->start_stack.
    (0x7FFC1C749008, UserView(mapping=MappingView(STACK.start, STACK.end, "", False, False, True)),
     RegionKind.USER_STACK),
    (0x7F05C4CFE000, UserView(mapping=THREAD), RegionKind.USER_THREAD_STACK),
    (0x7F0000000800, UserView(mapping=ANON), RegionKind.USER_ANON),
    (0x10001000, UserView(mapping=FILE), RegionKind.USER_FILE),
    (0x7F0000000800, UserView(), RegionKind.USER_UNMAPPED),
    (0x7F0000000800, UserView(kernel_thread=True), RegionKind.USER_UNMAPPED),
    # Unreadable mappings or an unknown task never read as "no mapping".
    (0x7F0000000800, UserView(unreadable="page not in dump"), RegionKind.USER_RANGE),
    (0x7F0000000800, UserView(task_known=False), RegionKind.USER_RANGE),
    (0x7F0000000800, None, RegionKind.USER_RANGE),
    (0x1000, UserView(mapping=ANON), RegionKind.NEAR_NULL),
    (0x0000900000000000, None, RegionKind.NON_CANONICAL),
])
def test_user_addresses(rsp, view, kind):
    region = classify_rsp(rsp, view, ())
    assert region.kind is kind, region.detail
    assert f"{rsp:#x}" in region.detail


def test_a_growsdown_mapping_without_saved_threads_is_a_thread_stack():
    view = UserView(mapping=MappingView(0x7F0000000000, 0x7F0000100000, "", False, True, False))
    region = classify_rsp(0x7F0000000800, view, ())
    assert region.kind is RegionKind.USER_THREAD_STACK and "none saved now" in region.detail


@pytest.mark.parametrize("rsp, kind", [
    (0xFFFFC9000000FFF0, RegionKind.KERNEL_TASK_STACK),
    (0xFFFFC9000000BFF8, RegionKind.KERNEL_GUARD_PAGE),
    (0xFFFF888000100000, RegionKind.KERNEL_OTHER),
])
def test_kernel_addresses(rsp, kind):
    region = classify_rsp(rsp, None, KERNEL)
    assert region.kind is kind
    if kind is not RegionKind.KERNEL_OTHER:
        assert (region.start, region.end) != (None, None)


def test_kinds_group_as_the_rules_need():
    assert {kind for kind in RegionKind if kind.is_user_mapping} == {
        RegionKind.USER_STACK, RegionKind.USER_THREAD_STACK, RegionKind.USER_ANON, RegionKind.USER_FILE}
    assert not RegionKind.USER_RANGE.is_user_mapping and not RegionKind.USER_UNMAPPED.is_user_mapping
    assert {kind for kind in RegionKind if kind.is_kernel_stack} == {
        RegionKind.KERNEL_TASK_STACK, RegionKind.KERNEL_GUARD_PAGE, RegionKind.IRQ_STACK,
        RegionKind.EXCEPTION_STACK}
