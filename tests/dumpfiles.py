"""Helpers for tests that make damaged copies of real fixture dumps."""

from pathlib import Path


def sparse_copy(source: Path, target: Path) -> None:
    """Copy a (mostly zero) dump without writing its zero chunks."""
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
        out.truncate()
