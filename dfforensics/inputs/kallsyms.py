"""
kallsyms tables found by their structure
----------------------------------------

Before Linux 6.0 VMCOREINFO does not say where the kernel's kallsyms tables are, but
they are in the dump all the same, in the kernel image's read-only data, laid out as
``scripts/kallsyms.c`` writes them (``write_src()``; every label ``.balign 8`` on
64-bit kernels):

====================================  ===============================================
``kallsyms_offsets``                  ``u32`` × N (4.6+; ``kallsyms_addresses``, ``u64``
                                      × N, before)
``kallsyms_relative_base``            ``u64`` (4.6+)
``kallsyms_num_syms``                 ``u32`` N
``kallsyms_names``                    N entries: a length byte, then that many token
                                      numbers (the first token's first character is
                                      the nm type)
``kallsyms_markers``                  ``u32`` × ceil(N/256) (``unsigned long`` in
                                      older kernels): where every 256th entry of the
                                      names starts
``kallsyms_token_table``              256 NUL-terminated strings
``kallsyms_token_index``              ``u16`` × 256: where each string starts
====================================  ===============================================

:func:`find_kallsyms` finds them as ``vmlinux-to-elf`` does in kernel images, but
accepts a candidate only if every table agrees with every other one: the index with
the strings before it, the markers with the names, the names with the count, the
addresses sorted, and the symbols the dump names elsewhere (VMCOREINFO's ``_stext``)
at the addresses it gives. Anything less, or more than one candidate, is a
:class:`KallsymsError`: a symbol is never guessed.

Supports the layout of Linux 2.6 to 6.1 (one-byte name lengths: 6.1 added two-byte
ones, 73bbb94466fd; 6.2 added ``kallsyms_seqs_of_names``, later releases reordered the
tables; VMCOREINFO names them from 6.0 on anyway). Little-endian 64-bit only (x86_64).

Pure: no drgn.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Final, Iterator, Mapping, NamedTuple, Optional, Sequence

from dfforensics.core.errors import InputError
from dfforensics.inputs.kallsymsindex import ABSOLUTE_PERCPU, KallsymsIndexError, decode_addresses

__all__ = (
    "LAYOUT_ADDRESSES",
    "LAYOUT_OFFSETS",
    "Kallsyms",
    "KallsymsError",
    "KallsymsSymbol",
    "KallsymsTables",
    "find_kallsyms",
)

# scripts/kallsyms.c's two layouts before 6.2: absolute addresses (before 4.6, 2213e9a66bb8
# "kallsyms: add support for relative offsets in kallsyms address table") or 32-bit
# offsets from a relative base (4.6+; with CONFIG_KALLSYMS_ABSOLUTE_PERCPU, x86_64 SMP,
# the non-negative offsets are absolute per-CPU addresses).
LAYOUT_ADDRESSES: Final = "addresses"
LAYOUT_OFFSETS: Final = "offsets"

_ALIGN: Final = 8  # ALGN: .balign 8 when BITS_PER_LONG == 64
_TOKENS: Final = 256
_INDEX = struct.Struct("<256H")
# KSYM_NAME_LEN is 128 before 6.1: no token, and no name, is longer.
_MAX_TOKEN_LEN: Final = 128
_MAX_NAME_BYTES: Final = 255  # the length byte
_MAX_SYMBOLS: Final = 1 << 22  # distro kernels hold 100k-250k
_TOKEN_BYTES = re.compile(rb"[\x21-\x7e\x00]*")  # symbol characters and the NULs between them
# kallsyms_markers entries: .long (u32) in 5.10.223's scripts/kallsyms.c, PTR (unsigned long)
# in older ones; the two cannot be mistaken for each other (a u64's zero high half is not
# an 8-aligned first marker, a pair of u32 is not a rising u64).
_MARKER_WIDTHS: Final = (4, 8)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class KallsymsError(InputError):
    """No kallsyms tables, or more than one candidate: the message is one line for the user."""


@dataclass(frozen=True)
class KallsymsTables:
    """Where each table is (virtual addresses) and how its addresses are encoded."""

    layout: str
    num_syms: int
    num_syms_address: int
    names: int
    markers: int
    token_table: int
    token_index: int
    offsets: Optional[int]  # LAYOUT_OFFSETS
    relative_base: Optional[int]  # LAYOUT_OFFSETS: the address of kallsyms_relative_base
    addresses: Optional[int]  # LAYOUT_ADDRESSES
    absolute_percpu: bool  # CONFIG_KALLSYMS_ABSOLUTE_PERCPU encoding of the offsets


class KallsymsSymbol(NamedTuple):
    """One decoded entry: its name, nm type character and address (a tuple: a kernel has
    10^5 of them)."""

    name: str
    kind: str
    address: int


@dataclass(frozen=True)
class Kallsyms:
    """The tables found and every symbol they hold, in table (address) order."""

    tables: KallsymsTables
    symbols: tuple[KallsymsSymbol, ...]

    def addresses_of(self, name: str) -> list[int]:
        """The addresses of the entries with this name (static symbols may repeat)."""
        return [s.address for s in self.symbols if s.name == name]


def _align(value: int) -> int:
    return (value + _ALIGN - 1) & ~(_ALIGN - 1)


def _words(data: bytes) -> array:
    words = array("Q")
    words.frombytes(data[:len(data) - len(data) % 8])
    if sys.byteorder == "big":
        words.byteswap()
    return words


def _index_candidates(data: bytes) -> Iterator[int]:
    """Offsets of 8-aligned words that can begin kallsyms_token_index: 0, then offsets
    rising by one token (1 to KSYM_NAME_LEN + 1 bytes) each."""
    limit = 3 * (_MAX_TOKEN_LEN + 1)
    for k, word in enumerate(_words(data[:max(0, len(data) - _INDEX.size + 8)])):
        if word & 0xFFFF == 0:
            a, b, c = (word >> 16) & 0xFFFF, (word >> 32) & 0xFFFF, word >> 48
            if 0 < a < b < c <= limit:
                yield 8 * k


def _token_index(data: bytes, at: int) -> Optional[tuple[int, ...]]:
    if at + _INDEX.size > len(data):
        return None
    index = _INDEX.unpack_from(data, at)
    if index[0] != 0 or any(not 1 <= later - earlier <= _MAX_TOKEN_LEN + 1
                            for earlier, later in zip(index, index[1:])):
        return None
    return index


def _token_tables(data: bytes, index_at: int, index: tuple[int, ...]) -> list[tuple[int, list[bytes]]]:
    """The token tables that end, padded to 8 bytes, at ``index_at`` and whose strings
    start where ``index`` says: (offset, tokens) for each."""
    found = []
    lowest = index_at - _align(index[-1] + _MAX_TOKEN_LEN + 1)
    for start in range(index_at - _align(index[-1] + 1), max(lowest, 0) - 1, -_ALIGN):
        end = data.find(b"\0", start + index[-1], index_at)
        if end < 0 or _align(end + 1 - start) != index_at - start or any(data[end + 1:index_at]):
            continue
        table = data[start:end + 1]
        if not _TOKEN_BYTES.fullmatch(table):
            continue
        tokens = table[:-1].split(b"\0")
        if len(tokens) != _TOKENS:
            continue
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token) + 1
        if tuple(offsets) == index:
            found.append((start, tokens))
    return found


def _markers(data: bytes, table_at: int, width: int) -> Optional[tuple[int, list[int]]]:
    """kallsyms_markers of ``width``-byte entries before a token table: (offset, markers),
    the first 0, each at least 256 two-byte names past the one before."""
    word = _U32 if width == 4 else _U64
    # An odd number of u32 markers leaves 4 bytes of padding before the 8-aligned table.
    padded = width == 4 and table_at >= 4 and _U32.unpack_from(data, table_at - 4)[0] == 0
    end = table_at - 4 if padded else table_at
    markers: list[int] = []
    position = end - width
    while position >= 0 and len(markers) <= _MAX_SYMBOLS // 256:
        value = word.unpack_from(data, position)[0]
        if markers and not 2 * 256 <= markers[-1] - value <= (_MAX_NAME_BYTES + 1) * 256:
            return None
        markers.append(value)
        if value == 0:
            break
        position -= width
    else:
        return None
    if position % _ALIGN or (width == 4 and (len(markers) % 2 == 1) != padded):
        return None
    markers.reverse()
    return position, markers


def _names(data: bytes, start: int, count: int, markers: list[int], end: int) -> Optional[list[bytes]]:
    """The ``count`` entries of kallsyms_names from ``start``, if they agree with the
    markers and end, padded to 8 bytes, at ``end`` (where the markers begin)."""
    entries: list[bytes] = []
    position = start
    for number in range(count):
        if number % 256 == 0 and position - start != markers[number // 256]:
            return None
        if position >= end:
            return None
        length = data[position]
        if length == 0:
            return None
        entries.append(data[position + 1:position + 1 + length])
        position += 1 + length
    if position > end or _align(position) != end or any(data[position:end]):
        return None
    return entries


def _decode(entries: list[bytes], tokens: list[bytes]) -> Optional[list[tuple[str, str]]]:
    decoded = []
    for entry in entries:
        text = b"".join([tokens[byte] for byte in entry])
        if len(text) < 2:
            return None
        decoded.append((chr(text[0]), text[1:].decode("ascii")))
    return decoded


def _addresses(data: bytes, names_at: int, count: int, layout: str, stext_number: int,
               stext: int) -> Optional[tuple[list[int], dict[str, Optional[int]], bool]]:
    """The symbols' addresses from the table before ``kallsyms_num_syms``, decoded the way
    that puts entry ``stext_number`` at ``stext``; None if no way does."""
    num_syms_at = names_at - _ALIGN
    if layout == LAYOUT_ADDRESSES:
        at = num_syms_at - 8 * count
        if at < 0:
            return None
        table = _words(data[at:num_syms_at]).tolist()
        if table[stext_number] != stext:
            return None
        return table, {"addresses": at, "offsets": None, "relative_base": None}, False
    base_at = num_syms_at - _ALIGN
    at = base_at - _align(4 * count)
    if at < 0:
        return None
    if any(data[at + 4 * count:base_at]):
        return None
    try:  # read as the in-place index reads a 6.0+ kernel's table (no place-relative before 7.0)
        decoded = decode_addresses(data[at:at + 4 * count], count, _U64.unpack_from(data, base_at)[0], None,
                                   stext_number, stext)
    except KallsymsIndexError:
        return None
    where = {"addresses": None, "offsets": at, "relative_base": base_at}
    return list(decoded), where, decoded.encoding == ABSOLUTE_PERCPU


def _token_candidates(data: bytes) -> Iterator[tuple[int, int, list[bytes]]]:
    """(token index offset, token table offset, tokens) of every index whose strings agree."""
    for index_at in _index_candidates(data):
        index = _token_index(data, index_at)
        if index is not None:
            for table_at, tokens in _token_tables(data, index_at, index):
                yield index_at, table_at, tokens


def _names_candidates(data: bytes, markers_at: int, markers: list[int]) -> Iterator[tuple[int, int, list[bytes]]]:
    """(names offset, count, entries) of every kallsyms_num_syms and kallsyms_names the
    markers agree with: the count sits 8 bytes before the names, and the last group of
    names ends where the markers begin, so the names begin within one group's reach."""
    groups = len(markers)
    nearest = markers_at - markers[-1] - 2
    farthest = markers_at - markers[-1] - (_MAX_NAME_BYTES + 1) * 256 - _ALIGN
    for names_at in range(nearest - nearest % _ALIGN, max(farthest, _ALIGN) - 1, -_ALIGN):
        count, padding = struct.unpack_from("<II", data, names_at - _ALIGN)
        if padding or not 256 * (groups - 1) < count <= 256 * groups:
            continue
        entries = _names(data, names_at, count, markers, markers_at)
        if entries is not None:
            yield names_at, count, entries


