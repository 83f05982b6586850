"""The command without VMLINUX: types from BTF, symbols from the guest's kallsyms; and one
clear line when neither a vmlinux nor BTF can be had (issue 19)."""

import json
import subprocess
import sys
from pathlib import Path

from btffixtures import FIXTURES, detached_btf  # noqa: F401 (a pytest fixture)


def run(*args):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_the_shipped_example_gives_match_with_its_frames_without_its_vmlinux(detached_btf):
    _, btf = detached_btf("6.1")
    result = run(FIXTURES / "cpl0-irq-df" / "vmcore.xz", "--btf", btf, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = json.loads((FIXTURES / "cpl0-irq-df" / "expected.json").read_text())
    assert (report["verdict"], report["df_class"]) == ("match", "cpl-corruption")
    assert report["source"]["vmlinux"] is None
    assert report["source"]["debug_info"] == f"BTF from {btf} and kallsyms from guest memory"
    assert {f["address"] for f in report["frames"]} >= {int(f["address"], 16) for f in expected["frames"]}


def test_the_sweep_without_vmlinux(detached_btf):
    _, btf = detached_btf("6.1")
    result = run("sweep", FIXTURES / "sweep-survived" / "vmcore.xz", "--btf", btf, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sweep"]["verdict"] == "cpl0-frames-found"


def test_a_kernel_without_btf_and_no_vmlinux_is_one_clear_line():
    result = run(FIXTURES / "cpl0-irq-df" / "vmcore.xz")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("dfforensics: error: ") and result.stderr.count("\n") == 1
    assert "no BTF in memory" in result.stderr and "vmlinux" in result.stderr


def test_module_debug_info_and_btf_are_refused_where_they_cannot_apply():
    no_vmlinux = run(FIXTURES / "cpl0-irq-df" / "vmcore.xz", "--module-debuginfo", "x.ko")
    assert no_vmlinux.returncode == 2 and "needs VMLINUX" in no_vmlinux.stderr
    both = run(FIXTURES / "cpl0-irq-df" / "vmcore.xz", FIXTURES / "kernels/linux-6.1/vmlinux.xz", "--btf", "x")
    assert both.returncode == 2 and "--btf is for dumps without VMLINUX" in both.stderr


def _vmlinux_of(scenario: str) -> Path:
    expected = json.loads((FIXTURES / scenario / "expected.json").read_text())
    return FIXTURES / scenario / expected["vmlinux"]


def test_a_kernel_with_btf_in_memory_needs_nothing_but_its_dump():
    # The 7.2 fixture kernel is built with CONFIG_DEBUG_INFO_BTF: types from guest memory.
    scenario = "cpl0-irq-df-7.2"
    alone = run(FIXTURES / scenario / "vmcore.xz", "--format", "json")
    assert alone.returncode == 0, alone.stderr
    guest = json.loads(alone.stdout)
    dwarf = json.loads(run(FIXTURES / scenario / "vmcore.xz", _vmlinux_of(scenario), "--format", "json").stdout)
    assert guest["source"]["debug_info"] == "BTF and kallsyms from guest memory"
    for field in ("verdict", "df_class", "frames", "title"):
        assert guest[field] == dwarf[field], field
    ours, theirs = guest["double_faults"][0], dwarf["double_faults"][0]
    for field in ("cpu", "pid", "tid", "comm", "rsp_region", "sources"):
        assert ours[field] == theirs[field], field
    # Only DWARF knows the #DF handler's local holding CR2 (README: what differs).
    assert {k: v for k, v in ours["regs"].items() if k != "cr2"} == \
        {k: v for k, v in theirs["regs"].items() if k != "cr2"}


def test_the_7_2_sweep_from_guest_memory_alone():
    result = run("sweep", FIXTURES / "sweep-survived-7.2" / "vmcore.xz", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sweep"]["verdict"] == "cpl0-frames-found"


def test_a_kernel_before_6_0_needs_nothing_but_its_dump():
    # 5.10's VMCOREINFO names no kallsyms tables: they are found by their structure.
    alone = run(FIXTURES / "cpl0-irq-df-5.10" / "vmcore.xz", "--format", "json")
    assert alone.returncode == 0, alone.stderr
    report = json.loads(alone.stdout)
    assert (report["verdict"], report["df_class"]) == ("match", "cpl-corruption")
    assert report["source"]["debug_info"] == "BTF and kallsyms from guest memory"
    sweep = run("sweep", FIXTURES / "cpl0-trail-oops-5.10" / "vmcore.xz", "--format", "json")
    assert sweep.returncode == 0, sweep.stderr
    assert json.loads(sweep.stdout)["sweep"]["verdict"] == "cpl0-frames-found"


def test_the_readme_s_first_command_gives_match_with_frames_from_the_dump_alone():
    # Issue 19's "done when": the main job on the shipped example, no vmlinux, no debug package.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "/bin/dfforensics fixtures/" in line)
    arguments = command.split("/bin/dfforensics ", 1)[1].split()
    assert all("vmlinux" not in argument for argument in arguments), command
    result = run(*(FIXTURES.parent / argument for argument in arguments), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["verdict"], report["df_class"]) == ("match", "cpl-corruption")
    assert report["source"]["debug_info"] == "BTF and kallsyms from guest memory"
    assert report["frames"] and all(frame["cs"] & 3 == 3 for frame in report["frames"])
