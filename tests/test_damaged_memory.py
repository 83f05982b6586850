"""Damage inside a valid dump: the kernel log's ring buffer overwritten with
garbage, and a stack mapping larger than anything worth reading."""

import json
import random
import subprocess
import sys
from pathlib import Path

from dfforensics.inputs.formats import decompressed
from dumpfiles import file_offset, sparse_copy
from dfforensics.dump.stackscan import USER_SCAN_LIMIT, bounded_window

FIXTURES = Path(__file__).parents[1] / "fixtures"
VMLINUX = FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"
START_KERNEL_MAP = 0xFFFFFFFF80000000


def test_garbage_kernel_log_leaves_the_memory_proof_standing(tmp_path):
    import drgn

    plain = Path(decompressed(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"), "VMCORE"))
    prog = drgn.Program()
    prog.set_core_dump(str(plain))
    prog.load_debug_info([decompressed(str(VMLINUX), "VMLINUX")])
    # Static kernel data: physical = virtual - __START_KERNEL_map (nokaslr, phys_base 0).
    regions = [(prog[name].address_, 0x4000) for name in
               ("__log_buf", "_printk_rb_static_descs", "_printk_rb_static_infos")]
    dump = tmp_path / "vmcore"
    sparse_copy(plain, dump)
    rng = random.Random(3)
    with open(dump, "r+b") as out:
        for address, size in regions:
            out.seek(file_offset(dump, address - START_KERNEL_MAP))
            out.write(rng.randbytes(size))
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", str(dump), str(VMLINUX),
                             "--format", "json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (df,) = report["double_faults"]
    # The log is gone; the #DF stack, the stack trace and the user stack are not.
    assert "log" not in df["sources"] and "ist-pt_regs" in df["sources"]
    assert report["verdict"] == "match"


def test_reading_a_huge_stack_mapping_is_bounded():
    start, end = 0x7F0000000000, 0x7F0000000000 + (64 << 30)   # a 64 GiB mapping
    rsp = start + (40 << 30) + 0x1234
    low, high = bounded_window(start, end, rsp)
    assert high - low == USER_SCAN_LIMIT and low <= rsp < high and low % 4096 == 0
    assert bounded_window(start, start + 0x3000, start + 0x10) == (start, start + 0x3000)
    low, high = bounded_window(start, end, start + 5)       # RSP at the bottom
    assert (low, high) == (start, start + USER_SCAN_LIMIT)
    low, high = bounded_window(start, end, end - 8)          # RSP at the top
    assert high == end and high - low <= USER_SCAN_LIMIT


def _damaged_copy(tmp_path, damage) -> Path:
    """A sparse copy of cpl0-irq-df with bytes at kernel addresses overwritten."""
    import drgn
    from drgn.helpers.linux.pid import find_task

    plain = Path(decompressed(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"), "VMCORE"))
    prog = drgn.Program()
    prog.set_core_dump(str(plain))
    prog.load_debug_info([decompressed(str(VMLINUX), "VMLINUX")])
    victim = find_task(prog, json.loads((FIXTURES / "cpl0-irq-df" / "expected.json").read_text())["pid"])
    direct_map = int(prog["page_offset_base"])
    dump = tmp_path / "vmcore"
    sparse_copy(plain, dump)
    with open(dump, "r+b") as out:
        for address, data in damage(prog, victim):
            out.seek(file_offset(plain, address - direct_map))
            out.write(data)
    return dump


def _analyse(dump: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", str(dump), str(VMLINUX),
                             "--format", "json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_page_tables_pointing_to_absent_memory_are_unknown_not_absent(tmp_path):
    # The victim's top-level entry for its stack now points to physical memory
    # the dump does not have.
    def damage(prog, victim):
        user_stack = 0x7FFC00000000
        entry = (0x7FFF00000000 | 0x67).to_bytes(8, "little")
        yield int(victim.mm.pgd) + 8 * ((user_stack >> 39) & 511), entry

    report = _analyse(_damaged_copy(tmp_path, damage))
    evidence = {e["check"]: e for e in report["evidence"]}
    assert evidence["cpl0-frames-on-user-stack"]["status"] == "unknown"
    assert evidence["push-slot-page-not-present"]["status"] == "unknown"
    assert not [f for f in report["frames"] if f["stack"] == "user"]
    assert any("could not be read" in w for w in report["warnings"])


def test_corrupt_task_struct_is_not_trusted_and_only_what_needs_no_task_proves(tmp_path):
    def damage(prog, victim):
        yield victim.value_(), random.Random(1).randbytes(prog.type("struct task_struct").size)

    report = _analyse(_damaged_copy(tmp_path, damage))
    (df,) = report["double_faults"]
    # No frame is read through the task's mm; what still proves it needs no task: the #DF's
    # own pt_regs (user CS and RSP, from the IST stack) with CR2 at the first push slot,
    # CR2 as the kernel printed it in the dump's log (the handler's frame is the task's).
    proofs = {e["check"]: e["status"] for e in df["evidence"]}
    assert proofs["cpl0-frames-on-user-stack"] != "pass" and proofs["cr2-at-first-push-slot"] == "pass"
    assert any(e["check"] == "cr2-source" and "log" in e["detail"] for e in df["evidence"])
    assert report["verdict"] == "match"
    # The identity falls back to what the log printed, and says so.
    assert (df["pid"], df["comm"]) == (34, "victim")
    assert any("looks corrupt" in w and "the log's" in w for w in report["warnings"])
    assert not [f for f in report["frames"] if f["stack"] == "user"]
