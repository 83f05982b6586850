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
from typing import Any, NoReturn, Optional, TextIO

from dfforensics.core.process import exit_without_teardown, skip_drgn_plugins
from dfforensics.core.errors import InputError

__all__ = ("row_from_worker", "run", "run_job", "row_from_report", "serve", "timeout_row")


def row_from_report(report: Any, mode: str) -> dict[str, Any]:
    """The triage row of one analysed report."""
    deciding = [df for df in report.double_faults if df.verdict == report.verdict]
    df = deciding[0] if deciding else None
    return {
        "status": "ok",
        "mode": mode,
        "verdict": report.verdict.value,
        "df_class": report.df_class.value if report.df_class else None,
        "kernel_release": report.kernel.release,
        "cpu": df.cpu if df else None,
        "pid": df.pid if df else None,
        "comm": df.comm if df else None,
        "frames": len(report.frames),
        "summary": report.summary,
    }


def _error_kind(message: str) -> str:
    lowered = message.lower()
    for words, kind in (
        (("does not belong",), "vmlinux-mismatch"),
        (("no vmcoreinfo",), "no-vmcoreinfo"),
        (("truncated", "corrupt", "could not read memory", "fault"), "corrupt-dump"),
        (("not an elf", "not a linux kernel", "not a kernel"), "not-a-dump"),
        (("debug info", "vmlinux"), "debuginfo"),
    ):
        if any(word in lowered for word in words):
            return kind
    return "input"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Analyse one item; never raises for bad input (it becomes an error row)."""
    start = time.monotonic()
    row: dict[str, Any] = {}
    try:
        if job["kind"] == "log" or (job.get("vmlinux") is None and job.get("log")):
            from dfforensics.logs.analysis import analyze_log_text
            path = job["path"] if job["kind"] == "log" else job["log"]
            with open(path, "rb") as file:
                text = file.read().decode("utf-8", errors="replace")
            mode = "log-only" if job["kind"] == "log" else "log-fallback"
            row = row_from_report(analyze_log_text(text, path), mode)
            if mode == "log-fallback":
                row["note"] = f"no debug vmlinux for {job.get('release') or 'this kernel'}: " \
                              f"analysed its console log {path} instead"
        elif job.get("vmlinux") is None:
            row = {"status": "error", "error_kind": "no-debuginfo",
                   "error": f"no debug vmlinux found for kernel {job.get('release') or 'unknown'} "
                            "and no console log beside the dump"}
        else:
            from dfforensics.dump.analysis import analyze_vmcore_files
            row = row_from_report(analyze_vmcore_files(job["path"], job["vmlinux"]), "vmcore")
            row["vmlinux"] = job["vmlinux"]
    except InputError as error:
        row = {"status": "error", "error_kind": _error_kind(str(error)), "error": str(error)}
    except MemoryError:
        row = {"status": "error", "error_kind": "memory", "error": "out of memory (memory cap)"}
    row["seconds"] = round(time.monotonic() - start, 3)
    return row


def row_from_worker(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The row of a job from how its process ended: its row, or why there is none."""
    lines = stdout.strip().splitlines()
    if returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    if returncode < 0:
        detail = f"worker killed by signal {-returncode}"
    else:
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        detail = f"worker failed (exit {returncode}): {tail[0][:300]}"
    kind = "memory" if "MemoryError" in stderr else "worker-crash"
    return {"status": "error", "error_kind": kind, "error": detail}


def timeout_row(timeout: float) -> dict[str, Any]:
    """The row of a job stopped at its time limit."""
    return {"status": "error", "error_kind": "timeout",
            "error": f"analysis did not finish within {timeout:g} s"}


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


def _run_in_child(job: dict[str, Any], memory_bytes: Optional[int], result: int, log: int) -> None:
    """What a forked child does: cap itself, run the job, write its row to ``result``."""
    status = 1
    try:
        # Anything the analysis or a library prints goes to the log, never into the
        # server's stdout, which carries the rows.
        os.dup2(log, 1)
        os.dup2(log, 2)
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        os.write(result, json.dumps(run_job(job)).encode())
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)


def run_forked(job: dict[str, Any], timeout: float, memory_bytes: Optional[int]) -> dict[str, Any]:
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
    import dfforensics.logs.analysis  # noqa: F401
    import dfforensics.dump.analysis  # noqa: F401

    for line in requests:
        request = json.loads(line)
        row = run_forked(request["job"], request["timeout"], request.get("memory_bytes"))
        rows.write(json.dumps(row) + "\n")
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