def _symbols(data: bytes, names_at: int, count: int, decoded: list[tuple[str, str]], layout: str,
             expected: Mapping[str, int]) -> Optional[tuple[tuple[KallsymsSymbol, ...], dict[str, Optional[int]], bool]]:
    """The symbols with their addresses, if these put every expected name where it is
    expected and are sorted, as scripts/kallsyms.c sorts them; with where the address
    tables are and whether the offsets are absolute per-CPU."""
    numbers = [n for n, (_, name) in enumerate(decoded) if name == "_stext"]
    if len(numbers) != 1:
        return None
    placed = _addresses(data, names_at, count, layout, numbers[0], expected["_stext"])
    if placed is None:
        return None
    addresses, where, absolute_percpu = placed
    if any(later < earlier for earlier, later in zip(addresses, addresses[1:])):
        return None
    symbols = tuple(KallsymsSymbol(name, kind, address) for (kind, name), address in zip(decoded, addresses))
    held: dict[str, set[int]] = {}
    for symbol in symbols:
        if symbol.name in expected:
            held.setdefault(symbol.name, set()).add(symbol.address)
    if any(expected[name] not in found for name, found in held.items()):
        return None
    return symbols, where, absolute_percpu


def _candidates(data: bytes, base: int, layout: str, expected: Mapping[str, int]) -> Iterator[Kallsyms]:
    """Every set of tables in one region that passes every check, from the token index back."""
    for index_at, table_at, tokens in _token_candidates(data):
        for width in _MARKER_WIDTHS:
            found = _markers(data, table_at, width)
            if found is None:
                continue
            markers_at, markers = found
            for names_at, count, entries in _names_candidates(data, markers_at, markers):
                decoded = _decode(entries, tokens)
                made = None if decoded is None else _symbols(data, names_at, count, decoded, layout, expected)
                if made is None:
                    continue
                symbols, where, absolute_percpu = made
                at = {key: None if value is None else base + value for key, value in where.items()}
                yield Kallsyms(KallsymsTables(
                    layout=layout, num_syms=count, num_syms_address=base + names_at - _ALIGN,
                    names=base + names_at, markers=base + markers_at, token_table=base + table_at,
                    token_index=base + index_at, offsets=at["offsets"], relative_base=at["relative_base"],
                    addresses=at["addresses"], absolute_percpu=absolute_percpu), symbols)


