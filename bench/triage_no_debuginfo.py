#!/usr/bin/env python3
"""Issue 19's triage case: an archive of dumps of several kernel builds, with no debug info
at all, triaged from each guest's own BTF and kallsyms.

    python bench/triage_no_debuginfo.py [--reps 3] [--jobs 1,2]

The archive (a temporary directory of hard links, so the dumps are not copied) holds every
committed fixture dump whose kernel keeps BTF in memory (5.10.223 and 7.2.13: 7 dumps),
decompressed once by dfforensics' own cache before anything is timed, and, when
bench/gendistro.py has made it, the Debian 12 6.1 cloud kernel's dump (a third build).
No --debuginfo-dir, DEBUGINFOD_URLS unset: nothing but the dumps. Each repetition runs
``dfforensics triage ARCHIVE --jobs N --format jsonl`` with an empty dfforensics cache of its
own (a first sight of every build) and then again with that cache (the per-build BTF index
kept), and checks every row: status ok, mode btf, the fixture's expected verdict. Medians of
wall time and dumps per minute. Not a test (CI does not run it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
DISTRO = Path(os.environ.get("DFFORENSICS_BENCH_CACHE", Path.home() / ".cache/dfforensics-bench")) \
    / "debian-6.1-cloud" / "vmcore"
CLI = [sys.executable, "-m", "dfforensics.cli"]


def btf_fixtures() -> dict[str, dict]:
    """Fixture name -> expected.json, for the kernels that keep BTF in memory."""
    found = {}
    for expected_path in sorted(FIXTURES.glob("*/expected.json")):
        expected = json.loads(expected_path.read_text())
        if expected.get("kernel_release", "").startswith(("5.10", "7.2")):
            found[expected_path.parent.name] = expected
    return found


def build_archive(directory: Path, fixtures: dict[str, dict]) -> dict[str, str]:
    """Hard links of the decompressed dumps: archive file name -> expected verdict (or None)."""
    from dfforensics.inputs.formats import decompressed

    expected = {}
    for name, facts in fixtures.items():
        (dump,) = [p for p in (FIXTURES / name).iterdir() if p.name.startswith("vmcore") and p.suffix == ".xz"]
        target = directory / f"{name}.vmcore"
        os.link(decompressed(str(dump), "VMCORE"), target)
        # The top-level verdict: match whenever memory proves CPL-0 delivery, the sweep's
        # frames included (schema 2), else the fixture's #DF verdict.
        expected[target.name] = "match" if facts.get("sweep_verdict") == "cpl0-frames-found" else facts["verdict"]
    if DISTRO.exists():
        target = directory / "debian-6.1-cloud.vmcore"
        os.link(DISTRO, target)
        expected[target.name] = None  # a running guest's dump: any verdict, but analysed
    return expected


def triage(archive: Path, jobs: int, cache: Path, output: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "DEBUGINFOD_URLS"}
    env["DFFORENSICS_CACHE"] = str(cache)
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(CLI + ["triage", str(archive), "--jobs", str(jobs), "--format", "jsonl", "-o", str(output)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def check(output: Path, expected: dict[str, str]) -> None:
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(expected), rows
    for row in rows:
        name = Path(row["path"]).name
        assert row["status"] == "ok" and row["mode"] == "btf", row
        assert expected[name] is None or row["verdict"] == expected[name], row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", default="1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dff-triage-nodebug-") as work:
        work_path = Path(work)
        archive = work_path / "archive"
        archive.mkdir()
        expected = build_archive(archive, btf_fixtures())
        print(f"{len(expected)} dumps: {', '.join(sorted(expected))}")
        print("| jobs | cache | wall s (median) | dumps/min |")
        print("| --- | --- | --- | --- |")
        for jobs in map(int, args.jobs.split(",")):
            first, second = [], []
            for rep in range(args.reps):
                cache = work_path / f"cache-{jobs}-{rep}"
                output = work_path / "rows.jsonl"
                first.append(triage(archive, jobs, cache, output))
                check(output, expected)
                second.append(triage(archive, jobs, cache, output))
                check(output, expected)
            for label, samples in (("empty (first sight of each build)", first), ("per-build index kept", second)):
                wall = statistics.median(samples)
                print(f"| {jobs} | {label} | {wall:.2f} | {len(expected) * 60 / wall:.0f} |")


if __name__ == "__main__":
    main()
