"""
Triage jobs, each in a process of its own
-----------------------------------------

``python -m dfforensics.batch.worker --serve`` is a fork server: it imports
drgn and the analysis once, then reads one request per line on stdin
(``{"job": ..., "timeout": ..., "memory_bytes": ...}``), forks a child per
job and writes the child's row as one JSON line on stdout. Each child has the
job's memory cap and time limit and dies alone, so a dump that crashes, hangs
or exhausts its worker costs only its own row, and no dump sees what an
earlier one left in memory.
"""

import json
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from typing import Any, NoReturn, Optional, TextIO

from dfforensics.batch.jobs import Job, Row, error_row, job_from_wire, row_from_wire, row_to_wire
from dfforensics.core.errors import ErrorKind, InputError
from dfforensics.core.process import exit_without_teardown, skip_drgn_plugins

__all__ = ("row_from_worker", "run", "run_job", "row_from_report", "serve", "timeout_row")


def row_from_report(report: Any, mode: str) -> Row:
    """The triage row of one analysed report."""
    deciding = [df for df in report.double_faults if df.verdict == report.verdict]
    df = deciding[0] if deciding else None
    return Row(
        status="ok",
        mode=mode,
        verdict=report.verdict.value,
        df_class=report.df_class.value if report.df_class else None,
        kernel_release=report.kernel.release,
        cpu=df.cpu if df else None,
        pid=df.pid if df else None,
        comm=df.comm if df else None,
        frames=len(report.frames),
        summary=report.summary,
        title=report.title or None,
        dedup_key=report.dedup_key or None,
    )


def _log_row(job: Job) -> Row:
    from dfforensics.logs.analysis import analyze_log_text

    path = job.path if job.kind == "log" else job.log
    assert path is not None
    with open(path, "rb") as file:
        text = file.read().decode("utf-8", errors="replace")
    if job.kind == "log":
        return row_from_report(analyze_log_text(text, path), "log-only")
    row = row_from_report(analyze_log_text(text, path), "log-fallback")
    why = f": {job.vmlinux_note}" if job.vmlinux_note else ""
    return replace(row, note=f"no debug vmlinux for {job.release or 'this kernel'}{why}: "
                             f"analysed its console log {path} instead")


def _no_debuginfo_row(job: Job) -> Row:
    why = f" ({job.vmlinux_note})" if job.vmlinux_note else ""
    return error_row(ErrorKind.NO_DEBUGINFO,
                     f"no debug vmlinux found for kernel {job.release or 'unknown'}{why} "
                     "and no console log beside the dump")


def _vmcore_row(job: Job) -> Row:
    from dfforensics.dump.analysis import analyze_vmcore_files

    assert job.vmlinux is not None
    return replace(row_from_report(analyze_vmcore_files(job.path, job.vmlinux), "vmcore"),
                   vmlinux=job.vmlinux)


def _guest_debuginfo_row(job: Job) -> tuple[Optional[Row], Optional[str]]:
    """The dump analysed with types from its BTF and symbols from its kallsyms, or why not."""
    from dfforensics.dump.analysis import analyze_vmcore_files

    try:
        report = analyze_vmcore_files(job.path, None)
    except InputError as error:
        if error.kind in (ErrorKind.MEMORY, ErrorKind.CACHE):
            raise
        return None, str(error)
    why = f" ({job.vmlinux_note})" if job.vmlinux_note else ""
    return replace(row_from_report(report, "btf"),
                   note=f"no debug vmlinux for {job.release or 'this kernel'}{why}: types from the "
                        "guest's BTF, symbols from its kallsyms"), None


def _without_vmlinux_row(job: Job) -> Row:
    """A dump with no debug vmlinux: from its own BTF, else its console log, else an error row."""
    guest_problem = None
    if not job.require_debuginfo:
        row, guest_problem = _guest_debuginfo_row(job)
        if row is not None:
            return row
    row = _log_row(job) if job.log else _no_debuginfo_row(job)
    if guest_problem is None:
        return row
    if row.status == "ok":
        return replace(row, note=f"{row.note}; no BTF either: {guest_problem}")
    return replace(row, error=f"{row.error}; no BTF either: {guest_problem}")


