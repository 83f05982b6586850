"""Helpers for tests that make damaged copies of real fixture dumps."""

from pathlib import Path

from elftools.elf.elffile import ELFFile


def sparse_copy(source: Path, target: Path) -> None:
    """Copy a (mostly zero) dump without writing its zero chunks."""
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
        out.truncate()


def file_offset(dump: Path, physical: int) -> int:
    """Where a guest-physical address is in an ELF dump (through its PT_LOADs)."""
    with open(dump, "rb") as file:
        for segment in ELFFile(file).iter_segments("PT_LOAD"):
            if segment["p_paddr"] <= physical < segment["p_paddr"] + segment["p_filesz"]:
                return segment["p_offset"] + physical - segment["p_paddr"]
    raise AssertionError(f"{physical:#x} not in the dump")
