"""Triage on the fixtures' own layouts: dumps that do not name their kernel the
usual way still find their vmlinux, a kdump directory is one case, and what the
run prints counts dumps and says why a row fell back."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"
LAYOUTS = ["cpl0-irq-df-flattened", "cpl0-irq-df-novmcoreinfo", "cpl0-irq-df-novmcoreinfo-kaslr"]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", "triage", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    for name in LAYOUTS:
        shutil.copytree(FIXTURES / name, root / name, ignore=shutil.ignore_patterns("expected.json"))
    return root


@pytest.fixture(scope="module")
def rows(archive, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("out") / "rows.jsonl"
    result = run(archive, "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    return {Path(row["path"]).relative_to(archive).as_posix(): row
            for row in map(json.loads, out.read_text().splitlines())}


def test_flattened_and_vmcoreinfo_less_dumps_find_their_vmlinux(rows):
    for name in ("cpl0-irq-df-flattened/vmcore.flat.xz", "cpl0-irq-df-novmcoreinfo/vmcore.xz",
                 "cpl0-irq-df-novmcoreinfo-kaslr/vmcore.xz"):
        row = rows[name]
        assert (row["mode"], row["verdict"]) == ("vmcore", "match"), row
        assert row["vmlinux"].endswith("linux-6.1/vmlinux.xz")


def test_a_console_log_beside_a_kdump_vmcore_is_that_dumps_log(rows):
    assert "cpl0-irq-df-flattened/console.log" not in rows
    assert rows["cpl0-irq-df-flattened/vmcore.flat.xz"]["log"].endswith("vmcore-dmesg.txt")
    assert len(rows) == len(LAYOUTS)


def test_without_debug_info_the_row_says_why_the_banner_could_not_be_matched(archive):
    result = run(archive / "cpl0-irq-df-novmcoreinfo")
    assert result.returncode == 0, result.stderr
    words = " ".join(result.stdout.split())  # the table wraps its detail column where it may
    assert "no VMCOREINFO naming its kernel" in words
    assert "--debuginfo-dir" in words


def test_the_table_shows_the_note_of_a_fallback(archive):
    result = run(archive / "cpl0-irq-df-flattened")
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\n\n")[0]
    assert "log-fallback" in table and "note:" in table and "analysed its console" in table


def test_an_empty_directory_is_one_error_line(tmp_path):
    result = run(tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"dfforensics: error: no dump or console log found under {tmp_path}"]


def test_the_summary_counts_dumps_and_lone_logs_apart(tmp_path):
    shutil.copy(FIXTURES / "wild-rsp-df" / "vmcore.xz", tmp_path / "guest.xz")
    shutil.copy(Path(__file__).parent / "data/logs/3.16-kvm-svm-cpl-fio.log", tmp_path / "console.log")
    result = run(tmp_path, "--format", "jsonl", "-o", tmp_path.parent / f"{tmp_path.name}.jsonl")
    assert result.returncode == 0, result.stderr
    verdicts = result.stdout.strip().split("\n\n")[0]
    assert "error                     1" in verdicts and "possible" not in verdicts
    assert "console logs without a dump" in result.stdout


def test_after_resume_the_summary_covers_the_whole_output(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("wild-rsp-df", "oops-not-df"):
        shutil.copy(FIXTURES / name / "vmcore.xz", archive / f"{name}.xz")
    out = tmp_path / "rows.jsonl"
    assert run(archive, "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out).returncode == 0
    first, _ = out.read_text().splitlines()
    out.write_text(first + "\n")
    result = run(archive, "--debuginfo-dir", KERNELS, "--format", "jsonl", "-o", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert "no-double-fault           1" in result.stdout and "no-match                  1" in result.stdout
    assert "1 of these 2 rows were carried over" in result.stdout


def test_a_small_memory_limit_is_a_memory_row(tmp_path):
    shutil.copy(FIXTURES / "wild-rsp-df" / "vmcore.xz", tmp_path / "guest.xz")
    result = run(tmp_path, "--debuginfo-dir", KERNELS, "--format", "jsonl", "--memory-limit", "128")
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert (row["status"], row["error_kind"]) == ("error", "memory"), row


@pytest.mark.parametrize("scenario", ["cpl0-irq-df-7.2", "cpl0-irq-df-5.10"])
def test_a_dump_without_debug_info_is_analysed_from_its_own_btf(tmp_path, scenario):
    # Both fixture kernels carry BTF in memory; 7.2 names its kallsyms in VMCOREINFO, 5.10's
    # are found by their structure.
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(FIXTURES / scenario / "vmcore.xz", archive / "vmcore.xz")
    out = tmp_path / "rows.jsonl"
    result = run(archive, "--format", "jsonl", "-o", out)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["status"], row["mode"], row["verdict"]) == ("ok", "btf", "match"), row
    assert "guest's BTF" in row["note"]
    strict = run(archive, "--format", "jsonl", "-o", tmp_path / "strict.jsonl", "--require-debuginfo")
    assert strict.returncode == 0, strict.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "strict.jsonl").read_text().splitlines()]
    assert row["error_kind"] == "no-debuginfo" and row["mode"] is None
