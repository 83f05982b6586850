"""The sweep of every user stack, on real dumps: the frames the builder caused,
and clean where there were none."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
# Crash dumps whose victim's stack holds the frames the builder caused, on every kernel
# generation (the cpl0-trail-oops ones crashed otherwise: the trail is all there is).
WITH_FRAMES = ["cpl0-irq-df", "cpl0-thread-stack-df", "cpl0-irq-df-6.12", "cpl0-irq-df-5.10",
               "cpl0-irq-df-7.2", "cpl0-trail-oops-5.10", "cpl0-trail-oops-7.2"]
SWEEP_FIXTURES = sorted(p.parent.name for p in FIXTURES.glob("*/expected.json")
                        if "sweep_verdict" in json.loads(p.read_text()))


def sweep(name: str, *extra: str) -> dict:
    directory = FIXTURES / name
    expected = json.loads((directory / "expected.json").read_text())
    (dump,) = [p for p in directory.iterdir() if p.name.startswith("vmcore") and p.name != "vmcore-dmesg.txt"]
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", "sweep", str(dump),
                             str(directory / expected["vmlinux"]), "--format", "json", *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", WITH_FRAMES)
def test_sweep_finds_every_user_stack_frame_the_builder_caused(name):
    expected = json.loads((FIXTURES / name / "expected.json").read_text())
    report = sweep(name)
    assert report["sweep"]["verdict"] == "cpl0-frames-found"
    found = {f["address"]: f for f in report["frames"]}
    for frame in expected["frames"]:
        if frame["stack"] != "user":
            continue
        got = found[int(frame["address"], 16)]
        assert got["consistent"]
        assert (got["pid"], got["tid"]) == (expected["pid"], expected["tid"])
        # The kernel's entry code ran on that stack: its return address lies below pt_regs
        # (error_entry's before 5.19, the idtentry stub's since: kernel facts ENTRY_TRAIL_CALLER).
        caller = "error_entry+" if "5.10" in name else "asm_sysvec_apic_timer_interrupt+"
        assert got["entry_return_symbol"].startswith(caller), got
    assert "with the kernel entry code's return address below their pt_regs" in report["sweep"]["summary"]
    stacks = {(s["pid"], s["tid"]): s for s in report["sweep"]["stacks"] if s["reason"] == "saved RSP"}
    assert stacks[(expected["pid"], expected["tid"])]["frame_addresses"]


@pytest.mark.parametrize("name", ["oops-not-df", "kernel-stack-overflow-df-5.10", "kernel-stack-overflow-df-7.2"])
def test_sweep_of_a_dump_without_frames_is_clean(name):
    report = sweep(name)
    assert report["sweep"]["verdict"] == "clean"
    assert report["frames"] == [] and report["sweep"]["tasks_scanned"] >= 1


@pytest.mark.parametrize("name", SWEEP_FIXTURES)
def test_sweep_fixtures(name):
    expected = json.loads((FIXTURES / name / "expected.json").read_text())
    report = sweep(name)
    assert report["sweep"]["verdict"] == expected["sweep_verdict"]
    assert {f["address"] for f in report["frames"]} == {int(f["address"], 16) for f in expected["frames"]}


@pytest.mark.parametrize("name", SWEEP_FIXTURES)
def test_main_command_sweeps_when_there_is_no_double_fault(name):
    expected = json.loads((FIXTURES / name / "expected.json").read_text())
    directory = FIXTURES / name
    (dump,) = [p for p in directory.iterdir() if p.name.startswith("vmcore") and p.name != "vmcore-dmesg.txt"]
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", str(dump),
                             str(directory / expected["vmlinux"])], capture_output=True, text=True,
                            timeout=600)
    first_line = result.stdout.splitlines()[0]
    if expected["sweep_verdict"] == "cpl0-frames-found":
        # The question is whether CPL was corrupted: proven, with or without a #DF.
        assert first_line.startswith("verdict: match (cpl-corruption)")
        assert "no double fault, but" in first_line and "prove CPL-0 event delivery" in first_line
    else:
        assert first_line.startswith("verdict: no-double-fault")


def test_dfsweep_drgn_command():
    from drgn.commands import run_command

    import dfforensics.drgn_commands  # noqa: F401
    from dfforensics.dump.opendump import open_dump
    prog = open_dump(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"),
                     str(FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz")).prog
    report = run_command(prog, "dfsweep --format json")
    assert report.sweep.verdict == "cpl0-frames-found"


def test_page_table_walk_agrees_with_drgn_page_by_page():
    """resident_pages() walks PMDs; drgn's follow_phys() is the reference, page by page,
    for which pages are mapped and where they are in physical memory."""
    import drgn
    from drgn.helpers.linux.mm import follow_phys, vma_find
    from drgn.helpers.linux.pid import for_each_task

    from dfforensics.dump.opendump import open_dump
    from dfforensics.dump.rspregion import user_stack_pointer
    from dfforensics.dump.stackscan import PAGE, resident_pages

    prog = open_dump(str(FIXTURES / "sweep-survived" / "vmcore.xz"),
                     str(FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz")).prog
    checked = 0
    for task in for_each_task(prog):
        if not task.mm or user_stack_pointer(task) is None:
            continue
        vma = vma_find(task.mm, user_stack_pointer(task))
        if not vma:
            continue
        start, end = int(vma.vm_start), int(vma.vm_end)
        walked = resident_pages(task.mm, start, end)
        reference = {}
        for page in range(start, end, PAGE):
            try:
                reference[page] = int(follow_phys(task.mm, page))
            except drgn.FaultError:
                pass
        assert walked == reference
        checked += 1
    assert checked >= 3
