"""
Answers kept between runs
-------------------------

What a lookup in a kernel build's tables found (a kallsyms name's entries, a BTF
enumerator), kept in dfforensics' cache so that the next dump of the same build asks
without searching. An entry is text lines after a magic that names its format, then the
CRC-32 of both: anything cut short, damaged or of another format reads as no answers.

Pure: no drgn.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, Optional

__all__ = ("pack_lines", "unpack_lines")


def pack_lines(magic: bytes, lines: Iterable[str]) -> bytes:
    """``magic``, the lines (ASCII, one each), the CRC-32 of it all."""
    body = magic + b"".join(line.encode("ascii") + b"\n" for line in lines)
    return body + struct.pack("<I", zlib.crc32(body))


def unpack_lines(magic: bytes, data: bytes) -> Optional[list[str]]:
    """The lines :func:`pack_lines` wrote with ``magic``; None for anything else."""
    if len(data) < len(magic) + 4 or not data.startswith(magic):
        return None
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        return None
    try:
        return body[len(magic):].decode("ascii").splitlines()
    except UnicodeDecodeError:
        return None
