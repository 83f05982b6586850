"""dfforensics inside drgn: commands through drgn's machinery, the Python API,
and the drgn executable finding the plugin through its entry point.
Runs on the real cpl0-irq-df fixture; nothing is mocked."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfforensics.dump.opendump import open_dump
from dfforensics.inputs.formats import decompressed

FIXTURE = Path(__file__).parents[1] / "fixtures" / "cpl0-irq-df"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
VMCORE = FIXTURE / "vmcore.xz"
VMLINUX = FIXTURE / EXPECTED["vmlinux"]
FRAMES = {int(f["address"], 16) for f in EXPECTED["frames"] if f["stack"] == "user"}


@pytest.fixture(scope="module")
def prog():
    import dfforensics.drgn_commands  # noqa: F401  (registers the commands, as the plugin hook does)
    return open_dump(str(VMCORE), str(VMLINUX)).prog


def test_doublefault_command_prints_the_same_analysis(prog, capsys):
    from drgn.commands import run_command
    report = run_command(prog, "doublefault --format json")
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == report.verdict.value == EXPECTED["verdict"]
    assert {f["address"] for f in data["frames"]} >= FRAMES


def test_doublefault_command_table_and_markdown(prog, capsys):
    from drgn.commands import run_command
    run_command(prog, "doublefault")
    assert capsys.readouterr().out.startswith("verdict: match")
    run_command(prog, "doublefault --format markdown")
    assert capsys.readouterr().out.startswith("**verdict: match")


def test_dfframes_on_the_victims_user_stack(prog, capsys):
    from drgn.commands import run_command
    frames = run_command(prog, f"dfframes -p {EXPECTED['pid']} --user")
    assert {f.address for f in frames} == FRAMES
    assert all(f.consistent and f.stack == "user" for f in frames)
    assert "cpl0-user-stack" in capsys.readouterr().out


def test_dfframes_range_returns_only_frames_inside_it(prog):
    from drgn.commands import run_command
    first = min(FRAMES)
    frames = run_command(prog, f"dfframes {first - 0x10:x} 0x40 -p {EXPECTED['pid']}")
    assert [f.address for f in frames] == [first]


def test_dfframes_on_a_cpus_exception_stacks_finds_the_df_entry_frame(prog):
    from drgn.commands import run_command
    frames = run_command(prog, f"dfframes -c {EXPECTED['cpu']}")
    rsp = int(EXPECTED["regs"]["rsp"], 16)
    assert any(f.stack == "kernel" and f.rsp == rsp and f.cs == 0x33 for f in frames)


def test_dfframes_without_a_target_is_a_command_error(prog):
    from drgn.commands import CommandError, run_command
    with pytest.raises(CommandError):
        run_command(prog, "dfframes")
    with pytest.raises(CommandError):
        run_command(prog, "dfframes -p 999999")


@pytest.mark.parametrize("command", ["doublefault", "dfframes", "dfsweep"])
def test_every_command_takes_help_and_runs_nothing(prog, command, capsys):
    from drgn.commands import run_command

    assert run_command(prog, f"{command} --help") is None
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {command}") and "--help" in out
    if command == "dfframes":
        assert "needs -p PID" in out


def test_python_api(prog):
    from drgn.helpers.linux.pid import find_task
    from dfforensics import analyze, render, scan_frames
    report = analyze(prog)
    assert str(report).startswith("verdict: match") and "\n" not in str(report)
    assert "None" not in render(report) and "== Evidence ==" in render(report)
    task = find_task(prog, EXPECTED["pid"])
    first = min(FRAMES)
    page = first & ~0xFFF
    frames = list(scan_frames(prog, page, page + 0x1000, task=task))
    assert {f.address for f in frames} == {a for a in FRAMES if a & ~0xFFF == page}
    assert all(f.rip_symbol.startswith("/victim+") for f in frames)
    with pytest.raises(ValueError):
        next(scan_frames(prog, first, first + 0x40))


def test_drgn_executable_finds_the_plugin_through_its_entry_point():
    drgn = Path(sys.executable).with_name("drgn")
    drgn = str(drgn) if drgn.exists() else shutil.which("drgn")
    assert drgn, "the test environment installs drgn with its executable"
    code = 'from drgn.commands import run_command; run_command(prog, "doublefault --format json")'
    result = subprocess.run(
        [drgn, "-q", "-c", decompressed(str(VMCORE), "VMCORE"), "-s",
         decompressed(str(VMLINUX), "VMLINUX"), "-e", code],
        capture_output=True, text=True, timeout=300,
        # What is tested is drgn's own plugin loading: no setting left by another test.
        env={k: v for k, v in os.environ.items() if k not in ("DRGN_DISABLE_PLUGINS", "DRGN_PLUGINS")})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == EXPECTED["verdict"]


def test_the_commands_offer_every_rendering_and_only_those():
    from dfforensics.core.model import OUTPUT_FORMATS
    from dfforensics.core.render import FORMATS
    assert tuple(FORMATS) == OUTPUT_FORMATS


def test_loading_the_plugin_does_not_import_the_analysis():
    # drgn loads the plugin in every session; the analysis loads when a command runs.
    probe = ("import sys, dfforensics.drgn_commands; "
             "print(sorted(m for m in sys.modules if m.startswith(('dfforensics.', 'tabulate', 'elftools'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert eval(loaded.stdout) == ["dfforensics.core", "dfforensics.core.model", "dfforensics.core.version",
                                   "dfforensics.drgn_commands"]


@pytest.mark.parametrize("preset, expected", [
    ({}, "*"),                                        # our own programs: no plugins
    ({"DRGN_DISABLE_PLUGINS": "crash_*"}, "crash_*"),  # the user's choice wins
    ({"DRGN_PLUGINS": "mine=mymod"}, None),
])
def test_entry_points_skip_drgn_plugins_unless_the_user_chose(monkeypatch, preset, expected):
    from dfforensics.core.process import skip_drgn_plugins
    monkeypatch.delenv("DRGN_PLUGINS", raising=False)
    monkeypatch.delenv("DRGN_DISABLE_PLUGINS", raising=False)
    for key, value in preset.items():
        monkeypatch.setenv(key, value)
    skip_drgn_plugins()
    assert os.environ.get("DRGN_DISABLE_PLUGINS") == expected
