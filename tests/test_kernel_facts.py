"""Kernel facts: each table gives the right row for each version, with no gap or overlap."""

import re

import pytest

from dfforensics.core import kernel_facts
from dfforensics.core.kernel_facts import Fact, candidates, parse_release, value_for

TABLES = {name: getattr(kernel_facts, name) for name in kernel_facts.__all__
          if isinstance(getattr(kernel_facts, name), tuple)
          and all(isinstance(row, Fact) for row in getattr(kernel_facts, name))}


def test_every_versioned_table_is_found():
    assert set(TABLES) >= {"ORIG_AX_ENCODING", "TSS_PERCPU_SYMBOL", "DF_IST_INDEX", "DF_HANDLER",
                           "DF_CR2_LOCAL", "SYSCALL_ENTRY_WINDOW", "SYSRET_SS_WORKAROUND"}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_rows_follow_each_other_without_gap_or_overlap_and_the_last_is_open(name):
    rows = sorted(TABLES[name], key=lambda row: row.since)
    for earlier, later in zip(rows, rows[1:]):
        assert earlier.until == later.since, f"{name}: {earlier} then {later}"
    assert rows[-1].until is None, f"{name}: no row holds for today's kernels"
    assert all(row.source for row in rows), f"{name}: every row says where it comes from"


@pytest.mark.parametrize("table, release, expected", [
    ("ORIG_AX_ENCODING", "5.7.19", "complement"),
    ("ORIG_AX_ENCODING", "5.8.0", "byte"),
    ("ORIG_AX_ENCODING", "6.12.117", "byte"),
    ("TSS_PERCPU_SYMBOL", "4.0.9", "init_tss"),
    ("TSS_PERCPU_SYMBOL", "4.1", "cpu_tss"),
    ("TSS_PERCPU_SYMBOL", "4.14.336", "cpu_tss"),
    ("TSS_PERCPU_SYMBOL", "4.15.0-213-generic", "cpu_tss_rw"),
    ("DF_IST_INDEX", "3.17.8", 1),
    ("DF_IST_INDEX", "3.18", 0),
    ("DF_IST_INDEX", "6.1.192", 0),
    ("DF_HANDLER", "5.7.0", "do_double_fault"),
    ("DF_HANDLER", "5.10.0-35-cloud-amd64", "exc_double_fault"),
    ("DF_CR2_LOCAL", "5.4.0", None),
    ("DF_CR2_LOCAL", "5.5.1", "cr2"),
    ("DF_CR2_LOCAL", "6.1.0", "address"),
    ("SYSRET_SS_WORKAROUND", "3.16.39kmemleak", False),
    ("SYSRET_SS_WORKAROUND", "4.1.52", True),
    # Issue 20: the generations a cloud still runs (5.10, 6.1, 6.6, 6.12, 7.x), each boundary.
    ("TOP_OF_KERNEL_STACK_PADDING_FRED", "5.10.0-32-cloud-amd64", 0),
    ("TOP_OF_KERNEL_STACK_PADDING_FRED", "6.8.12", 0),
    ("TOP_OF_KERNEL_STACK_PADDING_FRED", "6.9.0", 16),
    ("TOP_OF_KERNEL_STACK_PADDING_FRED", "7.2.13+deb14-cloud-amd64", 16),
    ("TOP_OF_STACK_PERCPU", "5.10.223", ("cpu_tss_rw", "x86_tss.sp1")),
    ("TOP_OF_STACK_PERCPU", "5.13.0", ("cpu_current_top_of_stack", "")),
    ("TOP_OF_STACK_PERCPU", "6.1.192", ("cpu_current_top_of_stack", "")),
    ("TOP_OF_STACK_PERCPU", "6.2.0", ("pcpu_hot", "top_of_stack")),
    ("TOP_OF_STACK_PERCPU", "6.12.117", ("pcpu_hot", "top_of_stack")),
    ("TOP_OF_STACK_PERCPU", "6.15.0", ("cpu_current_top_of_stack", "")),
    ("TOP_OF_STACK_PERCPU", "7.2.13", ("cpu_current_top_of_stack", "")),
    ("CURRENT_TASK_PERCPU", "5.10.223", ("current_task", "")),
    ("CURRENT_TASK_PERCPU", "6.1.192", ("current_task", "")),
    ("CURRENT_TASK_PERCPU", "6.6.0", ("pcpu_hot", "current_task")),
    ("CURRENT_TASK_PERCPU", "6.14.11", ("pcpu_hot", "current_task")),
    ("CURRENT_TASK_PERCPU", "6.15.0", ("current_task", "")),
    ("CEA_RANDOMIZED", "6.1.192", False),
    ("CEA_RANDOMIZED", "6.2.0", True),
    ("CEA_RANDOMIZED", "7.2.13", True),
    ("FRED_DEFAULT", "6.8.0", "absent"),
    ("FRED_DEFAULT", "6.9.0", "opt-in"),
    ("FRED_DEFAULT", "6.12.117", "opt-in"),
    ("FRED_DEFAULT", "7.1.0", "default-on"),
    ("ENTRY_TRAIL_CALLER", "5.7.19", None),
    ("ENTRY_TRAIL_CALLER", "5.10.223", "error_entry"),
    ("ENTRY_TRAIL_CALLER", "5.18.19", "error_entry"),
    ("ENTRY_TRAIL_CALLER", "5.19.0", "asm_"),
    ("ENTRY_TRAIL_CALLER", "7.2.13", "asm_"),
    ("VMCOREINFO_KALLSYMS", "5.10.223", False),
    ("VMCOREINFO_KALLSYMS", "6.0.0", True),
    ("KALLSYMS_LAYOUT", "4.5.7", "addresses"),
    ("KALLSYMS_LAYOUT", "4.6.0", "offsets"),
    ("KALLSYMS_LAYOUT", "5.10.223", "offsets"),
    ("KALLSYMS_LAYOUT", "6.0.19", "offsets"),
    ("KALLSYMS_LAYOUT", "6.1.0", "not-searched"),
    ("ORC_REG_PREV_SP", "6.12.117", 1),
    ("ORC_REG_PREV_SP", "7.0.9", 1),
    ("ORC_REG_PREV_SP", "7.1.0", 8),
    ("DF_HANDLER", "7.2.13", "exc_double_fault"),
    ("ORIG_AX_ENCODING", "7.2.13", "byte"),
])
def test_value_for_gives_the_row_of_that_version(table, release, expected):
    assert value_for(TABLES[table], parse_release(release)) == expected