def run_job(job: Job) -> Row:
    """Analyse one item; never raises for bad input (it becomes an error row)."""
    start = time.monotonic()
    try:
        if job.kind == "log":
            row = _log_row(job)
        elif job.vmlinux is None:
            row = _without_vmlinux_row(job)
        else:
            row = _vmcore_row(job)
    except InputError as error:
        row = error_row(error.kind, str(error))
    except MemoryError:
        row = error_row(ErrorKind.MEMORY, "out of memory (memory cap)")
    return replace(row, seconds=round(time.monotonic() - start, 3))


# What a process capped below what it needs dies of, besides MemoryError: a
# library that cannot map its code (ImportError) or allocate (ENOMEM).
_OUT_OF_MEMORY_MARKS = ("MemoryError", "Cannot allocate memory", "failed to map segment",
                        "std::bad_alloc", "out of memory")


def row_from_worker(returncode: int, stdout: str, stderr: str) -> Row:
    """The row of a job from how its process ended: its row, or why there is none."""
    lines = stdout.strip().splitlines()
    if returncode == 0 and lines:
        try:
            return row_from_wire(json.loads(lines[-1]))
        except (ValueError, TypeError):
            pass
    if returncode < 0:
        detail = f"worker killed by signal {-returncode}"
    else:
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        detail = f"worker failed (exit {returncode}): {tail[0][:300]}"
    out_of_memory = any(mark in stderr for mark in _OUT_OF_MEMORY_MARKS)
    return error_row(ErrorKind.MEMORY if out_of_memory else ErrorKind.WORKER_CRASH, detail)


def timeout_row(timeout: float) -> Row:
    """The row of a job stopped at its time limit."""
    return error_row(ErrorKind.TIMEOUT, f"analysis did not finish within {timeout:g} s")


def _wait_status(pid: int, timeout: float) -> Optional[int]:
    """The wait status of child ``pid``, or None if it is still running after ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3: poll
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)
    try:
        if not select.select([pidfd], [], [], max(0.0, timeout))[0]:
            return None
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def _run_in_child(job: Job, memory_bytes: Optional[int], result: int, log: int) -> None:
    """What a forked child does: cap itself, run the job, write its row to ``result``."""
    status = 1
    try:
        # Anything the analysis or a library prints goes to the log, never into the
        # server's stdout, which carries the rows.
        os.dup2(log, 1)
        os.dup2(log, 2)
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        os.write(result, json.dumps(row_to_wire(run_job(job))).encode())
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)


def run_forked(job: Job, timeout: float, memory_bytes: Optional[int]) -> Row:
    """Run one job in a forked child with a time limit and a memory cap; return its row."""
    with tempfile.TemporaryFile() as result, tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:
            _run_in_child(job, memory_bytes, result.fileno(), log.fileno())
        status = _wait_status(pid, timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return timeout_row(timeout)
        result.seek(0)
        log.seek(0)
        return row_from_worker(os.waitstatus_to_exitcode(status),
                               result.read().decode(errors="replace"),
                               log.read().decode(errors="replace"))


def serve(requests: TextIO, rows: TextIO) -> int:
    """Answer one request line with one row line until ``requests`` ends."""
    # Imported here, once: what every forked child would otherwise import again.
    # hashlib too: under a small memory cap a child could not map OpenSSL any more.
    import hashlib  # noqa: F401

    import dfforensics.dump.analysis  # noqa: F401
    import dfforensics.logs.analysis  # noqa: F401

    for line in requests:
        request = json.loads(line)
        row = run_forked(job_from_wire(request["job"]), request["timeout"], request.get("memory_bytes"))
        rows.write(json.dumps(row_to_wire(row)) + "\n")
        rows.flush()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    skip_drgn_plugins()
    args = sys.argv[1:] if argv is None else argv
    if args != ["--serve"]:
        sys.stderr.write("usage: python -m dfforensics.batch.worker --serve\n")
        return 2
    return serve(sys.stdin, sys.stdout)


def run() -> NoReturn:
    """The server process: :func:`main`, then exit without interpreter teardown."""
    exit_without_teardown(main())


if __name__ == "__main__":
    run()
