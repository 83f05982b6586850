"""
Batch triage
------------

``dfforensics triage PATH...``: discover every dump and console log under the
paths, find each dump's debug vmlinux, analyse each in a process of its own
(timeout, memory cap; forked by one server per job slot, which imports drgn
once), and stream one row per item as it finishes, so an
interrupted run loses nothing finished and ``--resume`` completes the rest.
The archive is only ever read.
"""

import csv
import io
import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, Final, Iterable, Iterator, Optional, TextIO, Union

from dfforensics.batch.debuginfo import Lookup, VmlinuxFinder, facts_to_wire
from dfforensics.batch.discover import Item, iter_discover
from dfforensics.batch.jobs import ROW_FIELDS, Job, Row, error_row, job_to_wire, row_from_wire, row_to_wire
from dfforensics.batch.worker import row_from_worker, timeout_row
from dfforensics.core.errors import ErrorKind, InputError
from dfforensics.inputs.formats import DUMP_KINDS, DumpIdentity, discard_partials

__all__ = ("ROW_FIELDS", "cpu_slots", "job_of", "run_triage", "triage_isolated", "summary_text", "load_done")


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


_CSV_INTEGERS: Final = ("size", "cpu", "pid", "frames")
_CSV_FLOATS: Final = ("mtime", "seconds")


def _row_from_csv(record: dict[str, str]) -> Row:
    """A row of an earlier CSV output: "" is None, numbers are numbers again."""
    values: dict[str, object] = {key: (value if value != "" else None) for key, value in record.items()
                                 if key in ROW_FIELDS}
    for name in _CSV_INTEGERS:
        if values.get(name) is not None:
            values[name] = int(str(values[name]))
    for name in _CSV_FLOATS:
        if values.get(name) is not None:
            values[name] = float(str(values[name]))
    return row_from_wire(values)


def _complete(row: Row) -> bool:
    return row.path is not None and row.size is not None and row.mtime is not None


def load_rows(output: Optional[str]) -> list[Row]:
    """The rows already in an output file (JSONL or CSV), for --resume; a line
    cut by a crash is left out (its item is simply done again)."""
    rows: list[Row] = []
    if not output or not os.path.exists(output):
        return rows
    with open(output, encoding="utf-8", errors="replace", newline="") as file:
        first = file.readline()
        file.seek(0)
        if first.startswith("path,"):
            for record in csv.DictReader(file):
                try:
                    rows.append(_row_from_csv(record))
                except (TypeError, ValueError):
                    continue
        else:
            for line in file:
                try:
                    rows.append(row_from_wire(json.loads(line)))
                except (ValueError, TypeError, AttributeError):
                    continue
    return [row for row in rows if _complete(row)]


def row_key(row: Row) -> tuple[str, int, float]:
    """What --resume matches a row to an item on: path, size and mtime."""
    assert row.path is not None and row.size is not None and row.mtime is not None
    return (row.path, row.size, row.mtime)


def load_done(output: Optional[str]) -> set[tuple[str, int, float]]:
    """The keys (path, size, mtime) of rows already in an output, for --resume."""
    return {row_key(row) for row in load_rows(output)}


def job_of(item: Item, require_debuginfo: bool = False) -> Job:
    """The job of one discovered item, not planned yet: planning reads the dump,
    so it is done by the dump's worker (:meth:`_Workers.triage`), not here."""
    return Job(item.path, item.size, item.mtime, item.kind, item.log, duplicate_of=item.duplicate_of,
               require_debuginfo=require_debuginfo, plan_error=item.problem,
               plan_error_kind=item.problem_kind, note=item.note)


def _immediate_row(job: Job) -> Optional[Row]:
    """Rows that need no worker: duplicates, incomplete dumps, unreadable archives."""
    if job.duplicate_of:
        return error_row(ErrorKind.DUPLICATE, f"same content as {job.duplicate_of}", status="duplicate")
    if job.kind == "incomplete":
        return error_row(ErrorKind.INCOMPLETE,
                         "vmcore-incomplete: kdump was still writing this dump when it stopped")
    if job.kind == "unreadable-compressed":
        return error_row(ErrorKind.CORRUPT_DUMP, "compressed data that cannot be read")
    if job.plan_error:
        return error_row(job.plan_error_kind or ErrorKind.INPUT, job.plan_error)
    return None


