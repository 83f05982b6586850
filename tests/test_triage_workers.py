"""Triage's fork servers on real dumps: one server per job slot runs many dumps,
each in a child of its own, and whatever happens to a child or a server costs
only the job in hand."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dfforensics.batch.debuginfo import VmlinuxFinder
from dfforensics.batch.jobs import Job, Row
from dfforensics.batch.discover import iter_discover
from dfforensics.batch.triage import _Workers
from procs import children_of, gone, wait_for

FIXTURES = Path(__file__).parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Job:
    root = tmp_path_factory.mktemp("one")
    (root / "vmcore.xz").write_bytes((FIXTURES / "wild-rsp-df" / "vmcore.xz").read_bytes())
    (item,) = iter_discover([str(root)])
    pool = _Workers(jobs=1)
    try:
        planned, row = pool.triage(item, VmlinuxFinder([str(KERNELS)]), False, 600, None)
    finally:
        pool.close()
    assert row.status == "ok" and planned.vmlinux, row
    return planned


@pytest.fixture
def hanging_job(tmp_path) -> Job:
    """A job that never ends: its console log is a FIFO nobody writes to."""
    fifo = tmp_path / "console.log"
    os.mkfifo(fifo)
    return Job(str(fifo), 0, 0.0, "log")


@pytest.fixture
def workers():
    pool = _Workers(jobs=1)
    yield pool
    pool.close()


class _Result:
    row: Row


def run_in_background(workers: _Workers, job: Job, timeout: float = 600.0):
    result = _Result()

    def target() -> None:
        result.row = workers.run(job, timeout, None)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def wait_for_child(server_pid: int) -> int:
    found: list[int] = []
    if not wait_for(lambda: found.extend(children_of(server_pid)) or found, seconds=60, step=0.005):
        raise AssertionError("the server never forked a child for the job")
    return found[0]


def test_one_server_runs_successive_dumps(workers, job):
    first = workers.run(job, 600, None)
    server = workers.slots[0].server
    second = workers.run(job, 600, None)
    assert first.status == second.status == "ok"
    assert first.verdict == second.verdict == "no-match"
    assert workers.slots[0].server is server and server.alive()


def test_a_killed_child_costs_its_row_and_the_server_goes_on(workers, job):
    assert workers.run(job, 600, None).status == "ok"  # the server is up
    server = workers.slots[0].server
    thread, result = run_in_background(workers, job)
    os.kill(wait_for_child(server.process.pid), signal.SIGKILL)
    thread.join(120)
    assert result.row.status == "error" and result.row.error_kind.value == "worker-crash"
    assert "signal 9" in result.row.error
    assert workers.run(job, 600, None).status == "ok"
    assert workers.slots[0].server is server


def test_a_killed_server_leaves_no_child_and_is_replaced(workers, job, hanging_job):
    assert workers.run(job, 600, None).status == "ok"
    server = workers.slots[0].server
    thread, result = run_in_background(workers, hanging_job)
    child = wait_for_child(server.process.pid)
    os.kill(server.process.pid, signal.SIGKILL)
    thread.join(120)
    assert result.row.status == "error" and "signal 9" in result.row.error
    assert gone(child), "the dump's child outlived its server"
    assert workers.run(job, 600, None).status == "ok"
    assert workers.slots[0].server is not server


def test_a_job_over_its_time_limit_is_killed_alone(workers, job, hanging_job):
    assert workers.run(job, 600, None).status == "ok"
    server = workers.slots[0].server
    row = workers.run(hanging_job, 0.5, None)
    assert (row.status, row.error_kind.value, row.error) == (
        "error", "timeout", "analysis did not finish within 0.5 s")
    assert children_of(server.process.pid) == []
    assert workers.run(job, 600, None).status == "ok"
    assert workers.slots[0].server is server and server.alive()


def test_a_job_over_its_memory_cap_is_a_row_and_the_next_is_not_capped(workers, job):
    starved = workers.run(job, 600, 40 << 20)
    assert starved.status == "error" and starved.error_kind.value == "memory", starved
    assert workers.run(job, 600, None).status == "ok"


def test_closing_ends_every_server(job):
    pool = _Workers(jobs=2)
    rows = [pool.run(job, 600, None) for _ in range(2)]
    servers = [slot.server for slot in pool.slots if slot.server is not None]
    pool.close()
    assert [row.status for row in rows] == ["ok", "ok"]
    assert servers and all(gone(server.process.pid) for server in servers)


def test_a_pinned_slot_analyses_its_dumps_on_its_cpus_only(hanging_job):
    cpu = max(os.sched_getaffinity(0))
    pool = _Workers(jobs=1, slots=[frozenset({cpu})])
    try:
        pool.start()
        server = pool.slots[0].server
        thread, result = run_in_background(pool, hanging_job, timeout=60)
        child = wait_for_child(server.process.pid)
        assert os.sched_getaffinity(server.process.pid) == {cpu}
        assert os.sched_getaffinity(child) == {cpu}
        os.kill(child, signal.SIGKILL)
        thread.join(120)
        assert result.row.status == "error"
    finally:
        pool.close()


def test_a_dfforensics_in_the_working_directory_is_not_what_the_servers_run(tmp_path):
    """The installed command's servers import the installed package, not a
    ``dfforensics`` directory the user happens to run triage from."""
    impostor = tmp_path / "cwd" / "dfforensics"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise ImportError('the dfforensics of the working directory')\n")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "vmcore.xz").write_bytes((FIXTURES / "wild-rsp-df" / "vmcore.xz").read_bytes())
    out = tmp_path / "rows.jsonl"
    # As the console script starts: its own directory, not the working one, leads sys.path.
    entry = "import sys; del sys.path[0]; from dfforensics.cli import run; run()"
    result = subprocess.run([sys.executable, "-c", entry, "triage", str(archive), "--debuginfo-dir",
                             str(KERNELS), "--format", "jsonl", "-o", str(out), "--jobs", "1"],
                            cwd=impostor.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["status"] == "ok", row
    assert row["verdict"] == "no-match"
