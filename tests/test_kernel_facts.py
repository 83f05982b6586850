"""Kernel facts: each table gives the right row for each version, with no gap or overlap."""

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
