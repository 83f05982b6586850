"""`dfforensics triage` on an archive built here from the real fixtures."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", "triage", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def checksums(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    kdump_dir = root / "guest1-2026-11-20-10:00"
    kdump_dir.mkdir()
    shutil.copy(FIXTURES / "cpl0-irq-df" / "vmcore.xz", kdump_dir / "vmcore")
    shutil.copy(FIXTURES / "cpl0-irq-df" / "console.log", kdump_dir / "vmcore-dmesg.txt")
    incomplete = root / "guest2-2026-11-21"
    incomplete.mkdir()
    (incomplete / "vmcore-incomplete").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 100)
    loose = root / "loose"
    loose.mkdir()
    shutil.copy(FIXTURES / "wild-rsp-df" / "vmcore.xz", loose / "virsh-dump-guest7.xz")
    shutil.copy(FIXTURES / "oops-not-df" / "vmcore.xz", loose / "a.xz")
    shutil.copy(FIXTURES / "oops-not-df" / "vmcore.xz", loose / "a-copy.xz")
    data = (FIXTURES / "kernel-stack-overflow-df" / "vmcore.xz").read_bytes()
    (loose / "truncated.xz").write_bytes(data[: len(data) // 3])
    (loose / "README.txt").write_text("not a dump\n")
    shutil.copy(Path(__file__).parent / "data/logs/3.16-kvm-svm-cpl-fio.log", loose / "console.log")
    return root


@pytest.fixture(scope="module")
def rows(archive, tmp_path_factory) -> dict[str, dict]:
    before = checksums(archive)
    out = tmp_path_factory.mktemp("out") / "rows.jsonl"
    result = run(archive, "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert checksums(archive) == before, "triage changed the archive"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # The summary follows on stdout when rows go to a file.
    assert "verdict / status" in result.stdout and "matching dumps:" in result.stdout
    assert "events by title" in result.stdout
    return {Path(row["path"]).relative_to(archive).as_posix(): row for row in rows}


def test_every_item_has_exactly_one_row(rows):
    assert set(rows) == {
        "guest1-2026-11-20-10:00/vmcore", "guest2-2026-11-21/vmcore-incomplete",
        "loose/virsh-dump-guest7.xz", "loose/a.xz", "loose/a-copy.xz", "loose/truncated.xz",
        "loose/console.log",
    }


def test_dumps_recognised_by_content_and_analysed(rows):
    match = rows["guest1-2026-11-20-10:00/vmcore"]
    assert (match["verdict"], match["mode"], match["cpu"], match["comm"]) == ("match", "vmcore", 0, "victim")
    assert match["frames"] >= 1 and match["log"].endswith("vmcore-dmesg.txt")
    assert match["vmlinux"].endswith("vmlinux.xz")
    assert rows["loose/virsh-dump-guest7.xz"]["df_class"] == "wild-rsp"


def test_rows_carry_a_title_and_a_dedup_key_that_groups_the_same_event(rows):
    match = rows["guest1-2026-11-20-10:00/vmcore"]
    assert match["title"].startswith("cpl-corruption: CPL-0 event delivered onto a user stack (victim+")
    (oops,) = [row for name, row in rows.items() if name.startswith("loose/a") and row["status"] == "ok"]
    assert oops["title"].startswith("no-double-fault: BUG: kernel NULL pointer dereference")
    keys = {row["dedup_key"] for row in rows.values() if row["status"] == "ok"}
    assert len(keys) == len({row["title"] for row in rows.values() if row["status"] == "ok"})
    assert rows["loose/virsh-dump-guest7.xz"]["dedup_key"] != match["dedup_key"]


def test_errors_are_rows_with_reasons(rows):
    assert rows["guest2-2026-11-21/vmcore-incomplete"]["error_kind"] == "incomplete"
    assert rows["loose/truncated.xz"]["error_kind"] == "corrupt-dump"
    duplicate = [r for k, r in rows.items() if k in ("loose/a.xz", "loose/a-copy.xz")]
    assert sorted(r["status"] for r in duplicate) == ["duplicate", "ok"]


def test_lone_console_log_is_a_log_only_case(rows):
    row = rows["loose/console.log"]
    assert (row["mode"], row["verdict"]) == ("log-only", "possible")


def test_missing_vmlinux_falls_back_to_the_log(archive, tmp_path):
    out = tmp_path / "rows.csv"
    result = run(archive / "guest1-2026-11-20-10:00", "--format", "csv", "-o", out)
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(out.open()))
    assert (row["mode"], row["verdict"]) == ("log-fallback", "possible")


def test_no_vmlinux_and_no_log_is_an_error_row_not_a_skip(archive, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run(archive / "loose" / "virsh-dump-guest7.xz", "--format", "jsonl", "-o", out)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["error_kind"] == "no-debuginfo" and "6.1.192" in row["error"]


def test_resume_skips_what_is_done_and_completes_the_rest(archive, tmp_path):
    out = tmp_path / "rows.jsonl"
    first = run(archive / "loose", "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out)
    assert first.returncode == 0
    lines = out.read_text().splitlines()
    # Simulate an interrupted run: keep two finished rows and half a line.
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    second = run(archive / "loose", "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out,
                 "--resume")
    assert second.returncode == 0, second.stderr
    # Every line parses: the half line is gone, not left between the rows (issue 22).
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(json.loads(l)["path"] for l in lines)


def test_a_hanging_or_starved_worker_costs_only_its_row(archive, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run(archive / "loose" / "virsh-dump-guest7.xz", archive / "loose" / "console.log",
                 "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out,
                 # Shorter than opening any dump: it cannot finish.
                 "--timeout", "0.02")
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["virsh-dump-guest7.xz"]["error_kind"] == "timeout"
    starved = run(archive / "loose" / "virsh-dump-guest7.xz", "--debuginfo-dir", KERNELS,
                  "--format", "jsonl", "--memory-limit", "40")
    (row,) = [json.loads(line) for line in starved.stdout.splitlines()]
    assert row["status"] == "error" and row["error_kind"] == "memory", row
    assert starved.returncode == 0 and result.returncode == 0


@pytest.mark.parametrize("args", [
    ["/nonexistent"], ["--jobs", "0", "."], ["--resume", "."], ["--format", "xml", "."],
])
def test_usage_errors(args):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("dfforensics: error: ")


def test_vmlinux_from_a_debuginfod_server(archive, tmp_path):
    """A real HTTP server on loopback speaking the debuginfod protocol."""
    import http.server
    import threading

    from dfforensics.inputs.formats import decompressed, dump_kernel_identity

    dump = archive / "guest1-2026-11-20-10:00" / "vmcore"
    build_id = dump_kernel_identity(decompressed(str(dump), "VMCORE"), "elf-core").build_id
    served = tmp_path / "served" / "buildid" / build_id
    served.mkdir(parents=True)
    shutil.copy(decompressed(str(KERNELS / "linux-6.1" / "vmlinux.xz"), "VMLINUX"), served / "debuginfo")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "served"), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "rows.jsonl"
    env = {**os.environ, "DEBUGINFOD_URLS": f"http://127.0.0.1:{server.server_port}",
           "DFFORENSICS_CACHE": str(tmp_path / "cache")}
    try:
        result = subprocess.run([sys.executable, "-m", "dfforensics.cli", "triage", str(dump),
                                 "--format", "jsonl", "-o", str(out)],
                                capture_output=True, text=True, timeout=600, env=env)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["mode"], row["verdict"]) == ("vmcore", "match")
    assert "debuginfod" in row["vmlinux"]


def test_same_rows_on_a_dask_cluster(archive, tmp_path):
    """--scheduler runs the per-dump jobs on a local Dask cluster started here."""
    from distributed import LocalCluster

    local = tmp_path / "local.jsonl"
    remote = tmp_path / "dask.jsonl"
    target = archive / "loose"
    assert run(target, "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", local).returncode == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        result = run(target, "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", remote,
                     "--scheduler", cluster.scheduler_address)
    assert result.returncode == 0, result.stderr

    def essence(path):
        keep = ("path", "status", "verdict", "df_class", "error_kind", "mode", "frames")
        return sorted(tuple(row.get(k) for k in keep)
                      for row in map(json.loads, path.read_text().splitlines()))

    assert essence(remote) == essence(local)


def test_unreachable_scheduler_is_one_error_line(archive):
    result = run(archive / "loose", "--scheduler", "tcp://127.0.0.1:9", "--debuginfo-dir", KERNELS)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("dfforensics: error: ")


def test_progress_bar_on_a_terminal_and_silence_otherwise(archive, tmp_path):
    import pty

    # A dump (no debug info: a quick error row) and a lone log: the dump is counted as a dump.
    target = archive / "loose" / "console.log"
    dump = archive / "loose" / "virsh-dump-guest7.xz"
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "dfforensics.cli", "triage", str(dump), str(target),
                                "--format", "jsonl", "-o", str(tmp_path / "rows.jsonl")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=300) == 0
    os.close(primary)
    assert b"1/1 dumps, 1/1 logs" in output and b"ETA" in output and b"2/2 dumps" not in output
    quiet = run(target, "--format", "jsonl", "-o", tmp_path / "rows2.jsonl")
    assert "ETA" not in quiet.stderr


@pytest.mark.parametrize("jobs, cpus, expected", [
    (1, [0, 1], []),                      # one worker may use every CPU
    (2, [0, 1], [{0}, {1}]),
    (2, [0, 1, 2, 3], [{0, 1}, {2, 3}]),
    (2, [4, 9, 2], []),                   # 3 CPUs do not split in two: no pinning
    (3, [0, 1], []),                      # more workers than CPUs
    (2, [7, 3], [{3}, {7}]),              # the allowed set, not 0..n-1
])
def test_cpu_slots_split_the_allowed_cpus_evenly_or_not_at_all(jobs, cpus, expected):
    from dfforensics.batch.triage import cpu_slots
    assert [set(slot) for slot in cpu_slots(jobs, cpus)] == expected
