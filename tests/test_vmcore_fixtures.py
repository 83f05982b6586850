"""End to end on every real vmcore in fixtures/: no mock of drgn or of the kernel.

Each fixture's expected.json was written by the fixtures builder from what it
did to the guest (see fixtures/README.md), never from dfforensics' output.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
SCENARIOS = sorted(p.parent for p in FIXTURES.glob("*/expected.json"))


def _dump(directory: Path) -> Path:
    (dump,) = [p for p in directory.iterdir() if p.name.startswith("vmcore") and p.name != "vmcore-dmesg.txt"]
    return dump


def _expected(directory: Path) -> dict:
    return json.loads((directory / "expected.json").read_text())


def _run(directory: Path, *extra: str) -> subprocess.CompletedProcess:
    expected = _expected(directory)
    args = [sys.executable, "-m", "dfforensics.cli", str(_dump(directory)),
            str(directory / expected["vmlinux"])]
    for module in expected.get("module_debuginfo", []):
        args += ["--module-debuginfo", str(directory / module)]
    return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=900)


def _answer(expected: dict) -> tuple:
    """The report's top-level (verdict, df_class): the question is whether the hypervisor
    corrupted CPL, so CPU-pushed frames the builder caused make it a match even where the
    crash (if any) is something else; expected.json's verdict names the crash."""
    if expected.get("sweep_verdict") == "cpl0-frames-found":
        return "match", "cpl-corruption"
    return expected["verdict"], expected["df_class"]


def _hex(value):
    return None if value is None else int(value, 16)


# Where the builder left the final RSP (fixtures/README.md and each expected.json's
# notes say how): the victim's main [stack], a pthread stack (cpl0-thread-stack-df),
# the guard page under the kernel task stack the recursion overran, and the
# unmapped address 0x1000 the wild-rsp module loaded.
RSP_REGION_KIND = {
    "kernel-stack-overflow-df": "kernel-guard-page",
    "kernel-stack-overflow-df-5.10": "kernel-guard-page",
    "kernel-stack-overflow-df-7.2": "kernel-guard-page",
    "cpl0-thread-stack-df": "user-thread-stack",
    "wild-rsp-df": "near-null",
}


def test_there_are_fixtures():
    assert SCENARIOS, "fixtures/ holds no scenario with an expected.json"


@pytest.mark.parametrize("directory", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_verdict_task_and_frames_match_what_the_builder_did(directory):
    expected = _expected(directory)
    result = _run(directory, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["verdict"], report["df_class"]) == _answer(expected), report["summary"]
    assert report["kernel"]["release"] == expected["kernel_release"]
    if expected["verdict"] == "no-double-fault":
        assert report["double_faults"] == []
        if expected.get("sweep_verdict") == "cpl0-frames-found":
            assert "no double fault, but" in report["summary"]
        return
    deciding = [df for df in report["double_faults"] if df["verdict"] == report["verdict"]]
    df = deciding[0]
    assert df["cpu"] == expected["cpu"]
    assert (df["pid"], df["tid"], df["comm"]) == (expected["pid"], expected["tid"], expected["comm"])
    assert "ist-pt_regs" in df["sources"] and "log" in df["sources"]
    assert df["rsp_region"]["kind"] == RSP_REGION_KIND.get(directory.name, "user-stack"), \
        df["rsp_region"]["detail"]
    for name in ("rip", "cs", "rsp", "ss"):
        assert df["regs"][name] == _hex(expected["regs"][name]), name
    found = {frame["address"]: frame for frame in report["frames"]}
    if (expected.get("dump_level") or 0) & 8:
        # makedumpfile -d with bit 8 dropped the user pages: the frames the
        # builder caused are not in the dump, and the report must say why.
        assert not any(frame["stack"] == "user" for frame in report["frames"])
        assert any("excludes user pages" in warning for warning in report["warnings"])
        return
    for frame in expected["frames"]:
        got = found.get(_hex(frame["address"]))
        assert got is not None, f"frame at {frame['address']} not found"
        for name in ("rip", "cs", "rflags", "rsp", "ss"):
            assert got[name] == _hex(frame[name]), (frame["address"], name)
        assert got["consistent"] or got["impossible_ss"]


@pytest.mark.parametrize("directory", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_table_output_shows_verdict_and_annotated_stack(directory):
    expected = _expected(directory)
    result = _run(directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"verdict: {_answer(expected)[0]}")
    if expected["frames"] and not (expected.get("dump_level") or 0) & 8:
        assert "== Annotated stack ==" in result.stdout
        assert "RSP (points just above this frame: no stack switch)" in result.stdout
