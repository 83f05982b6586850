"""`dfforensics VMCORE VMLINUX` on bad inputs: one error line, exit 2, no traceback.

The inputs are made here, from bytes; the ones that need a real dump or a real
vmlinux are in test_robustness_fixtures.py.
"""

import struct
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def elf_header(e_type: int, phnum: int = 0) -> bytes:
    # ELF64 little-endian x86_64 header; program headers right after it.
    return (b"\x7fELF\x02\x01\x01" + b"\0" * 9
            + struct.pack("<HHIQQQIHHHHHH", e_type, 62, 1, 0, 64 if phnum else 0, 0, 0, 64, 56,
                          phnum, 64, 0, 0))


def user_core() -> bytes:
    """A user-space style core: ET_CORE with a CORE NT_PRSTATUS note and one PT_LOAD."""
    note_desc = b"\0" * 336  # struct elf_prstatus on x86_64
    note = struct.pack("<III", 5, len(note_desc), 1) + b"CORE\0\0\0\0" + note_desc
    header = elf_header(4, phnum=2)
    data_offset = 64 + 2 * 56
    phdrs = struct.pack("<IIQQQQQQ", 4, 4, data_offset, 0, 0, len(note), 0, 4)
    phdrs += struct.pack("<IIQQQQQQ", 1, 6, data_offset + len(note), 0x400000, 0, 4096, 4096, 4096)
    return header + phdrs + note + b"\xcc" * 4096


def qemu_core() -> bytes:
    """An ELF core with a QEMU note, as QEMU's dump-guest-memory writes without vmcoreinfo."""
    desc = b"\0" * 0x1B8  # QEMUCPUState
    note = struct.pack("<III", 5, len(desc), 0) + b"QEMU\0\0\0\0" + desc
    header = elf_header(4, phnum=2)
    data_offset = 64 + 2 * 56
    phdrs = struct.pack("<IIQQQQQQ", 4, 4, data_offset, 0, 0, len(note), 0, 4)
    phdrs += struct.pack("<IIQQQQQQ", 1, 6, data_offset + len(note), 0, 0, 4096, 4096, 4096)
    return header + phdrs + note + b"\0" * 4096


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "random": b"\x13\x37" * 50000,
        "text": b"this is not a dump\n" * 10,
        "empty": b"",
        "elf-exec": elf_header(2),
        "elf-dyn": elf_header(3),
        "ko": elf_header(1),
        "usercore": user_core(),
        "qemu-core": qemu_core(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    paths["missing"] = tmp_path / "missing"
    paths["directory"] = tmp_path
    (tmp_path / "file").write_text("x")
    paths["under-a-file"] = tmp_path / "file" / "vmcore"
    return paths


def assert_one_error(result, *words):
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dfforensics: error: ")
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("name, words", [
    ("random", ["VMCORE", "not an ELF core"]),
    ("text", ["VMCORE", "not an ELF core"]),
    ("empty", ["VMCORE", "empty file"]),
    ("elf-exec", ["VMCORE"]),
    ("usercore", ["VMCORE", "not a Linux kernel dump"]),
    ("missing", ["VMCORE", "no such file"]),
    ("directory", ["VMCORE", "is a directory"]),
    ("under-a-file", ["VMCORE", "cannot read"]),
])
def test_bad_vmcore(inputs, name, words):
    # The dump is identified before VMLINUX is read, so its error comes first.
    assert_one_error(run(inputs[name], inputs["random"]), *words)


@pytest.mark.parametrize("name, words", [
    ("random", ["VMLINUX", "not an ELF file"]),
    ("text", ["VMLINUX", "not an ELF file"]),
    ("empty", ["VMLINUX", "empty file"]),
    ("elf-dyn", ["VMLINUX", "not an x86_64 kernel image"]),
    ("ko", ["VMLINUX", "not an x86_64 kernel image", "ET_REL"]),
    ("missing", ["VMLINUX", "no such file"]),
    ("directory", ["VMLINUX", "is a directory"]),
])
def test_bad_vmlinux(inputs, name, words):
    # A kernel-looking dump is needed to get as far as VMLINUX: a QEMU-style
    # ELF core without VMCOREINFO makes the tool read VMLINUX to rebuild it.
    assert_one_error(run(inputs["qemu-core"], inputs[name]), *words)


def test_usage_errors():
    for args in ([], ["only-one"], ["a", "b", "--format", "xml"]):
        result = run(*args)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].startswith("dfforensics: error: ")