class _Server:
    """One fork server (``triage_worker --serve``), kept to a set of CPUs.

    It runs in a session of its own, so that killing its process group also
    ends the child analysing a dump, and a Ctrl-C meant for triage reaches
    triage alone (which then stops every server)."""

    def __init__(self, env: Optional[dict[str, str]], cpus: Optional[frozenset[int]]) -> None:
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_PROGRAM, "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=env, start_new_session=True,
        )
        if cpus:
            # Set from here rather than in a preexec_fn, which is unsafe in a process
            # with threads (a server is restarted from a pool thread). The children it
            # forks inherit the set; only its own first imports may run elsewhere.
            try:
                os.sched_setaffinity(self.process.pid, cpus)
            except OSError:
                pass  # it died at once: ask() reports how

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, op: str, job: Job, timeout: float, limit: float, memory_bytes: Optional[int],
                **extra: Any) -> Union[Row, dict[str, Any]]:
        """The answer to one request (worker.py): a row, or the plan of a ``plan`` or
        ``banner`` step; an error row if the server dies or stops answering.

        ``timeout`` is what is left of the dump's time, ``limit`` its whole limit."""
        request = json.dumps({"op": op, "job": job_to_wire(job), "timeout": timeout, "limit": limit,
                              "memory_bytes": memory_bytes, **extra})
        try:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(request.encode() + b"\n")
            self.process.stdin.flush()
            # The server enforces the time limit itself; this deadline only covers a
            # server that hangs outside a job (start-up, a stuck kill).
            line = _read_line(self.process.stdout.fileno(), time.monotonic() + timeout + _SERVER_GRACE_S)
        except BrokenPipeError:
            line = b""
        except TimeoutError:
            self.kill()
            return timeout_row(limit, op)
        if line:
            answer = json.loads(line)
            return answer["plan"] if "plan" in answer else row_from_wire(answer)
        self.kill()  # its child, if one was running, must not outlive it
        self.log.seek(0)
        return row_from_worker(self.process.returncode, "", self.log.read().decode(errors="replace"))

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        # A child killed with it in the middle of a decompression leaves its partial
        # file (named by the server's process group) behind.
        try:
            discard_partials(self.process.pid)
        except InputError:
            pass

    def close(self) -> None:
        """Let the server end after its last job; kill it if it does not."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=_SERVER_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self.log.close()


# ``python -m dfforensics.batch.worker`` would put the working directory first on
# sys.path: run from a directory holding another dfforensics (a checkout of another
# version), the servers would analyse with that one. Python 3.11's -P is not in 3.10.
_SERVER_PROGRAM: Final = (
    "import sys\n"
    "if sys.path[:1] == ['']: del sys.path[0]\n"
    "from dfforensics.batch.worker import run\n"
    "run()\n"
)

# How long past a job's time limit a server may stay silent before it is killed.
_SERVER_GRACE_S: Final = 30.0


def _read_line(fd: int, deadline: float) -> bytes:
    """One line from ``fd`` (b"" at end of file); TimeoutError at ``deadline``."""
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b""
        data += chunk
    return data


class _Slot:
    """A job slot: its CPUs (None: not pinned) and the server that runs its jobs."""

    def __init__(self, cpus: Optional[frozenset[int]]) -> None:
        self.cpus = cpus
        self.server: Optional[_Server] = None


class _Workers:
    """One fork server per job slot, started before the first job (:meth:`start`)
    and restarted if it dies; an interrupt stops them all."""

    def __init__(self, jobs: int = 1, slots: Iterable[frozenset[int]] = ()) -> None:
        self.lock = threading.Lock()
        self.stopping = False
        pinned = list(slots)
        self.slots = [_Slot(pinned[i] if pinned else None) for i in range(max(1, jobs))]
        # Last in, first out: a job takes the slot freed last, whose server is up,
        # so that servers start only as more dumps run at once (never more than dumps).
        self.free: "queue.LifoQueue[_Slot]" = queue.LifoQueue()
        for slot in reversed(self.slots):
            self.free.put(slot)
        self.eager = min(len(self.slots), len(os.sched_getaffinity(0)))
        # --jobs N is a budget of N CPUs: each worker's drgn indexes DWARF with one
        # OpenMP thread unless the user chose OMP_NUM_THREADS. With two (idle ones
        # sleeping), --jobs 1 on two cores is ~1.3x faster, but it takes both cores,
        # and there --jobs 2 still does ~1.4x its dumps (bench/README.md, round 4).
        self.env = None if "OMP_NUM_THREADS" in os.environ else dict(os.environ, OMP_NUM_THREADS="1")

    def start(self) -> None:
        """Start the servers of the first slots now (one per CPU at most), so that
        their imports overlap the archive walk; the others start when a dump needs them."""
        with self.lock:
            if not self.stopping:
                for slot in self.slots[:self.eager]:
                    self._live_server(slot)

    def _live_server(self, slot: _Slot) -> _Server:
        """The slot's server, started anew if it has none or it died (lock held)."""
        if slot.server is not None and not slot.server.alive():
            slot.server.close()  # gone already: this reaps it and frees its log
            slot.server = None
        if slot.server is None:
            slot.server = _Server(self.env, slot.cpus)
        return slot.server

    def run(self, job: Job, timeout: float, memory_bytes: Optional[int]) -> Row:
        """The row of a planned job (its vmlinux already chosen)."""
        immediate = _immediate_row(job)
        if immediate is not None:
            return immediate
        # As many pool threads as slots, so get() never waits.
        slot = self.free.get()
        try:
            answer = self._step(slot, "run", job, time.monotonic() + timeout, timeout, memory_bytes)
            assert isinstance(answer, Row)
            return answer
        finally:
            self.free.put(slot)

    def triage(self, item: Item, finder: VmlinuxFinder, require_debuginfo: bool, timeout: float,
               memory_bytes: Optional[int]) -> tuple[Job, Row]:
        """Plan one item and run it: its job and its row.

        Every step that reads the dump (decompressing it, reading the kernel it
        names, matching a banner against its memory, the analysis) runs in a
        worker's child on the dump's one time limit and memory cap, so a bomb
        costs its own row and no more than its limit. Only the vmlinux lookup,
        which reads the debug-info trees and debuginfod (with their own limits,
        once per kernel), runs here, and does not count against the dump's
        limit; the row's ``seconds`` is the whole of it.
        """
        start = time.monotonic()
        job = job_of(item, require_debuginfo)
        immediate = _immediate_row(job)
        if immediate is not None:
            return job, immediate
        slot = self.free.get()
        try:
            job, row = self._plan_and_run(slot, job, finder, start + timeout, timeout, memory_bytes)
        finally:
            self.free.put(slot)
        return job, replace(row, seconds=round(time.monotonic() - start, 3))

    def _step(self, slot: _Slot, op: str, job: Job, deadline: float, limit: float,
              memory_bytes: Optional[int], **extra: Any) -> Union[Row, dict[str, Any]]:
        left = deadline - time.monotonic()
        if left <= 0:
            return timeout_row(limit, op)
        with self.lock:
            if self.stopping:
                return error_row(ErrorKind.INTERRUPTED, "run interrupted")
            server = self._live_server(slot)
        return server.request(op, job, left, limit, memory_bytes, **extra)

    def _plan_and_run(self, slot: _Slot, job: Job, finder: VmlinuxFinder, deadline: float, limit: float,
                      memory_bytes: Optional[int]) -> tuple[Job, Row]:
        if job.kind in DUMP_KINDS:
            plan = self._step(slot, "plan", job, deadline, limit, memory_bytes)
            if isinstance(plan, Row):
                return job, plan
            identity = DumpIdentity(plan.get("release"), plan.get("build_id"), plan.get("source") or "")
            looking = time.monotonic()
            try:
                found = finder.lookup(identity, job.kind)
                candidates: list = []
                if found is None:
                    candidates, why_none = finder.banner_candidates()
                    found = Lookup(None, why_none)
            except InputError as error:
                return job, error_row(error.kind, str(error))
            # The lookup reads the debug-info trees, not the dump (the first dump of a
            # kernel pays for decompressing its vmlinux): not the dump's time.
            deadline += time.monotonic() - looking
            if candidates:
                match = self._step(slot, "banner", job, deadline, limit, memory_bytes,
                                   candidates=[facts_to_wire(path, facts) for path, facts in candidates])
                if isinstance(match, Row):
                    return job, match
                found = Lookup(match.get("vmlinux"), match.get("why_none"))
            job = replace(job, release=identity.release, vmlinux=found.vmlinux, vmlinux_note=found.why_none)
        row = self._step(slot, "run", job, deadline, limit, memory_bytes)
        assert isinstance(row, Row)
        return job, row

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            for slot in self.slots:
                if slot.server is not None:
                    slot.server.kill()

    def close(self) -> None:
        for slot in self.slots:
            if slot.server is not None:
                slot.server.close()
                slot.server = None


