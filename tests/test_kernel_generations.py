"""The same answers on every kernel generation the fixtures hold (5.10, 6.1, 6.12, 7.2).

Each generation's `cpl0-irq-df*` dump (the emulated hypervisor bug ending in #DF) through
every path that reads the dump with drgn: the drgn commands, the user-entry pt_regs of
every task (task_pt_regs(), which moved by TOP_OF_KERNEL_STACK_PADDING on 7.2), and the
sweep. Ground truth: each fixture's expected.json.
"""

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
GENERATIONS = {"5.10": "cpl0-irq-df-5.10", "6.1": "cpl0-irq-df", "6.12": "cpl0-irq-df-6.12",
               "7.2": "cpl0-irq-df-7.2"}
# TOP_OF_KERNEL_STACK_PADDING of each fixture kernel, by its config (fixtures/build/configs):
# only 7.2 is built with CONFIG_X86_FRED=y (arch/x86/include/asm/thread_info.h: 2 * 8).
PADDING = {"5.10": 0, "6.1": 0, "6.12": 0, "7.2": 16}


def _expected(name):
    return json.loads((FIXTURES / name / "expected.json").read_text())


@pytest.fixture(scope="module", params=sorted(GENERATIONS), ids=lambda v: f"linux-{v}")
def generation(request):
    pytest.importorskip("drgn")
    import dfforensics.drgn_commands  # noqa: F401  (registers the commands, as the plugin hook does)
    from dfforensics.dump.opendump import open_dump
    name = GENERATIONS[request.param]
    if not (FIXTURES / name / "expected.json").is_file():
        pytest.fail(f"fixture {name} missing: fixtures/build/build.sh {name}")
    expected = _expected(name)
    prog = open_dump(str(FIXTURES / name / "vmcore.xz"), str(FIXTURES / name / expected["vmlinux"])).prog
    return request.param, prog, expected


def test_the_kernel_s_stack_padding_is_measured_from_its_own_per_cpu_top_of_stack(generation):
    from dfforensics.dump.rspregion import _measured_padding
    version, prog, _ = generation
    assert _measured_padding(prog, None) == PADDING[version]


def test_every_user_task_s_saved_rsp_lies_in_one_of_its_mappings(generation):
    # What 7.2 broke before the padding was taken from the kernel: every saved user RSP
    # read 16 bytes off, so no task's stack could be located.
    from drgn.helpers.linux.mm import vma_find
    from drgn.helpers.linux.pid import for_each_task
    from dfforensics.dump.rspregion import user_stack_pointer
    _, prog, expected = generation
    located = {}
    for task in for_each_task(prog):
        if not task.mm:
            continue
        sp = user_stack_pointer(task)
        located[int(task.pid)] = sp is not None and bool(vma_find(task.mm, sp))
    assert located and all(located.values()), located
    assert located[expected["tid"]]


def test_doublefault_command_matches(generation, capsys):
    from drgn.commands import run_command
    _, prog, expected = generation
    run_command(prog, "doublefault --format json")
    data = json.loads(capsys.readouterr().out)
    assert (data["verdict"], data["df_class"]) == (expected["verdict"], expected["df_class"])
    (df,) = [d for d in data["double_faults"] if d["verdict"] == "match"]
    assert (df["pid"], df["cpu"]) == (expected["pid"], expected["cpu"])
    assert df["regs"]["rsp"] == int(expected["regs"]["rsp"], 16)


def test_dfframes_finds_the_builder_s_frames_on_the_victim_s_stack(generation):
    from drgn.commands import run_command
    _, prog, expected = generation
    frames = run_command(prog, f"dfframes -p {expected['pid']} --user")
    assert {f.address for f in frames} == {int(f["address"], 16) for f in expected["frames"]}
    assert all(f.consistent and f.cs == 0x33 and f.ss == 0x2B for f in frames)


def test_dfframes_on_the_cpu_s_exception_stacks_finds_the_df_entry_frame(generation):
    from drgn.commands import run_command
    _, prog, expected = generation
    frames = run_command(prog, f"dfframes -c {expected['cpu']}")
    rsp = int(expected["regs"]["rsp"], 16)
    assert any(f.stack == "kernel" and f.rsp == rsp and f.cs == 0x33 for f in frames)


def test_dfsweep_finds_the_frames_and_reads_pages_of_every_task(generation):
    from drgn.commands import run_command
    _, prog, expected = generation
    report = run_command(prog, "dfsweep --format json")
    assert report.sweep.verdict == "cpl0-frames-found"
    assert {f.address for f in report.sweep.frames} >= {int(f["address"], 16) for f in expected["frames"]}
    assert all(stack.pages_present for stack in report.sweep.stacks)