def find_kallsyms(regions: Sequence[tuple[int, bytes]], layout: str, expected: Mapping[str, int]) -> Kallsyms:
    """Find the one set of kallsyms tables in memory regions, and decode it.

    :param regions: (virtual address, bytes) of each region to search (the kernel
        image's read-only data; the tables never straddle two regions). Addresses
        are 8-byte aligned.
    :param layout: :data:`LAYOUT_OFFSETS` (Linux 4.6 to 6.1) or
        :data:`LAYOUT_ADDRESSES` (before 4.6).
    :param expected: symbol addresses known from elsewhere; ``_stext`` is required
        (VMCOREINFO's ``SYMBOL(_stext)``), and every other one the tables hold must be
        at its address.
    :raises KallsymsError: if no candidate, or more than one, passes every check.
    """
    if layout not in (LAYOUT_OFFSETS, LAYOUT_ADDRESSES):
        raise KallsymsError(f"kallsyms layout {layout!r} cannot be searched for")
    if "_stext" not in expected:
        raise KallsymsError("the address of _stext is needed to check kallsyms tables")
    by_tables: dict[KallsymsTables, Kallsyms] = {}
    for base, data in regions:
        if base % _ALIGN:
            raise KallsymsError(f"region {base:#x} is not 8-byte aligned")
        # One marker (up to 256 symbols) reads the same as a u32 and padding or as a u64.
        by_tables.update((k.tables, k) for k in _candidates(bytes(data), base, layout, expected))
    found = list(by_tables.values())
    searched = sum(len(data) for _, data in regions)
    if not found:
        raise KallsymsError(f"no kallsyms tables in the kernel's read-only data ({searched} bytes searched "
                            f"in {len(regions)} region(s)): without a vmlinux there are no symbols")
    if len(found) > 1:
        where = ", ".join(f"{k.tables.token_table:#x}" for k in found)
        raise KallsymsError(f"{len(found)} sets of kallsyms tables pass every check (token tables at "
                            f"{where}): which one is the kernel's is unknown, so no symbol is taken")
    return found[0]