# One finder per set of trees in a process: a Dask worker runs many dumps, and
# its finder remembers what the vmlinux files it opened say.
_FINDERS: dict[tuple[str, ...], VmlinuxFinder] = {}
_FINDERS_LOCK: Final = threading.Lock()


def triage_isolated(item: Item, debuginfo_dirs: list[str], require_debuginfo: bool, timeout: float,
                    memory_bytes: Optional[int]) -> tuple[Job, Row]:
    """Plan and run one item in worker processes of its own; what a Dask worker runs for each dump."""
    with _FINDERS_LOCK:
        finder = _FINDERS.setdefault(tuple(debuginfo_dirs), VmlinuxFinder(debuginfo_dirs))
    workers = _Workers()
    try:
        return workers.triage(item, finder, require_debuginfo, timeout, memory_bytes)
    finally:
        workers.close()


def _dask_results(scheduler: str, items: list[Item], debuginfo_dirs: list[str], require_debuginfo: bool,
                  timeout: float, memory_bytes: Optional[int]) -> Iterator[tuple[Job, Row]]:
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
        futures = {client.submit(triage_isolated, item, debuginfo_dirs, require_debuginfo, timeout,
                                 memory_bytes, pure=False): item
                   for item in items}
        for future in dask_completed(futures):
            try:
                job, row = future.result()
            except Exception as error:  # a lost Dask worker costs only this row
                job = job_of(futures[future], require_debuginfo)
                row = error_row(ErrorKind.WORKER_CRASH, f"Dask task failed: {error}")
            yield job, row
    finally:
        client.close()


