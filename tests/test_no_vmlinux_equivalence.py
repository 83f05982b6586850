"""Issue 19's test of equivalence: the report of a dump read with no vmlinux (kallsyms from
the dump, types from BTF) equals the report with the debug vmlinux, field by field, except
for what only DWARF knows.

The fixture kernels have no BTF in memory, so the BTF is pahole's encoding of the same
vmlinux (tests/btffixtures.py). What differs, and why (also in the README):

- Where CR2 comes from (``cr2-source``): with DWARF the ``cr2`` local of
  ``exc_double_fault`` (a DWARF location list; BTF has no locals), without it the register
  dump the kernel printed in the dump's log (for a user-mode state the repeat after
  ``---[ end trace``). The value is compared, and is the same on every fixture.
- Inlined frames: drgn's DWARF unwinder names the functions inlined at each return
  address (``__preempt_count_add``, ``udelay`` in 7.2's ``delay_tsc``); kallsyms names
  only the function that holds the code. The DWARF report's call trace is compared
  without them.

The kernels of the 5.10 and 7.2 fixtures keep their BTF in memory: those dumps are read
with nothing else (on 5.10, whose VMCOREINFO does not name the kallsyms tables, the
tables are found by their structure).
"""

import glob
import json

import drgn
import pytest

from btffixtures import FIXTURES, detached_btf  # noqa: F401 (a pytest fixture)
from dfforensics.core.render import render
from dfforensics.dump.analysis import analyze
from dfforensics.dump.guestdebuginfo import open_dump_without_vmlinux
from dfforensics.dump.opendump import open_dump
from dfforensics.inputs.formats import decompressed, reassembled

SCENARIOS = ["cpl0-irq-df", "cpl0-irq-df-6.12", "cpl0-irq-df-ss18", "cpl0-thread-stack-df",
             "kernel-on-user-stack-df", "kernel-stack-overflow-df", "wild-rsp-df", "oops-not-df",
             "sweep-survived", "sweep-busy-clean", "cpl0-irq-df-kdump", "cpl0-irq-df-flattened"]


def _without_dwarf_only(report: dict) -> dict:
    """The report less where CR2 was read from: the #DF handler's DWARF local with a
    vmlinux, the dump's kernel log without (the value is the same)."""
    def strip(node):
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items()}
        if isinstance(node, list):
            return [strip(item) for item in node
                    if not (isinstance(item, dict) and item.get("check") == "cr2-source")]
        return node
    return strip(report)


def _without_inlined_frames(report: dict, prog: drgn.Program) -> dict:
    """The report less the call-trace entries DWARF adds for inlined functions."""
    try:
        inlined = [frame.is_inline for frame in prog.crashed_thread().stack_trace()]
    except LookupError:  # a dump of a guest that did not crash (sweep-survived-7.2)
        return report
    for df in report["double_faults"]:
        if df["call_trace"]:
            df["call_trace"] = [name for number, name in enumerate(df["call_trace"])
                                if not (number < len(inlined) and inlined[number])]
    return report


def _vmcore(scenario: str) -> str:
    [path] = [p for p in glob.glob(str(FIXTURES / scenario / "vmcore*")) if not p.endswith(".txt")]
    return path


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_report_without_vmlinux_equals_report_with_it(scenario, detached_btf):
    expected = json.loads((FIXTURES / scenario / "expected.json").read_text())
    kernel = "6.12" if expected["kernel_release"].startswith("6.12") else "6.1"
    vmlinux, btf = detached_btf(kernel)
    vmcore = _vmcore(scenario)
    with_vmlinux = json.loads(render(analyze(open_dump(vmcore, vmlinux).prog, {"kind": "vmcore"}), "json"))
    prog, _ = open_dump_without_vmlinux(reassembled(decompressed(vmcore, "VMCORE")), btf)
    without = json.loads(render(analyze(prog, {"kind": "vmcore"}), "json"))
    assert without["verdict"] == with_vmlinux["verdict"]
    assert without["df_class"] == with_vmlinux["df_class"]
    assert _without_dwarf_only(without) == _without_dwarf_only(with_vmlinux)


# Fixture kernels built with CONFIG_DEBUG_INFO_BTF (fixtures/README.md).
IN_MEMORY = ["cpl0-irq-df-5.10", "kernel-stack-overflow-df-5.10", "cpl0-trail-oops-5.10",
             "cpl0-irq-df-7.2", "kernel-stack-overflow-df-7.2", "cpl0-trail-oops-7.2", "sweep-survived-7.2"]


@pytest.mark.parametrize("scenario", IN_MEMORY)
def test_report_from_guest_memory_alone_equals_report_with_vmlinux(scenario):
    expected = json.loads((FIXTURES / scenario / "expected.json").read_text())
    vmcore = _vmcore(scenario)
    opened = open_dump(vmcore, str(FIXTURES / scenario / expected["vmlinux"]))
    with_vmlinux = json.loads(render(analyze(opened.prog, {"kind": "vmcore"}), "json"))
    prog, how = open_dump_without_vmlinux(reassembled(decompressed(vmcore, "VMCORE")))
    assert how == "BTF and kallsyms from guest memory"
    without = json.loads(render(analyze(prog, {"kind": "vmcore"}), "json"))
    assert (without["verdict"], without["df_class"]) == (with_vmlinux["verdict"], with_vmlinux["df_class"])
    assert _without_dwarf_only(without) == _without_dwarf_only(_without_inlined_frames(with_vmlinux, opened.prog))