def test_an_unknown_version_has_no_value_but_every_candidate_newest_first():
    assert value_for(kernel_facts.TSS_PERCPU_SYMBOL, None) is None
    assert candidates(kernel_facts.TSS_PERCPU_SYMBOL, None) == ["cpu_tss_rw", "cpu_tss", "init_tss"]


def test_candidates_put_the_version_s_own_row_first_and_keep_the_others_for_backports():
    assert candidates(kernel_facts.TSS_PERCPU_SYMBOL, (4, 9, 0)) == ["cpu_tss", "cpu_tss_rw", "init_tss"]


@pytest.mark.parametrize("release, version", [
    ("6.1.192", (6, 1, 192)), ("5.10.0-35-cloud-amd64", (5, 10, 0)), ("3.16.39kmemleak", (3, 16, 39)),
    ("7.2", (7, 2, 0)), ("no digits", None),
])
def test_parse_release(release, version):
    assert parse_release(release) == version


def test_the_pcpu_hot_era_is_6_2_to_6_14_for_both_per_cpu_facts():
    # The two per-CPU facts changed together (6.2 in, 6.15 out): one era, both tables.
    for table in (kernel_facts.TOP_OF_STACK_PERCPU, kernel_facts.CURRENT_TASK_PERCPU):
        hot = [row for row in table if row.value[0] == "pcpu_hot"]
        assert [(row.since, row.until) for row in hot] == [((6, 2), (6, 15))]


def test_candidates_for_an_unknown_version_still_try_every_era_s_top_of_stack():
    assert set(candidates(kernel_facts.TOP_OF_STACK_PERCPU, None)) == {
        ("cpu_current_top_of_stack", ""), ("pcpu_hot", "top_of_stack"), ("cpu_tss_rw", "x86_tss.sp1")}


def test_every_new_row_cites_a_commit_or_the_source_it_was_checked_in():
    for name in ("TOP_OF_KERNEL_STACK_PADDING_FRED", "TOP_OF_STACK_PERCPU", "CURRENT_TASK_PERCPU",
                 "CEA_RANDOMIZED", "FRED_DEFAULT", "ENTRY_TRAIL_CALLER",
                 "VMCOREINFO_KALLSYMS", "KALLSYMS_LAYOUT", "ORC_REG_PREV_SP"):
        for row in TABLES[name]:
            assert re.search(r"\b[0-9a-f]{12}\b|checked in|no |before|x86_64", row.source), (name, row)
