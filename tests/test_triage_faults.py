"""Triage under faults: a worker killed with SIGKILL, the output disk full,
Ctrl-C in the middle. What was finished is on disk and intact, and --resume
completes the rest."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from procs import descendants, parent_pid, pids_running, wait_for

FIXTURES = Path(__file__).parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"
DUMPS = ["cpl0-irq-df", "wild-rsp-df", "oops-not-df", "kernel-stack-overflow-df"]


# Enough distinct dumps that a run is still going when the test interrupts it after its
# first row (with only DUMPS a loaded machine sometimes finished first).
MANY_DUMPS = DUMPS + ["cpl0-irq-df-6.12", "cpl0-irq-df-ss18", "cpl0-thread-stack-df", "sweep-survived",
                      "sweep-busy-clean", "kernel-on-user-stack-df", "cpl0-irq-df-5.10", "cpl0-irq-df-7.2"]


def _archive(root: Path, names: list[str]) -> Path:
    for name in names:
        shutil.copy(FIXTURES / name / "vmcore.xz", root / f"{name}.xz")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return _archive(tmp_path_factory.mktemp("archive"), DUMPS)


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> Path:
    return _archive(tmp_path_factory.mktemp("big-archive"), MANY_DUMPS)


def command(archive: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dfforensics.cli", "triage", str(archive), "--debuginfo-dir",
            str(KERNELS), "--format", "jsonl", "-o", str(out), "--jobs", "1", *extra]


def complete_rows(out: Path) -> list[dict]:
    rows = []
    for line in out.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # at most one line cut by the fault
    return rows


def resume_and_check(archive: Path, out: Path, names: list[str] = DUMPS) -> None:
    result = subprocess.run(command(archive, out, "--resume"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    rows = complete_rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(f"{n}.xz" for n in names)
    assert all(r["status"] == "ok" for r in rows if r.get("error_kind") != "worker-crash")


def _worker_pids(under: Optional[int] = None) -> list[int]:
    """Triage worker processes; with ``under``, only those of that run (other runs, such as
    another checkout's test suite on the same machine, are not this test's)."""
    workers = pids_running(b"dfforensics.batch.worker")
    if under is None:
        return workers
    mine = descendants(under)
    return [pid for pid in workers if pid in mine]


def _analysing_pids(under: int) -> list[int]:
    """Workers analysing a dump now: the children a triage fork server made for a job."""
    workers = set(_worker_pids(under))
    found = []
    for pid in workers:
        if parent_pid(pid) in workers:
            found.append(pid)
    return found


def test_worker_killed_with_sigkill_becomes_an_error_row(archive, tmp_path):
    out = tmp_path / "rows.jsonl"
    process = subprocess.Popen(command(archive, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert wait_for(lambda: _analysing_pids(process.pid), seconds=300.0)
    os.kill(_analysing_pids(process.pid)[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    rows = complete_rows(out)
    assert len(rows) == len(DUMPS)
    killed = [r for r in rows if r["status"] == "error"]
    assert len(killed) == 1 and "signal 9" in killed[0]["error"]


def test_output_disk_full_keeps_finished_rows_and_resume_completes(archive, tmp_path):
    out = tmp_path / "rows.jsonl"
    # Fill the decompression cache first, so that the limit hits only the output.
    warm = subprocess.run(command(archive, tmp_path / "warm.jsonl"), capture_output=True, timeout=600)
    assert warm.returncode == 0

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    result = subprocess.run(command(archive, out), capture_output=True, text=True, timeout=600,
                            preexec_fn=small_disk)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfforensics: error: ") and "cannot write" in lines[0]
    assert 1 <= len(complete_rows(out)) < len(DUMPS)
    resume_and_check(archive, out)


def test_ctrl_c_keeps_finished_rows_and_resume_completes(big_archive, tmp_path):
    archive = big_archive
    out = tmp_path / "rows.jsonl"
    process = subprocess.Popen(command(archive, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert wait_for(lambda: out.exists() and out.read_text().count("\n") >= 1)
    ours = set(_worker_pids(process.pid))
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "dfforensics: error: interrupted"
    assert ours, "the run had workers"
    assert not wait_for(lambda: ours & set(_worker_pids()), seconds=1.0), "workers left running"
    assert 1 <= len(complete_rows(out)) < len(MANY_DUMPS)
    resume_and_check(archive, out, MANY_DUMPS)
