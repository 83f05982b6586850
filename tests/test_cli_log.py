"""`dfforensics log`: the seed, output formats, and every kind of bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A copy of ../shared/seed/, so that a plain clone runs the tests.
SEED = Path(__file__).parent / "data" / "kvm-svm-cpl-double-fault-report.txt"
LOGS = Path(__file__).parent / "data" / "logs"


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", *map(str, args)],
                          capture_output=True, text=True, input=stdin, timeout=60)


def test_seed_report_is_possible_with_its_registers_explained():
    result = run("log", SEED)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("verdict: possible (cpl-corruption)")
    assert "__do_page_fault+0x1f/0x540" in out
    assert "002b (__USER_DS)" in out and "0010 (__KERNEL_CS)" in out
    assert "00007ffe0bc9bfa8" in out
    assert "= first push slot below RSP" in out          # CR2 00007ffe0bc9bf98
    assert "00007f6cb95567c0  cpl0-user-stack  0x81" in out


def test_seed_report_json_follows_the_schema():
    result = run("log", SEED, "--format", "json")
    data = json.loads(result.stdout)
    assert data["schema_version"] == 2
    assert data["verdict"] == "possible" and data["df_class"] == "cpl-corruption"
    (df,) = data["double_faults"]
    assert (df["cpu"], df["pid"], df["comm"]) == (0, 36565, "fio")
    assert df["regs"]["rsp"] == 0x7FFE0BC9BFA8 and df["regs"]["ss"] == 0x2B
    assert df["sources"] == ["log"]
    (frame,) = data["frames"]
    assert frame["address"] == 0x7F6CB95567C0 and frame["vector"] == 0x81 and frame["consistent"]
    assert {e["check"] for e in data["evidence"]} >= {"impossible-ss", "cpl0-frames-on-user-stack"}
    assert data["kernel"]["release"] == "3.16.39kmemleak"


def test_markdown_and_output_file(tmp_path):
    out = tmp_path / "report.md"
    result = run("log", SEED, "--format", "markdown", "-o", out)
    assert result.returncode == 0 and result.stdout == ""
    text = out.read_text()
    assert text.startswith("**verdict: possible") and "| register" in text


def test_several_logs_give_a_json_array():
    logs = sorted(LOGS.glob("*.log"))[:3]
    data = json.loads(run("log", *logs, "--format", "json").stdout)
    assert [d["source"]["path"] for d in data] == [str(p) for p in logs]


def test_log_without_double_fault_says_so_and_names_the_crash(tmp_path):
    log = tmp_path / "oops.txt"
    log.write_text("[    1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
                   "[    1.1] Oops: 0002 [#1] SMP\n[    1.2] RIP: 0010:foo+0x1/0x2\n")
    result = run("log", log)
    assert result.returncode == 0
    assert result.stdout.startswith("verdict: no-double-fault")
    assert "NULL pointer dereference" in result.stdout


def test_stdin_is_read():
    result = run("log", "-", stdin=SEED.read_text())
    assert result.stdout.startswith("verdict: possible")


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.log", "no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "empty.log").write_text("") and d / "empty.log" or d / "empty.log", "empty file"),
    (lambda d: (d / "bin.log").write_bytes(os.urandom(4096) + b"\0") and d / "bin.log", "binary data"),
    # No NUL, no control character, and no text either (issue 22).
    (lambda d: (d / "c5.log").write_bytes(b"\xc5" * 200_000) and d / "c5.log", "binary data"),
    (lambda d: (d / "core").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 100) and d / "core", "a dump?"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, make, message):
    path = make(tmp_path)
    result = run("log", path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfforensics: error: ") and message in lines[0]


def test_unreadable_path(tmp_path):
    # Root reads files whatever their mode; a path through a regular file
    # cannot be read by anyone.
    (tmp_path / "file").write_text("x")
    result = run("log", tmp_path / "file" / "log")
    assert result.returncode == 2
    assert result.stderr.startswith("dfforensics: error: ") and "cannot read" in result.stderr


def test_usage_errors_are_one_line_and_exit_2():
    for args in (["log"], ["log", SEED, "--format", "yaml"], []):
        result = run(*args)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith("dfforensics: error: ")
        assert "Traceback" not in result.stderr


def test_a_reader_that_goes_away_is_not_an_error():
    # `dfforensics log ... | head -1`: the reader closes the pipe before the report is
    # written; exit status 0 and nothing on stderr, as for any filter in a pipeline.
    process = subprocess.Popen([sys.executable, "-m", "dfforensics.cli", "log", str(SEED)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the child has imported anything, let alone written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0
    assert stderr == ""


def test_a_stated_environment_that_contradicts_the_log_is_warned_about():
    # The seed's guest prints "Hardware name: QEMU Standard PC ...".
    result = run("log", LOGS / "3.16-kvm-svm-cpl-fio.log", "--environment", "bare-metal", "--format", "json")
    report = json.loads(result.stdout)
    assert report["df_class"] == "bare-metal"
    assert any("contradicts the log" in warning for warning in report["warnings"])


def test_a_log_with_a_few_bytes_that_are_no_utf8_is_still_text():
    from dfforensics.logs.logbytes import looks_binary

    # A Latin-1 byte on every line (a hostname, a serial console's noise) is not binary.
    assert not looks_binary(b"[    1.000000] serial8250: caf\xe9 console ok\n" * 2000)
    assert looks_binary(b"\xc5" * 200_000)
