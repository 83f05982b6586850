"""The command line a user expects: version, usage, brief output, verdict exit codes, and
errors that point at the mistake (arguments swapped, a vmlinux given as module debug info,
the user's own path in messages rather than a cache path)."""

import json
import lzma
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "fixtures"
VMCORE = FIXTURES / "cpl0-irq-df" / "vmcore.xz"
VMLINUX = FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"


def run(*args):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def _version_in_pyproject() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_version_is_the_package_s():
    result = run("--version")
    assert result.returncode == 0 and result.stdout == f"dfforensics {_version_in_pyproject()}\n"


def test_no_arguments_prints_a_short_usage_naming_every_command():
    result = run()
    assert result.returncode == 2 and result.stdout == ""
    for command in ("dfforensics VMCORE [VMLINUX]", "sweep", "log", "triage", "cache"):
        assert command in result.stderr
    assert len(result.stderr.splitlines()) < 10
    assert result.stderr.splitlines()[-1].startswith("dfforensics: error: ")


def test_brief_prints_the_verdict_line_only_and_exit_code_says_the_verdict():
    result = run(VMCORE, VMLINUX, "-q", "--exit-code")
    assert result.returncode == 4, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("verdict: match (cpl-corruption)")
    logs = run("log", FIXTURES / "oops-not-df" / "console.log", "--brief", "--exit-code")
    assert logs.returncode == 0 and logs.stdout.startswith("verdict: no-double-fault")
    seed = run("log", Path(__file__).parent / "data" / "kvm-svm-cpl-double-fault-report.txt", "--exit-code")
    assert seed.returncode == 3


def test_without_exit_code_any_verdict_exits_0():
    assert run("log", Path(__file__).parent / "data" / "kvm-svm-cpl-double-fault-report.txt").returncode == 0


def test_the_json_names_the_tool_version():
    report = json.loads(run(VMCORE, VMLINUX, "--format", "json").stdout)
    assert report["tool_version"] == _version_in_pyproject() and report["schema_version"] == 2
    assert report["title"] and len(report["dedup_key"]) == 16


def _one_error_line(result, *words):
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("dfforensics: error: ") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr, result.stderr


def test_swapped_arguments_get_a_hint():
    _one_error_line(run(VMLINUX, VMCORE), "the dump comes first")


def test_a_vmlinux_is_refused_as_module_debug_info():
    _one_error_line(run(VMCORE, VMLINUX, "--module-debuginfo", VMLINUX), "not a module's debug info")


@pytest.mark.parametrize("command", [[], ["sweep"]])
def test_errors_name_the_user_s_file_not_its_cached_copy(tmp_path, command):
    cut = tmp_path / "vmlinux-cut.xz"
    with lzma.open(VMLINUX) as source:
        cut.write_bytes(lzma.compress(source.read(3_000_000), preset=0))
    result = run(*command, VMCORE, cut)
    _one_error_line(result, str(cut))
    assert ".cache" not in result.stderr and "dfforensics-tests-" not in result.stderr
