"""
Batch triage
------------

``dfforensics triage PATH...``: discover every dump and console log under the
paths, find each dump's debug vmlinux, analyse each in its own worker process
(timeout, memory cap), and stream one row per item as it finishes, so an
interrupted run loses nothing finished and ``--resume`` completes the rest.
The archive is only ever read.
"""

import csv
import io
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Final, Iterable, Optional, TextIO

from tabulate import tabulate

from dfforensics.debuginfo import VmlinuxFinder, dump_kernel_identity
from dfforensics.discover import Item, iter_discover
from dfforensics.errors import InputError
from dfforensics.opendump import decompressed

__all__ = ("ROW_FIELDS", "cpu_slots", "plan_job", "plan_jobs", "run_triage", "run_isolated", "summary_text", "load_done")

ROW_FIELDS: Final = (
    "path", "size", "mtime", "kind", "status", "mode", "verdict", "df_class", "kernel_release",
    "cpu", "pid", "comm", "frames", "error_kind", "error", "summary", "note", "log", "vmlinux",
    "seconds",
)


def _limits(memory_bytes: Optional[int], cpus: Optional[frozenset[int]] = None) -> Callable[[], None]:
    def apply() -> None:
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        if cpus:
            os.sched_setaffinity(0, cpus)
    return apply


def cpu_slots(jobs: int, cpus: Optional[Iterable[int]] = None) -> list[frozenset[int]]:
    """Disjoint CPU sets, one per worker slot, when the workers split the CPUs evenly.

    When the number of workers divides the number of CPUs, each worker keeps to its
    own CPUs: the scheduler then never moves a worker's drgn between cores, which
    measured 3-4 % faster for two workers on two vCPUs (bench/README.md). With
    one worker, or a number that does not divide the CPUs, no slots (no pinning).
    """
    allowed = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if jobs < 2 or len(allowed) % jobs:
        return []
    per = len(allowed) // jobs
    return [frozenset(allowed[i * per:(i + 1) * per]) for i in range(jobs)]


