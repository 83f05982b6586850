"""
Triage jobs, each in a process of its own
-----------------------------------------

``python -m dfforensics.batch.worker --serve`` is a fork server: it imports
drgn and the analysis once, then reads one request per line on stdin
(``{"op": ..., "job": ..., "timeout": ..., "memory_bytes": ...}``), forks a
child per request and writes the child's answer as one JSON line on stdout.
Each child has the job's memory cap and time limit and dies alone, so a dump
that crashes, hangs or exhausts its worker costs only its own row, and no dump
sees what an earlier one left in memory.

A dump takes up to three requests, every one of them on the dump's own
limits: ``plan`` (decompress it into the cache and read the kernel it names:
a bomb is stopped here, not in the triage parent), ``banner`` (for a dump that
names no kernel: which candidate vmlinux's ``linux_banner`` is in its memory)
and ``run`` (the analysis, answered with the row).
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
from typing import Any, Final, NoReturn, Optional, TextIO

from dfforensics.batch.jobs import Job, Row, error_row, job_from_wire, row_from_wire, row_to_wire
from dfforensics.core.errors import ErrorKind, InputError
from dfforensics.core.process import exit_without_teardown, import_drgn_helpers_on_demand, skip_drgn_plugins

__all__ = ("answer", "row_from_worker", "run", "run_job", "row_from_report", "serve", "timeout_row")


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
    from dfforensics.logs.logbytes import looks_binary

    path = job.path if job.kind == "log" else job.log
    assert path is not None
    with open(path, "rb") as file:
        data = file.read()
    if looks_binary(data):
        raise InputError(f"{path}: binary data, not a console log")
    text = data.decode("utf-8", errors="replace")
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


def _guest_debuginfo_row(job: Job) -> tuple[Optional[Row], Optional[InputError]]:
    """The dump analysed with types from its BTF and symbols from its kallsyms, or why not."""
    from dfforensics.dump.analysis import analyze_vmcore_files

    try:
        report = analyze_vmcore_files(job.path, None)
    except InputError as error:
        if error.kind in (ErrorKind.MEMORY, ErrorKind.CACHE):
            raise
        return None, error
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
    if guest_problem is not None and not job.log and guest_problem.kind in _BAD_DUMP:
        # Opening it for its BTF found the dump itself unreadable: that is its row,
        # not the debug info it lacks.
        return error_row(guest_problem.kind, str(guest_problem))
    row = _log_row(job) if job.log else _no_debuginfo_row(job)
    if guest_problem is None:
        return row
    if row.status == "ok":
        return replace(row, note=f"{row.note}; no BTF either: {guest_problem}")
    return replace(row, error=f"{row.error}; no BTF either: {guest_problem}")


# What a dump's own open says when the dump is bad, whatever debug info it is given.
_BAD_DUMP: Final = (ErrorKind.NOT_A_DUMP, ErrorKind.CORRUPT_DUMP)


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


def _plan(job: Job) -> dict[str, Any]:
    """The kernel a dump names, read after decompressing (or reassembling) it into the cache."""
    from dfforensics.inputs.formats import decompressed, discard_cached, dump_kernel_identity

    plain = decompressed(job.path, "VMCORE")
    try:
        identity = dump_kernel_identity(plain, job.kind)
    except InputError as error:
        if error.kind in _BAD_DUMP:
            discard_cached(plain)  # the cache keeps only inputs that can be used
        # Name the user's file, not its copy in the cache.
        raise InputError(str(error).replace(plain, job.path), error.kind) from None
    return {"release": identity.release, "build_id": identity.build_id, "source": identity.source}


def _banner(job: Job, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Which candidate vmlinux (facts read by the parent) a dump that names no kernel is from."""
    from dfforensics.batch.debuginfo import facts_from_wire, match_banner
    from dfforensics.inputs.formats import decompressed

    found = match_banner(decompressed(job.path, "VMCORE"),
                         [(entry["path"], facts_from_wire(entry)) for entry in candidates])
    return {"vmlinux": found.vmlinux, "why_none": found.why_none}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """What a child answers one request with: a row (``run``, or any step that
    failed on bad input), or ``{"plan": ...}`` for a planning step that worked."""
    job = job_from_wire(request["job"])
    op = request.get("op", "run")
    if op == "run":
        return row_to_wire(run_job(job))
    start = time.monotonic()
    try:
        if op == "plan":
            return {"plan": _plan(job)}
        if op == "banner":
            return {"plan": _banner(job, request.get("candidates") or [])}
        raise ValueError(f"unknown request {op!r}")
    except InputError as error:
        row = error_row(error.kind, str(error))
    except MemoryError:
        row = error_row(ErrorKind.MEMORY, "out of memory (memory cap)")
    return row_to_wire(replace(row, seconds=round(time.monotonic() - start, 3)))


