"""A real fixture dump read with no vmlinux: symbols from the guest's kallsyms, types from
BTF through dfforensics/dump/guestdebuginfo.py, and drgn's own helpers unchanged on top.

The fixture kernels have no BTF in memory (built without CONFIG_DEBUG_INFO_BTF), so these
tests use a detached BTF that pahole encodes from the same vmlinux (tests/btffixtures.py);
everything else (kallsyms, ORC, memory) comes from the dump alone. Each answer is compared
with the same dump opened with its vmlinux.
"""

import drgn
import pytest
from drgn.helpers.linux.mm import follow_phys, vma_find
from drgn.helpers.linux.percpu import per_cpu
from drgn.helpers.linux.pid import find_task, for_each_task
from drgn.helpers.linux.printk import get_dmesg
from drgn.helpers.linux.sched import task_cpu

from btffixtures import FIXTURES, fixture_btf  # noqa: F401 (a pytest fixture)
from dfforensics.core.errors import DumpError
from dfforensics.dump.guestdebuginfo import (
    UNTYPED_GLOBALS,
    btf_from_memory,
    open_dump_without_vmlinux,
    use_guest_debug_info,
)
from dfforensics.inputs.btf import parse_btf


@pytest.fixture(scope="module")
def both(fixture_btf):
    """(program without vmlinux, program with it) on the same dump."""
    prog, how = open_dump_without_vmlinux(fixture_btf.vmcore, fixture_btf.btf_path)
    assert how == f"BTF from {fixture_btf.btf_path} and kallsyms from guest memory"
    return prog, fixture_btf.dwarf_prog


def _victim(prog):
    return next(t for t in for_each_task(prog) if t.comm.string_() == b"victim")


def test_for_each_task_and_find_task(both):
    bare, full = both
    listed = lambda prog: [(int(t.pid), t.comm.string_(), t.value_()) for t in for_each_task(prog)]
    assert listed(bare) == listed(full) and len(listed(bare)) > 10
    pid = int(_victim(full).pid)
    assert find_task(bare, pid).value_() == find_task(full, pid).value_()


def test_task_cpu_and_per_cpu(both):
    bare, full = both
    assert task_cpu(_victim(bare)) == task_cpu(_victim(full))
    for name, member in (("runqueues", "curr"), ("cpu_tss_rw", "x86_tss")):
        a, b = per_cpu(bare[name], 0), per_cpu(full[name], 0)
        assert a.address_ == b.address_
        assert getattr(a, member).value_() == getattr(b, member).value_()


def test_vma_find_and_follow_phys(both):
    def stack_page(prog):
        task = _victim(prog)
        sp = int(task.mm.start_stack)
        vma = vma_find(task.mm, sp)
        return int(vma.vm_start), int(vma.vm_end), int(follow_phys(task.mm, sp))

    bare, full = both
    assert stack_page(bare) == stack_page(full)


def test_get_dmesg(both):
    bare, full = both
    assert get_dmesg(bare) == get_dmesg(full)
    assert b"double fault" in get_dmesg(bare)


def test_crashed_thread_unwinds_with_the_kernels_own_orc(both):
    bare, full = both
    trace = lambda prog: [(f.pc, f.sp) for f in prog.crashed_thread().stack_trace()]
    assert trace(bare) == trace(full)
    names = [bare.symbol(f.pc).name for f in bare.crashed_thread().stack_trace()
             if f.pc >= 0xFFFF800000000000]
    assert "exc_double_fault" in names


def test_struct_members_equal_dwarf(both):
    bare, full = both
    for tag in ("task_struct", "mm_struct", "vm_area_struct", "pt_regs", "tss_struct", "rq", "page",
                "printk_ringbuffer", "maple_node", "cpuinfo_x86", "inactive_task_frame"):
        a, b = bare.type("struct " + tag), full.type("struct " + tag)
        assert a.size == b.size
        assert [(m.name, m.bit_offset, m.bit_field_size, m.type.type_name()) for m in a.members] == \
            [(m.name, m.bit_offset, m.bit_field_size, m.type.type_name()) for m in b.members], tag


def test_base_types_by_any_spelling(both):
    bare, full = both
    for name in ("unsigned long", "long unsigned int", "int", "char", "_Bool", "u64", "pid_t"):
        assert bare.type(name).type_name() == full.type(name).type_name()
        assert drgn.sizeof(bare.type(name)) == drgn.sizeof(full.type(name))