def load_done(output: Optional[str]) -> set[tuple[str, int, float]]:
    """The keys (path, size, mtime) of rows already in a JSONL output, for --resume."""
    done: set[tuple[str, int, float]] = set()
    if not output or not os.path.exists(output):
        return done
    with open(output, encoding="utf-8", errors="replace", newline="") as file:
        first = file.readline()
        file.seek(0)
        if first.startswith("path,"):
            for record in csv.DictReader(file):
                try:
                    done.add((record["path"], int(record["size"]), float(record["mtime"])))
                except (KeyError, TypeError, ValueError):
                    continue
            return done
        for line in file:
            try:
                row = json.loads(line)
                done.add((row["path"], row["size"], row["mtime"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash is simply done again
    return done


def plan_job(item: Item, finder: VmlinuxFinder) -> dict[str, Any]:
    """Turn one discovered item into a worker job, finding its dump's vmlinux."""
    job: dict[str, Any] = {"path": item.path, "size": item.size, "mtime": item.mtime,
                           "kind": item.kind, "log": item.log, "vmlinux": None}
    if item.kind in ("elf-core", "kdump-compressed", "flattened"):
        try:
            plain = decompressed(item.path, "VMCORE") if item.compression else item.path
            identity = dump_kernel_identity(plain, item.kind)
            job["release"] = identity.release
            job["vmlinux"] = finder.find(identity)
        except InputError as error:
            job["plan_error"] = str(error)
    if item.duplicate_of:
        job["duplicate_of"] = item.duplicate_of
    return job


def plan_jobs(items: Iterable[Item], debuginfo_dirs: list[str]) -> list[dict[str, Any]]:
    """Turn discovered items into worker jobs (one vmlinux lookup per kernel)."""
    finder = VmlinuxFinder(debuginfo_dirs)
    return [plan_job(item, finder) for item in items]


def _immediate_row(job: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Rows that need no worker: duplicates, incomplete dumps, unreadable archives."""
    if job.get("duplicate_of"):
        return {"status": "duplicate", "error_kind": "duplicate",
                "error": f"same content as {job['duplicate_of']}"}
    if job["kind"] == "incomplete":
        return {"status": "error", "error_kind": "incomplete",
                "error": "vmcore-incomplete: kdump was still writing this dump when it stopped"}
    if job["kind"] == "unreadable-compressed":
        return {"status": "error", "error_kind": "corrupt-dump",
                "error": "compressed data that cannot be read"}
    if job.get("plan_error"):
        return {"status": "error", "error_kind": "corrupt-dump", "error": job["plan_error"]}
    return None


class _Workers:
    """The worker processes running now, so that an interrupt can stop them all."""

    def __init__(self, threads: Optional[int] = None, slots: Iterable[frozenset[int]] = ()) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[str]] = set()
        self.stopping = False
        # A slot is a worker's CPU set, held while its worker runs (see cpu_slots).
        slots = list(slots)
        self.pinned = bool(slots)
        self.slots: "queue.SimpleQueue[frozenset[int]]" = queue.SimpleQueue()
        for slot in slots:
            self.slots.put(slot)
        # drgn indexes DWARF with OpenMP threads; workers that already fill the cores
        # only contend with them (unless the user chose OMP_NUM_THREADS).
        self.env = None if threads is None or "OMP_NUM_THREADS" in os.environ else \
            dict(os.environ, OMP_NUM_THREADS=str(threads))

    def run(self, job: dict[str, Any], timeout: float, memory_bytes: Optional[int]) -> dict[str, Any]:
        immediate = _immediate_row(job)
        if immediate is not None:
            return immediate
        # One slot per pool thread, so get() never waits.
        slot = self.slots.get() if self.pinned else None
        try:
            with self.lock:
                if self.stopping:
                    return {"status": "error", "error_kind": "interrupted", "error": "run interrupted"}
                process = subprocess.Popen(
                    [sys.executable, "-m", "dfforensics.triage_worker", json.dumps(job)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                    text=True, preexec_fn=_limits(memory_bytes, slot), env=self.env,
                )
                self.running.add(process)
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                return {"status": "error", "error_kind": "timeout",
                        "error": f"analysis did not finish within {timeout:g} s"}
            finally:
                with self.lock:
                    self.running.discard(process)
            return _row_from_worker(process.returncode, stdout, stderr)
        finally:
            if slot is not None:
                self.slots.put(slot)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.running:
                process.kill()


def _row_from_worker(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
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


def run_isolated(job: dict[str, Any], timeout: float, memory_bytes: Optional[int]) -> dict[str, Any]:
    """Run one job in its own worker process; what a Dask worker runs for each dump."""
    return _Workers().run(job, timeout, memory_bytes)


def _dask_results(scheduler: str, planned: list[dict[str, Any]], timeout: float,
                  memory_bytes: Optional[int]):
    """Yield (job, row) as a Dask cluster finishes them; each still runs in its own process."""
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise InputError("--scheduler needs dask.distributed: pip install 'dfforensics[cluster]'") from None
    try:
        client = Client(scheduler, timeout=10)
    except (OSError, TimeoutError) as error:
        raise InputError(f"cannot reach the Dask scheduler {scheduler}: {error}") from None
    try:
        futures = {client.submit(run_isolated, job, timeout, memory_bytes, pure=False): job
                   for job in planned}
        for future in dask_completed(futures):
            job = futures[future]
            try:
                row = future.result()
            except Exception as error:  # a lost Dask worker costs only this row
                row = {"status": "error", "error_kind": "worker-crash",
                       "error": f"Dask task failed: {error}"}
            yield job, row
    finally:
        client.close()


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise.

    Work starts while the archive is still being walked, so the total grows
    until :meth:`all_found`; until then it is shown as ``N+`` and no ETA."""

    def __init__(self, stream: TextIO, total: int = 0):
        self.total, self.done, self.stream = total, 0, stream
        self.final = total > 0
        self.start = time.monotonic()
        self.enabled = stream.isatty()

    def found(self) -> None:
        self.total += 1

    def all_found(self) -> None:
        self.final = True

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed else 0.0
        line = f"\r{self.done}/{self.total}{'' if self.final else '+'} dumps, {rate * 60:.1f}/min"
        if self.final:
            eta = (self.total - self.done) / rate if rate else 0.0
            line += f", ETA {eta:.0f} s"
        self.stream.write(line + " ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


class _Writer:
    """Streams rows as they finish: JSONL and CSV line by line, flushed to disk."""

    def __init__(self, stream: TextIO, fmt: str, new_file: bool):
        self.stream, self.fmt = stream, fmt
        self.lock = threading.Lock()
        self.csv = csv.DictWriter(stream, ROW_FIELDS, extrasaction="ignore") if fmt == "csv" else None
        if self.csv is not None and new_file:
            self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        with self.lock:
            if self.fmt == "jsonl":
                self.stream.write(json.dumps({k: row.get(k) for k in ROW_FIELDS}) + "\n")
            elif self.csv is not None:
                self.csv.writerow(row)
            else:
                return
            self.stream.flush()
            try:
                os.fsync(self.stream.fileno())
            except (OSError, io.UnsupportedOperation, ValueError):
                pass


def run_triage(
    paths: list[str],
    jobs: int,
    fmt: str,
    output: TextIO,
    debuginfo_dirs: list[str],
    timeout: float,
    memory_bytes: Optional[int],
    done: set[tuple[str, int, float]],
    new_file: bool = True,
    progress_stream: TextIO = sys.stderr,
    scheduler: Optional[str] = None,
) -> list[dict[str, Any]]:
    """Analyse every item under ``paths``; return all rows (written as they finish).

    With ``scheduler`` (``tcp://HOST:PORT``), the per-dump jobs run on an
    existing Dask cluster instead of local workers; the rows are the same.
    """
    writer = _Writer(output, fmt, new_file)
    rows: list[dict[str, Any]] = []
    pending_items = (item for item in iter_discover(paths) if item.key not in done)

    def record(job: dict[str, Any], result: dict[str, Any], progress: _Progress) -> None:
        row = {"path": job["path"], "size": job["size"], "mtime": job["mtime"],
               "kind": job["kind"], "log": job.get("log"), **result}
        writer.write(row)
        rows.append(row)
        progress.step()

    if scheduler:
        planned = plan_jobs(pending_items, debuginfo_dirs)
        progress = _Progress(progress_stream, len(planned))
        try:
            for job, result in _dask_results(scheduler, planned, timeout, memory_bytes):
                record(job, result, progress)
        finally:
            progress.close()
        return rows

    # Workers start on the first dump found while the walk and the vmlinux lookups
    # go on: both run once per archive and would otherwise hold up every worker.
    finder = VmlinuxFinder(debuginfo_dirs)
    slots = cpu_slots(jobs)
    workers = _Workers(threads=len(slots[0]) if slots else max(1, (os.cpu_count() or 1) // max(1, jobs)),
                       slots=slots)
    progress = _Progress(progress_stream)
    running: dict[Future, None] = {}

    def plan_and_run(item: Item) -> tuple[dict[str, Any], dict[str, Any]]:
        job = plan_job(item, finder)
        return job, workers.run(job, timeout, memory_bytes)

    def collect(block: bool) -> None:
        if not running:
            return
        finished, _ = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in finished:
            del running[future]
            record(*future.result(), progress)

    executor = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for item in pending_items:
            running[executor.submit(plan_and_run, item)] = None
            progress.found()
            collect(block=False)
        progress.all_found()
        while running:
            collect(block=True)
    except BaseException:
        # Ctrl-C or a failed write: stop every worker; finished rows are on disk.
        workers.stop_all()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        progress.close()
    return rows


def summary_text(rows: list[dict[str, Any]]) -> str:
    """The end-of-run summary: counts per verdict, release and error kind, and the matches."""
    parts = []
    verdicts = Counter(row.get("verdict") or row["status"] for row in rows)
    parts.append(tabulate(sorted(verdicts.items()), headers=["verdict / status", "dumps"]))
    releases = Counter(row.get("kernel_release") or "unknown" for row in rows if row["status"] == "ok")
    if releases:
        parts.append(tabulate(sorted(releases.items()), headers=["kernel release", "dumps"]))
    errors = Counter(row.get("error_kind") for row in rows if row["status"] != "ok")
    if errors:
        parts.append(tabulate(sorted(errors.items()), headers=["error kind", "dumps"]))
    matches = [[row["path"], row.get("cpu"), row.get("pid"), row.get("comm"), row.get("frames")]
               for row in rows if row.get("verdict") == "match"]
    if matches:
        parts.append("matching dumps:\n" + tabulate(matches, headers=["dump", "CPU", "PID", "comm", "frames"]))
    return "\n\n".join(parts) + "\n"


def rows_table(rows: list[dict[str, Any]]) -> str:
    """All rows as a table, for --format table."""
    table = [[row["path"], row.get("verdict") or row["status"], row.get("df_class") or "",
              row.get("kernel_release") or "", row.get("mode") or "",
              row.get("error") or row.get("summary") or ""] for row in rows]
    return tabulate(table, headers=["path", "verdict", "class", "release", "mode", "detail"],
                    maxcolwidths=[50, None, None, None, None, 70]) + "\n"
