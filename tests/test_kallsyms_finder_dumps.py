"""The kallsyms finder that reads the tables in place (dfforensics.dump.guestdebuginfo.
KallsymsFinder over dfforensics.inputs.kallsymsindex) answers as drgn's own loader, which
decodes every name, on the real dumps of every kernel generation whose VMCOREINFO names
the tables: the same symbols (name, address, size, binding, kind) by name, repeated names
included, and by address; and without falling back to drgn's loader for names it has."""

import random
from pathlib import Path

import drgn
import pytest
from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

from dfforensics.dump import guestdebuginfo
from dfforensics.inputs.formats import decompressed

FIXTURES = Path(__file__).parents[1] / "fixtures"
SCENARIOS = ("cpl0-irq-df", "cpl0-irq-df-6.12", "cpl0-irq-df-7.2")
# What a no-vmlinux verdict asks kallsyms for (drgn's helpers and dfforensics' analysis).
VERDICT_NAMES = ("__pgtable_l5_enabled", "__cpu_possible_mask", "nr_cpu_ids", "__per_cpu_offset",
                 "boot_cpu_data", "_text", "_stext", "_end", "prb", "x86_hyper_type", "tk_core", "panic_cpu",
                 "cpu_tss_rw", "idt_table", "init_pid_ns", "__start_init_task", "__end_init_task",
                 "cpu_current_top_of_stack", "current_task", "init_task", "exc_double_fault")


def described(symbols):
    return [(s.name, s.address, s.size, s.binding, s.kind) for s in symbols]


@pytest.fixture(scope="module", params=SCENARIOS)
def dump(request):
    path = decompressed(str(FIXTURES / request.param / "vmcore.xz"), "VMCORE")
    full_prog = drgn.Program()
    full_prog.set_core_dump(path)
    full = load_vmlinux_kallsyms(full_prog)
    # What the second run does with them: every name answered without a search.
    prog = drgn.Program()
    prog.set_core_dump(path)
    finder = guestdebuginfo.kallsyms_finder(prog)
    return prog, finder, full_prog, full


def test_names_give_the_symbols_drgn_gives(dump):
    prog, finder, full_prog, full = dump
    every = full(full_prog, None, None, False)
    counts = {}
    for symbol in every:
        counts[symbol.name] = counts.get(symbol.name, 0) + 1
    repeated = [name for name, count in counts.items() if count > 1]
    assert repeated, "a kernel has repeated static names: without them this test checks less"
    # The names a kernel lacks (x86_hyper_type without CONFIG_HYPERVISOR_GUEST) are drgn's
    # loader's to answer: the last test.
    names = [name for name in VERDICT_NAMES if name in counts] + repeated
    names += random.Random(19).sample(sorted(counts), 400)
    for name in names:
        expected = described(full(full_prog, name, None, False))
        assert described(finder(prog, name, None, False)) == expected, name
        assert described(finder(prog, name, None, True)) == expected[:1], name
    assert finder._full is None, "every name present was answered from the tables in place"


def test_addresses_give_the_symbol_drgn_gives(dump):
    prog, finder, full_prog, full = dump
    every = full(full_prog, None, None, False)
    for symbol in random.Random(20).sample(every, 400) + every[:3] + every[-3:]:
        for address in (symbol.address, symbol.address + max(symbol.size - 1, 0), symbol.address + symbol.size,
                        max(symbol.address - 1, 0)):
            expected = described(full(full_prog, None, address, True))
            assert described(finder(prog, None, address, True)) == expected, hex(address)
            assert described(finder(prog, symbol.name, address, True)) == [
                s for s in expected if s[0] == symbol.name], hex(address)
    assert finder._full is None


def test_what_the_tables_lack_is_answered_by_drgns_loader(dump):
    prog, finder, full_prog, full = dump
    for name in VERDICT_NAMES:
        assert described(finder(prog, name, None, False)) == described(full(full_prog, name, None, False))
    assert finder(prog, "no_such_symbol_in_any_kernel", None, False) == []
    assert finder._full is not None
    assert len(finder(prog, None, None, False)) == len(full(full_prog, None, None, False))


def test_a_second_dump_of_the_build_looks_its_names_up_without_searching(tmp_path, monkeypatch):
    import subprocess
    import sys

    from dfforensics.inputs import kallsymsindex

    monkeypatch.setenv("DFFORENSICS_CACHE", str(tmp_path / "cache"))
    path = decompressed(str(FIXTURES / "cpl0-irq-df-7.2" / "vmcore.xz"), "VMCORE")  # the one with BTF
    command = [sys.executable, "-m", "dfforensics.cli", path, "--format", "json"]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    kept = list((tmp_path / "cache").glob("*-kallsyms-answers"))
    assert len(kept) == 1
    answers, ordered = kallsymsindex.parse_answers(kept[0].read_bytes())
    assert len(ordered) == 1  # the address table, checked in order once
    assert {"_stext", "_text", "_end", "__start_BTF", "__stop_BTF"} <= set(answers)
    written = kept[0].read_bytes()
    second = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert second == first
    assert kept[0].read_bytes() == written

    # What the second run does with them: every name answered without a search.
    prog = drgn.Program()
    prog.set_core_dump(path)
    finder = guestdebuginfo.kallsyms_finder(prog)
    searched = []
    monkeypatch.setattr(finder.index, "_search", lambda name: searched.append(name) or ())
    for name in answers:
        assert finder(prog, name, None, False), name
    assert searched == []