@pytest.mark.parametrize("name", sorted(UNTYPED_GLOBALS) + ["tk_core"])
def test_table_of_untyped_globals_agrees_with_dwarf(both, name):
    """Every declaration in the table is the kernel's: address and type as DWARF says
    (arrays excepted: the table's have no length)."""
    bare, full = both
    try:
        expected = full[name]
    except LookupError:
        pytest.skip(f"{name} is not in this kernel")
    got = bare[name]
    assert got.address_ == expected.address_
    want = expected.type_
    if want.kind == drgn.TypeKind.ARRAY:
        assert got.type_.kind == drgn.TypeKind.ARRAY
        assert got.type_.type.type_name() == want.type.type_name()
    else:
        assert got.type_.type_name() == want.type_name()
        assert drgn.sizeof(got.type_) == drgn.sizeof(want)


def test_enumerators_and_functions(both):
    bare, full = both
    assert bare["X86_HYPER_KVM"].value_() == full["X86_HYPER_KVM"].value_()
    assert bare["exc_double_fault"].address_ == full["exc_double_fault"].address_
    assert bare["exc_double_fault"].type_.type_name() == full["exc_double_fault"].type_.type_name()


def test_a_global_btf_does_not_type_is_not_guessed(both):
    bare, _ = both
    assert bare.symbol("nr_threads").address  # kallsyms has it ...
    with pytest.raises(LookupError):
        bare["nr_threads"]  # ... but nothing says its type


def test_types_are_made_only_when_asked(fixture_btf):
    btf = parse_btf(fixture_btf.btf_bytes)
    info = use_guest_debug_info(drgn.Program(), btf)
    assert not info._types
    info.prog.set_core_dump(fixture_btf.vmcore)
    info.prog.type("struct task_struct")
    # The struct and nothing it refers to: members are made when read.
    assert len(info._types) == 1 and btf.count > 10000


def test_no_btf_in_memory_is_said(both, fixture_btf):
    bare, _ = both
    with pytest.raises(DumpError, match="no BTF in memory"):
        btf_from_memory(bare)
    with pytest.raises(DumpError, match="no BTF in memory"):
        open_dump_without_vmlinux(fixture_btf.vmcore)


def test_a_dump_without_vmcoreinfo_has_no_kallsyms(tmp_path):
    import lzma
    import shutil

    vmcore = tmp_path / "vmcore"
    with lzma.open(FIXTURES / "cpl0-irq-df-novmcoreinfo/vmcore.xz") as src, open(vmcore, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    with pytest.raises(DumpError, match="VMCORE"):
        open_dump_without_vmlinux(str(vmcore))


def _crafted_program():
    from btfbytes import every_kind

    blob, ids = every_kind()
    prog = drgn.Program(drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT
                                      | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
    use_guest_debug_info(prog, parse_btf(blob))
    return prog, ids


def test_crafted_kinds_as_drgn_types():
    prog, _ = _crafted_program()
    s = prog.type("struct s")
    assert [(m.name, m.bit_offset, m.bit_field_size) for m in s.members] == [
        ("a", 0, None), ("b", 32, 3), ("c", 35, 5), ("p", 64, None)]
    assert s.member("p").type.type_name() == "int *"
    assert prog.type("s_t").type.tag == "s"
    assert prog.type("union later").is_complete() is False
    assert [(e.name, e.value) for e in prog.type("enum e").enumerators] == [("E_NEG", -1), ("E_ONE", 1)]
    assert prog.type("enum e64").enumerators[0].value == 0x0123456789ABCDEF
    assert prog.type("double").kind == drgn.TypeKind.FLOAT


def test_a_type_loop_is_one_clear_error():
    from btfbytes import BtfWriter
    from dfforensics.inputs.btf import BtfError, Kind

    w = BtfWriter()
    w.add(Kind.TYPEDEF, "a", 2)
    w.add(Kind.CONST, "", 1)
    prog = drgn.Program(drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT
                                      | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
    use_guest_debug_info(prog, parse_btf(w.blob()))
    with pytest.raises(BtfError, match="loop"):
        prog.type("a")