# What a process capped below what it needs dies of, besides MemoryError: a
# library that cannot map its code (ImportError) or allocate (ENOMEM).
_OUT_OF_MEMORY_MARKS = ("MemoryError", "Cannot allocate memory", "failed to map segment",
                        "std::bad_alloc", "out of memory")


def _answer_from_worker(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """A child's answer (a plan or a row's wire form) from how it ended."""
    lines = stdout.strip().splitlines()
    if returncode == 0 and lines:
        try:
            wire = json.loads(lines[-1])
            if isinstance(wire, dict) and "plan" in wire:
                return wire
            return row_to_wire(row_from_wire(wire))
        except (ValueError, TypeError, AttributeError):
            pass
    return row_to_wire(row_from_worker(returncode, "", stderr))


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


# What each request is stopped in, for the row of one stopped at its time limit.
_STEPS: Final = {"run": "analysis", "plan": "decompressing and reading the dump",
                 "banner": "matching a vmlinux's banner against the dump's memory"}


def timeout_row(timeout: float, op: str = "run") -> Row:
    """The row of a job stopped at its time limit (``timeout``: the dump's whole limit)."""
    return error_row(ErrorKind.TIMEOUT, f"{_STEPS.get(op, 'analysis')} did not finish within {timeout:g} s")


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


def _run_in_child(request: dict[str, Any], memory_bytes: Optional[int], result: int, log: int) -> None:
    """What a forked child does: cap itself, answer the request, write the answer to ``result``."""
    status = 1
    try:
        # Anything the analysis or a library prints goes to the log, never into the
        # server's stdout, which carries the rows.
        os.dup2(log, 1)
        os.dup2(log, 2)
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        os.write(result, json.dumps(answer(request)).encode())
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)


def _discard_partials() -> None:
    """Remove the cache files a child killed mid-write left (named by this process group)."""
    from dfforensics.inputs.formats import discard_partials

    try:
        discard_partials(os.getpgrp())
    except InputError:
        pass  # a cache that cannot be listed holds nothing of ours


def run_forked(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request in a forked child with its time limit and memory cap.

    ``timeout`` is what is left of the dump's time limit, ``limit`` the whole
    limit (what a row stopped at it says)."""
    timeout = request["timeout"]
    with tempfile.TemporaryFile() as result, tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:
            _run_in_child(request, request.get("memory_bytes"), result.fileno(), log.fileno())
        status = _wait_status(pid, timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # Killed in the middle of a decompression: what it wrote is no cache entry.
            _discard_partials()
            return row_to_wire(timeout_row(request.get("limit", timeout), request.get("op", "run")))
        result.seek(0)
        log.seek(0)
        return _answer_from_worker(os.waitstatus_to_exitcode(status),
                                   result.read().decode(errors="replace"),
                                   log.read().decode(errors="replace"))


def serve(requests: TextIO, rows: TextIO) -> int:
    """Answer one request line with one row line until ``requests`` ends."""
    # Imported here, once: what every forked child would otherwise import again.
    # hashlib and zstandard too: under a small memory cap a child could not map
    # OpenSSL or the zstd library any more.
    import hashlib  # noqa: F401

    import zstandard  # noqa: F401

    import dfforensics.batch.debuginfo  # noqa: F401
    import dfforensics.dump.analysis  # noqa: F401
    import dfforensics.inputs.elffacts  # noqa: F401  (pyelftools: 30 ms a plan would pay)
    import dfforensics.logs.analysis  # noqa: F401
    import dfforensics.logs.logbytes  # noqa: F401

    for line in requests:
        rows.write(json.dumps(run_forked(json.loads(line))) + "\n")
        rows.flush()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    skip_drgn_plugins()
    import_drgn_helpers_on_demand()
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
