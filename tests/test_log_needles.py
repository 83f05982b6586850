"""The needles of the log formats' headers (dfforensics/logs/consolelog.py Header.needles):
a line holding none of a header's needles is not tried against its regex, so every line of
the real-log corpus (and the seed report) that a header's regex matches anywhere must hold
one of them; and each needle is text the regex spells out."""

import re
from pathlib import Path

import pytest

from dfforensics.logs import consolelog

DATA = Path(__file__).parent / "data"
HEADERS = consolelog.DF_HEADERS + consolelog.OTHER_CRASH_HEADERS + consolelog.NON_FATAL_REPORTS
LOGS = sorted((DATA / "logs").glob("*.log")) + [DATA / "kvm-svm-cpl-double-fault-report.txt"]


def lines():
    for path in LOGS:
        text = path.read_text(errors="replace")
        yield from text.splitlines()
        yield from consolelog.normalize_lines(text)


@pytest.mark.parametrize("header", HEADERS, ids=lambda h: h.name)
def test_every_line_a_header_matches_holds_one_of_its_needles(header):
    matched = 0
    for line in lines():
        if header.pattern.search(line):
            matched += 1
            assert any(needle in line for needle in header.needles), (header.name, line)
    # Rows the corpus has no line for are checked by their needles' spelling below.
    assert matched or header.name not in {"panic-double-fault", "die-double-fault", "general-protection", "oops",
                                           "panic", "warning"}


# One line each row's regex matches in every spelling it allows that the corpus lacks.
EXAMPLES = {
    "panic-double-fault-i386": ["double fault, gdt at c1234000 [255 bytes]", "PANIC: double fault, gdt at c0400000"],
    "panic-double-fault": ["PANIC: double fault, error_code: 0x0"],
    "die-double-fault": ["double fault: 0000 [#1] SMP", "Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI"],
    "guard-page-hit": ["BUG: stack guard page was hit at 00000000deadbeef (stack is 1..2)",
                       "BUG: IRQ stack guard page was hit at ffffc90000003ff8"],
    "kernel-stack-overflow": ["kernel stack overflow (double-fault): 0000 [#1] SMP"],
    "die-guard-page": ["stack guard page: 0000 [#1] PREEMPT SMP", "Oops: stack guard page: 0000 [#1] SMP"],
    "general-protection": ["general protection fault: 0000 [#1] SMP",
                           "general protection fault, probably for non-canonical address 0xdead: 0000 [#1]"],
    "page-fault-oops": ["BUG: unable to handle kernel paging request at ffff8800", "BUG: unable to handle page fault "
                        "for address: 0000000000000008", "BUG: kernel NULL pointer dereference, address: 0000000000000000",
                        "BUG: unable to handle kernel NULL pointer dereference at 0000000000000008"],
    "page-fault-oops-2.6": ["Unable to handle kernel NULL pointer dereference at virtual address 00000000"],
    "vc-panic": ["#VC exception: unsupported", "VMM communication exception: 0000 [#1]"],
    "die-other": ["divide error: 0000 [#1] SMP", "Oops: invalid opcode: 0000 [#1] PREEMPT SMP", "int3: 0000 [#1]",
                  "stack segment: 0000 [#1] SMP", "overflow: 0000 [#1]"],
    "kernel-bug": ["kernel BUG at mm/slub.c:123!", "Kernel BUG at fs/ext4/inode.c:42"],
    "oops": ["Oops: 0000 [#1] SMP"],
    "panic": ["Kernel panic - not syncing: Fatal exception"],
    "guard-page-page-fault": ["kernel stack overflow (page fault): 0000 [#1] SMP"],
    "user-trap": ["traps: a.out[123] general protection fault ip:401000 sp:7ffd0000 error:0 in a.out[401000+1000]"],
    "warning": ["WARNING: CPU: 0 PID: 1 at kernel/fork.c:10 copy_process+0x1/0x2", "WARNING: inconsistent lock state"],
    "kasan": ["BUG: KASAN: use-after-free in foo+0x1/0x2"],
    "soft-lockup": ["BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]"],
    "rcu-stall": ["rcu: INFO: rcu_sched self-detected stall on CPU", "INFO: rcu_preempt detected stalls on CPUs/tasks:"],
    "hung-task": ["INFO: task kworker/0:1:12 blocked for more than 120 seconds."],
}


@pytest.mark.parametrize("header", HEADERS, ids=lambda h: h.name)
def test_each_spelling_a_header_allows_holds_a_needle(header):
    for line in EXAMPLES[header.name]:
        assert header.pattern.search(line), (header.name, line)
        assert any(needle in line for needle in header.needles), (header.name, line)


def test_every_header_has_examples():
    assert set(EXAMPLES) == {header.name for header in HEADERS}


# parse_log drops, before its search line by line, the headers whose needles the whole log
# (its lines joined by newlines) lacks, and the paravirtual rows whose pattern the whole log,
# read as lines (MULTILINE), does not match: both must keep every row a line matches.

def test_no_needle_spans_lines():
    assert all("\n" not in needle and needle for header in HEADERS for needle in header.needles)


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_the_whole_log_keeps_every_header_and_paravirt_row_a_line_matches(path):
    lines = consolelog.normalize_lines(path.read_text(errors="replace"))
    whole_log = "\n".join(lines)
    kept = set(consolelog._headers_in(HEADERS, whole_log))
    for header in HEADERS:
        if any(header.pattern.search(line) for line in lines):
            assert header in kept, header.name
    for row in consolelog.PARAVIRT_GUESTS:
        if any(re.search(row.regex, line) for line in lines):
            assert re.search(row.regex, whole_log, re.MULTILINE), row.hypervisor


def test_paravirt_rows_hold_no_anchor_multiline_reading_would_move():
    # \A and \Z match at a line's ends but only at the ends of the whole log.
    assert not any(anchor in row.regex for row in consolelog.PARAVIRT_GUESTS for anchor in (r"\A", r"\Z"))


def test_a_header_absent_from_the_log_is_not_tried():
    text = "Linux version 6.1.0\nKernel panic - not syncing: Fatal exception\n"
    kept = consolelog._headers_in(consolelog.OTHER_CRASH_HEADERS, text)
    assert [header.name for header in kept] == ["panic"]
    assert consolelog._headers_in(consolelog.DF_HEADERS, text) == ()
