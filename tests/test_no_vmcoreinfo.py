"""Dumps without VMCOREINFO (guests run without -device vmcoreinfo): the note
drgn needs is rebuilt from VMLINUX and guest memory, and the report says how."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfforensics.inputs.formats import decompressed
from dumpfiles import sparse_copy

FIXTURES = Path(__file__).parents[1] / "fixtures"
VMLINUX = FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"
NOVMCI_FIXTURES = sorted(p.parent for p in FIXTURES.glob("*novmcoreinfo*/expected.json"))


def copy_without_vmcoreinfo(source: Path, target: Path) -> None:
    """A sparse copy of a real dump whose VMCOREINFO note name is changed."""
    sparse_copy(source, target)
    with open(target, "r+b") as out:
        head = out.read(16384)
        at = head.find(b"VMCOREINFO")
        assert at > 0
        out.seek(at)
        out.write(b"NOTVMCINFO")


def run(dump, vmlinux=VMLINUX):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", str(dump), str(vmlinux),
                           "--format", "json"], capture_output=True, text=True, timeout=600)


def test_dump_without_vmcoreinfo_is_analysed_with_a_rebuilt_one(tmp_path):
    dump = tmp_path / "vmcore"
    copy_without_vmcoreinfo(Path(decompressed(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"), "x")), dump)
    result = run(dump)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "match"
    assert report["source"]["vmcoreinfo"] == "rebuilt from VMLINUX"
    assert any("KASLR offset 0x0" in note for note in report["warnings"])


def test_without_vmcoreinfo_a_foreign_vmlinux_is_a_clear_error(tmp_path):
    dump = tmp_path / "vmcore"
    copy_without_vmcoreinfo(Path(decompressed(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"), "x")), dump)
    result = run(dump, FIXTURES / "kernels" / "linux-6.12" / "vmlinux.xz")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "linux_banner is nowhere in guest memory" in result.stderr


@pytest.mark.parametrize("directory", NOVMCI_FIXTURES, ids=[p.name for p in NOVMCI_FIXTURES])
def test_real_guests_run_without_vmcoreinfo(directory):
    expected = json.loads((directory / "expected.json").read_text())
    (dump,) = [p for p in directory.iterdir() if p.name.startswith("vmcore") and p.name != "vmcore-dmesg.txt"]
    result = run(dump, directory / expected["vmlinux"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"]["vmcoreinfo"] == "rebuilt from VMLINUX"
    assert report["verdict"] == expected["verdict"]


def _program_without_build_id(vmcore: str):
    """A program on a real dump whose VMCOREINFO names no BUILD-ID (kernels before 5.9)."""
    import drgn

    from dfforensics.inputs.elffacts import vmlinux_facts
    from dfforensics.dump.rebuildvmcoreinfo import rebuild_vmcoreinfo

    note, _ = rebuild_vmcoreinfo(vmcore, vmlinux_facts(decompressed(str(VMLINUX), "VMLINUX")))
    note = b"".join(line for line in note.splitlines(keepends=True) if not line.startswith(b"BUILD-ID="))
    prog = drgn.Program(vmcoreinfo=note)
    prog.set_core_dump(vmcore)
    return prog


def test_without_a_build_id_vmlinux_is_matched_by_release_and_banner():
    # drgn can only match a vmlinux by build ID when the dump names one; otherwise the
    # release and linux_banner (read from VMLINUX with pyelftools) decide.
    from dfforensics.dump.opendump import DumpError, _load_vmlinux

    vmcore = decompressed(str(NOVMCI_FIXTURES[0] / "vmcore.xz"), "VMCORE")
    prog = _program_without_build_id(vmcore)
    _load_vmlinux(prog, decompressed(str(VMLINUX), "VMLINUX"), None, vmcore, str(VMLINUX))
    assert prog["UTS_RELEASE"].string_() == b"6.1.192"

    other = FIXTURES / "kernels" / "linux-6.12" / "vmlinux.xz"
    with pytest.raises(DumpError, match="does not belong to VMCORE .*kernel 6.12.117 != the dump's 6.1.192"):
        _load_vmlinux(_program_without_build_id(vmcore), decompressed(str(other), "VMLINUX"), None,
                      vmcore, str(other))
