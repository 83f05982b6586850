"""The coverage of stacks a thread has left, judged: what the per-process bound left
unread, and candidates a running guest changed between two reads, are never clean;
and on the real running-guest dumps the extra mappings add no frame and lose none."""

import json
import subprocess
import sys
from pathlib import Path

from dfforensics.core.model import SweepCoverage, SweepVerdict, SweptStack
from dfforensics.core.observation import SweepObservation
from dfforensics.core.verdict import judge_sweep

FIXTURES = Path(__file__).parents[1] / "fixtures"
READ = SweptStack(40, 40, "sv-main", "[stack]", 0x7FFFFDDDE000, 0x7FFFFDDFF000, 12, 0, [], 21)


def test_pages_beyond_the_bound_are_not_clean():
    coverage = SweepCoverage(bound_pages_per_process=16, pages_read=16, pages_beyond_bound=5,
                             processes_beyond_bound=["java (pid 7): 5 pages beyond the bound"])
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(READ,), coverage=coverage))
    assert result.verdict is SweepVerdict.INCOMPLETE
    assert "5 resident page(s)" in result.summary and "bound of 16 pages" in result.summary
    assert result.coverage is coverage


def test_a_candidate_that_changed_between_reads_is_not_clean():
    coverage = SweepCoverage(bound_pages_per_process=16, frames_unconfirmed=1, live=True)
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(READ,), coverage=coverage))
    assert result.verdict is SweepVerdict.INCOMPLETE and "changed between two reads" in result.summary


def test_full_coverage_within_the_bound_is_clean():
    coverage = SweepCoverage(bound_pages_per_process=16, mappings=3, pages_read=9)
    result = judge_sweep(SweepObservation(tasks_scanned=1, stacks=(READ,), coverage=coverage))
    assert result.verdict is SweepVerdict.CLEAN


def _sweep(name):
    expected = json.loads((FIXTURES / name / "expected.json").read_text())
    out = subprocess.run([sys.executable, "-m", "dfforensics.cli", "sweep", str(FIXTURES / name / "vmcore.xz"),
                          str(FIXTURES / name / expected["vmlinux"]), "--format", "json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return expected, json.loads(out.stdout)


def test_busy_guest_stays_clean_with_every_anonymous_mapping_read():
    # JIT page, signal storms, deep recursion, 40 threads, pointer-filled arrays on [stack]
    # and on a coroutine stack: every private writable anonymous mapping read, no frame.
    _, report = _sweep("sweep-busy-clean")
    sweep = report["sweep"]
    assert sweep["verdict"] == "clean" and report["frames"] == []
    assert sweep["coverage"]["mappings"] > 0 and sweep["coverage"]["pages_read"] > 0
    assert sweep["coverage"]["pages_beyond_bound"] == 0
    reasons = {s["reason"] for s in sweep["stacks"]}
    assert reasons == {"saved RSP", "anonymous mapping"}


def test_survived_frames_are_exactly_the_builders_nine():
    expected, report = _sweep("sweep-survived")
    got = sorted((f["address"], f["pid"], f["tid"]) for f in report["frames"])
    want = sorted((int(f["address"], 16), f["pid"], f["tid"]) for f in expected["frames"])
    assert got == want and len(got) == 9
    # sv-coro's main [stack], which it left for the coroutine, is read too.
    coro = next(f["pid"] for f in expected["frames"] if f["comm"] == "sv-coro")
    assert any(s["pid"] == coro and s["reason"] == "anonymous mapping" and s["mapping"] == "[stack]"
               for s in report["sweep"]["stacks"])