class _Count:
    """Done and found, for one kind of input."""

    def __init__(self) -> None:
        self.done = self.total = 0

    def text(self, final: bool, noun: str) -> str:
        return f"{self.done}/{self.total}{'' if final else '+'} {noun}"


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise.

    It counts dumps, and console logs without a dump apart (they take no
    worker's time to speak of). Work starts while the archive is still being
    walked, so the totals grow until :meth:`all_found`; until then they are
    shown as ``N+`` and no ETA."""

    def __init__(self, stream: TextIO, items: Iterable[Item] = ()):
        self.dumps, self.logs, self.stream = _Count(), _Count(), stream
        self.final = False
        for item in items:
            self.found(item.kind)
        self.final = self.dumps.total + self.logs.total > 0
        self.start = time.monotonic()
        self.enabled = stream.isatty()

    def _count(self, kind: Optional[str]) -> _Count:
        return self.logs if kind == "log" else self.dumps

    def found(self, kind: str) -> None:
        self._count(kind).total += 1

    def all_found(self) -> None:
        self.final = True

    def step(self, row: Row) -> None:
        count = self._count(row.kind)
        count.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = self.dumps.done / elapsed if elapsed else 0.0
        line = "\r" + self.dumps.text(self.final, "dumps")
        if self.logs.total:
            line += ", " + self.logs.text(self.final, "logs")
        line += f", {rate * 60:.1f} dumps/min"
        if self.final:
            left = self.dumps.total - self.dumps.done
            eta = left / rate if rate else 0.0
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

    def write(self, row: Row) -> None:
        with self.lock:
            if self.fmt == "jsonl":
                self.stream.write(json.dumps(row_to_wire(row)) + "\n")
            elif self.csv is not None:
                self.csv.writerow(row_to_wire(row))
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
    require_debuginfo: bool = False,
) -> list[Row]:
    """Analyse every item under ``paths``; return all rows (written as they finish).

    With ``scheduler`` (``tcp://HOST:PORT``), the per-dump jobs run on an
    existing Dask cluster instead of local workers; the rows are the same.
    """
    writer = _Writer(output, fmt, new_file)
    rows: list[Row] = []
    pending_items = (item for item in iter_discover(paths) if item.key not in done)

    def record(job: Job, result: Row, progress: _Progress) -> None:
        row = result.of_job(job)
        writer.write(row)
        rows.append(row)
        progress.step(row)

    if scheduler:
        items = list(pending_items)
        progress = _Progress(progress_stream, items)
        try:
            for job, result in _dask_results(scheduler, items, debuginfo_dirs, require_debuginfo, timeout,
                                             memory_bytes):
                record(job, result, progress)
        finally:
            progress.close()
        return rows

    # Workers start on the first dump found while the walk goes on; each dump is
    # planned by its worker (decompression is the dump's own cost, on its limits).
    finder = VmlinuxFinder(debuginfo_dirs)
    workers = _Workers(jobs, slots=cpu_slots(jobs))
    progress = _Progress(progress_stream)
    running: dict[Future, None] = {}

    def plan_and_run(item: Item) -> tuple[Job, Row]:
        return workers.triage(item, finder, require_debuginfo, timeout, memory_bytes)

    def collect(block: bool) -> None:
        if not running:
            return
        finished, _ = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in finished:
            del running[future]
            record(*future.result(), progress)

    executor = ThreadPoolExecutor(max_workers=max(1, jobs))
    interrupted = False
    try:
        workers.start()
        for item in pending_items:
            running[executor.submit(plan_and_run, item)] = None
            progress.found(item.kind)
            collect(block=False)
        progress.all_found()
        while running:
            collect(block=True)
    except BaseException:
        # Ctrl-C or a failed write: stop every worker; finished rows are on disk. A
        # planning thread still reading an input is not waited for: the command ends
        # without interpreter teardown, so it cannot hold the exit up.
        interrupted = True
        workers.stop_all()
        raise
    finally:
        executor.shutdown(wait=not interrupted, cancel_futures=True)
        workers.close()
        progress.close()
    return rows


def _counts_table(counts: Counter, headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(sorted(counts.items(), key=lambda item: str(item[0])), headers=headers)


def _outcome(row: Row) -> str:
    return row.verdict or (row.error_kind.value if row.error_kind else row.status)


def summary_text(rows: list[Row], carried_over: int = 0) -> str:
    """The end-of-run summary: counts of dumps per verdict, release and error kind,
    the matches, and the console logs without a dump apart.

    ``rows`` is the whole output, with the ``carried_over`` rows an earlier
    run (--resume) had written."""
    # Imported at the end of a run, not while the workers start.
    from tabulate import tabulate

    dumps = [row for row in rows if row.kind != "log"]
    logs = [row for row in rows if row.kind == "log"]
    parts = []
    if dumps:
        parts.append(_counts_table(Counter(row.verdict or row.status for row in dumps),
                                   ["verdict / status", "dumps"]))
    releases = Counter(row.kernel_release or "unknown" for row in dumps if row.status == "ok")
    if releases:
        parts.append(_counts_table(releases, ["kernel release", "dumps"]))
    errors = Counter(row.error_kind.value if row.error_kind else "unknown"
                     for row in dumps if row.status != "ok")
    if errors:
        parts.append(_counts_table(errors, ["error kind", "dumps"]))
    if logs:
        parts.append(_counts_table(Counter(_outcome(row) for row in logs),
                                   ["console logs without a dump", "logs"]))
    groups = _title_groups(rows)
    if groups:
        parts.append("events by title (the same dedup key groups the same event across dumps):\n"
                     + tabulate(groups, headers=["title", "inputs", "first seen", "last seen", "dedup key"],
                                maxcolwidths=[70, None, None, None, None], disable_numparse=True))
    matches = [[row.path, row.cpu, row.pid, row.comm, row.frames] for row in dumps if row.verdict == "match"]
    if matches:
        parts.append("matching dumps:\n"
                     + tabulate(matches, headers=["dump", "CPU", "PID", "comm", "frames"]))
    if carried_over:
        parts.append(f"{carried_over} of these {len(rows)} rows were carried over from the earlier "
                     f"run (--resume); {len(rows) - carried_over} are new.")
    return "\n\n".join(parts) + "\n"


def _title_groups(rows: list[Row]) -> list[list]:
    """One line per dedup key: its title, how many inputs, and when the first and last were
    written (file mtimes), most frequent first."""
    import time

    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.status == "ok" and row.dedup_key:
            groups.setdefault(row.dedup_key, []).append(row)

    def when(mtime: Optional[float]) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime)) if mtime is not None else "-"

    lines = []
    for key, members in sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0].title or "")):
        mtimes = [row.mtime for row in members if row.mtime is not None]
        lines.append([members[0].title, len(members), when(min(mtimes) if mtimes else None),
                      when(max(mtimes) if mtimes else None), key])
    return lines


def _detail(row: Row) -> str:
    detail = row.error or row.summary or ""
    return f"{detail} (note: {row.note})" if row.note else detail


def rows_table(rows: list[Row]) -> str:
    """All rows as a table, for --format table; a row's note (why it fell back) shows in its detail."""
    from tabulate import tabulate

    table = [[row.path, row.verdict or row.status, row.df_class or "", row.kernel_release or "",
              row.mode or "", _detail(row)] for row in rows]
    return tabulate(table, headers=["path", "verdict", "class", "release", "mode", "detail"],
                    maxcolwidths=[50, None, None, None, None, 70]) + "\n"
