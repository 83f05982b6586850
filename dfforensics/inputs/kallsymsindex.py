"""
kallsyms looked up without decoding every name
-----------------------------------------------

drgn's kallsyms loader decodes, sorts and indexes every name of the kernel (87,000 on
Debian's 6.1 cloud kernel, ~0.06 s) before answering the first lookup; a verdict asks
for about twenty. :class:`KallsymsIndex` answers from the tables as they are in memory
(``kernel/kallsyms_internal.h``; the layout is ``scripts/kallsyms.c``'s):

- **by name**: the name is compressed as ``scripts/kallsyms.c`` compressed every name
  (``optimize_result()``: the tokens not standing for one character are learned from
  255 down, each replacing, left to right, every occurrence of a pair of earlier
  tokens), the compressed bytes are found with one ``bytes.find`` over
  ``kallsyms_names``, and a hit is taken only where it is a whole entry: its length
  byte says so and walking from the nearest ``kallsyms_markers`` entry (every 256th
  entry's offset) lands on it. A hit is therefore always a real entry of that name;
- **by address**: bisection of the decoded address table (sorted, as
  ``scripts/kallsyms.c`` writes it; checked).

What is not learned from the tables is not guessed: the pair a token was made of is
not stored (only what it expands to), so every pair that expands to it is tried; whether
the type character was compressed with the name (it is in every kernel checked, 6.1.192
to 7.2.13; Zhen Lei's 2022 patch "scripts/kallsyms: don't compress symbol types" would
keep it apart) is read from the entries' first tokens, and the
compression is checked on entries of the table itself. A table that does not check out
raises :class:`KallsymsIndexError`, and a name not found is only *not found by this
index*: the caller answers those from the full decode (drgn's loader), so a name is
never reported missing on the strength of this emulation alone.

Supports the tables VMCOREINFO names (Linux 6.0+): ``u32`` markers, one-byte lengths,
or (6.1+, 73bbb94466fd "kallsyms: support "big" kernel symbols") two-byte ones.

Pure: no drgn.
"""

from __future__ import annotations

import bisect
import struct
import sys
import zlib
from array import array
from typing import Callable, Final, Mapping, NamedTuple, Optional, Sequence

from dfforensics.core.errors import InputError
from dfforensics.inputs.answers import pack_lines, unpack_lines

__all__ = (
    "ABSOLUTE_PERCPU",
    "BASE_RELATIVE",
    "KallsymsAddresses",
    "KallsymsAnswers",
    "KallsymsEntry",
    "KallsymsIndex",
    "KallsymsIndexError",
    "answers_bytes",
    "decode_addresses",
    "find_markers",
    "PLACE_RELATIVE",
    "parse_answers",
    "read_tokens",
)

_TOKENS: Final = 256
_GROUP: Final = 256  # entries per kallsyms_markers entry
# drgn's MAX_SYMBOL_LENGTH (libdrgn/kallsyms.c): a gap this wide or wider is no symbol's size.
_MAX_SYMBOL_SIZE: Final = 0x10000
# More encodings of one name than this (the pairs of ambiguous tokens multiply) is not
# worth a search: the full decode answers.
_MAX_ENCODINGS: Final = 512
# nm type characters scripts/kallsyms.c keeps (read_symbol(): every letter but U and N).
_TYPE_CHARACTERS: Final = bytes(c for c in b"ABCDGIRSTVWabcdgirstuvw")
# Entries whose compression is checked when an index is made: the first of this many
# marker groups, spread over the table.
_CHECKED_ENTRIES: Final = 12
_U64_MASK: Final = (1 << 64) - 1


class KallsymsIndexError(InputError):
    """Tables this index cannot answer from (the full decode can): one line."""


class KallsymsEntry(NamedTuple):
    """One kallsyms entry as drgn's loader makes it: ``kind`` is the nm type character;
    ``size`` the distance to the next entry's address, 0 when that is 0x10000 or more
    or there is no next entry."""

    number: int
    name: str
    kind: str
    address: int
    size: int


def read_tokens(token_table: bytes, token_index: bytes) -> list[bytes]:
    """The 256 tokens: ``kallsyms_token_index`` (256 ``u16``) gives where each
    NUL-terminated string of ``kallsyms_token_table`` starts.

    :raises KallsymsIndexError: if an offset points outside the table or at no NUL.
    """
    if len(token_index) < 2 * _TOKENS:
        raise KallsymsIndexError("kallsyms_token_index is cut short")
    offsets = struct.unpack_from("<256H", token_index)
    tokens = []
    for offset in offsets:
        end = token_table.find(b"\0", offset)
        if offset >= len(token_table) or end < 0:
            raise KallsymsIndexError(f"kallsyms_token_index points at {offset}, outside the token table")
        tokens.append(token_table[offset:end])
    return tokens


def _entry_span(names: bytes, position: int, long_names: bool) -> tuple[int, int]:
    """(where the entry's tokens start, how many) for the entry at ``position``."""
    length = names[position]
    if length & 0x80 and long_names:
        return position + 2, (length & 0x7F) | (names[position + 1] << 7)
    return position + 1, length


def find_markers(data: bytes, token_table_at: int, num_syms: int, long_names: bool) -> array:
    """``kallsyms_markers``, which VMCOREINFO does not name: the ``u32`` offsets of every
    256th entry, right after the names (aligned) and before the token table, with
    ``kallsyms_seqs_of_names`` (3 bytes an entry; 60443c88f3a8 "kallsyms: Improve the
    performance of kallsyms_lookup_name()", 6.2, and 6.1 stable) between them until the
    tables were reordered (404bad70fcf7 "scripts/kallsyms: change the output order", 6.4).

    :param data: the tables from ``kallsyms_names`` to at least the token table, which
        is at ``token_table_at``.
    :raises KallsymsIndexError: if no placement agrees with the names: the first marker 0,
        rising, the last group of entries ending at most 7 zero bytes before the markers.
    """
    count = -(-num_syms // _GROUP)
    between = sorted({0, 3 * num_syms + (-3 * num_syms) % 4, 3 * num_syms + (-3 * num_syms) % 8})
    for gap in between:
        for padding in (0, 4):
            start = token_table_at - gap - padding - 4 * count
            markers = _markers_at(data, start, count, num_syms, long_names)
            if markers is not None:
                return markers
    raise KallsymsIndexError("kallsyms_markers are not where any known layout puts them")


def _markers_at(data: bytes, start: int, count: int, num_syms: int, long_names: bool) -> Optional[array]:
    if start <= 0:
        return None
    markers = array("I")
    markers.frombytes(data[start:start + 4 * count])
    if sys.byteorder == "big":
        markers.byteswap()
    if len(markers) != count or markers[0] != 0 or any(b <= a for a, b in zip(markers, markers[1:])):
        return None
    position = markers[-1]
    try:
        for _ in range(num_syms - _GROUP * (count - 1)):
            first, length = _entry_span(data, position, long_names)
            position = first + length
    except IndexError:
        return None
    if position <= start and start - position < 8 and not any(data[position:start]):
        return markers
    return None


class KallsymsAddresses:
    """Every entry's address, computed from ``kallsyms_offsets`` when asked (a list of
    87,000 Python ints costs more than the lookups of a verdict).

    Made by :func:`decode_addresses`; a sequence, so :mod:`bisect` searches it.
    """

    def __init__(self, values: array, address_of: Callable[[int, int], int],
                 in_order: Callable[[list[int]], bool], encoding: str) -> None:
        self._values = values
        self._address_of = address_of
        self._in_order = in_order
        #: How the offsets were read: BASE_RELATIVE, ABSOLUTE_PERCPU or PLACE_RELATIVE.
        self.encoding = encoding
        #: What the order was checked for (the offsets' CRC-32 and how they are read), so
        #: that the check (~4 ms for 87,000 entries) is made once per kernel build.
        self.order_key = f"{zlib.crc32(values.tobytes()):08x}-{in_order.__name__}"

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, number: int) -> int:
        return self._address_of(number, self._values[number])

    def in_order(self) -> bool:
        """Whether the addresses rise (scripts/kallsyms.c sorts them; a table that does
        not is not searched by bisection)."""
        return self._in_order(self._values.tolist())


def _rising(values: list[int]) -> bool:
    return values == sorted(values)


def _rising_absolute_percpu(values: list[int]) -> bool:
    # Non-negative offsets are the per-CPU addresses (low, first), negative ones the
    # kernel's (base - 1 - offset): rising addresses are rising, then falling, offsets.
    split = bisect.bisect_left(values, True, key=(0).__gt__)
    low, high = values[:split], values[split:]
    return (low == sorted(low) and high == sorted(high, reverse=True)
            and (not low or low[0] >= 0) and (not high or high[0] < 0))


# The readings of kallsyms_offsets, as KallsymsAddresses.encoding names them.
BASE_RELATIVE: Final = "base-relative"
ABSOLUTE_PERCPU: Final = "absolute-percpu"
PLACE_RELATIVE: Final = "place-relative"


def decode_addresses(offsets: bytes, num_syms: int, relative_base: Optional[int],
                     offsets_address: Optional[int], stext_number: int, stext: int) -> KallsymsAddresses:
    """Every entry's address from ``kallsyms_offsets``, read the way that puts entry
    ``stext_number`` at ``stext``, in drgn's order of trial (libdrgn/kallsyms.c
    ``kallsyms_load_addresses``): base relative (4.6+), absolute per-CPU (4.6 to 6.15,
    CONFIG_KALLSYMS_ABSOLUTE_PERCPU), place relative (7.0+, no relative base; tried only
    when ``offsets_address``, the table's own address, is given).

    :raises KallsymsIndexError: if no reading puts _stext where it is.
    """
    unsigned = array("I")
    unsigned.frombytes(offsets[:4 * num_syms])
    if len(unsigned) != num_syms or not 0 <= stext_number < num_syms:
        raise KallsymsIndexError("kallsyms_offsets is cut short")
    if sys.byteorder == "big":
        unsigned.byteswap()
    signed = array("i", unsigned.tobytes())
    value = signed[stext_number]
    if relative_base is not None and (relative_base + unsigned[stext_number]) & _U64_MASK == stext:
        base = relative_base
        return KallsymsAddresses(unsigned, lambda number, v: (base + v) & _U64_MASK, _rising, BASE_RELATIVE)
    if relative_base is not None and value < 0 and (relative_base - 1 - value) & _U64_MASK == stext:
        base = relative_base
        return KallsymsAddresses(signed, lambda number, v: v if v >= 0 else (base - 1 - v) & _U64_MASK,
                                 _rising_absolute_percpu, ABSOLUTE_PERCPU)
    if offsets_address is not None and (offsets_address + 4 * stext_number + value) & _U64_MASK == stext:
        table = offsets_address

        def place_relative(number: int, v: int) -> int:
            return (table + 4 * number + v) & _U64_MASK

        def rising_place_relative(values: list[int]) -> bool:
            return _rising([place_relative(n, v) for n, v in enumerate(values)])

        return KallsymsAddresses(signed, place_relative, rising_place_relative, PLACE_RELATIVE)
    raise KallsymsIndexError("no reading of kallsyms_offsets puts _stext where VMCOREINFO does")


class _Compressor:
    """scripts/kallsyms.c's compression, replayed from the token table alone."""

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self.single = frozenset(code for code, token in enumerate(tokens) if token == bytes([code]))
        # The pairs each learned token can have been made of: the splits of what it
        # expands to into tokens that existed before it (one-character ones, or learned
        # ones with a higher number: optimize_result() fills slots from 255 down).
        self.learned: list[tuple[int, bytes, tuple[bytes, ...]]] = []
        made: dict[bytes, list[int]] = {}
        for code in self.single:
            made[tokens[code]] = [code]
        for code in range(_TOKENS - 1, -1, -1):
            token = tokens[code]
            if code in self.single or not token:
                continue
            if len(token) == 1:
                raise KallsymsIndexError(f"kallsyms token {code} stands for one other character: not a table "
                                         "scripts/kallsyms.c makes")
            pairs = tuple(bytes((first, second)) for cut in range(1, len(token))
                          for first in made.get(token[:cut], ()) for second in made.get(token[cut:], ()))
            if not pairs:
                raise KallsymsIndexError(f"kallsyms token {code} is made of no earlier tokens")
            self.learned.append((code, token, pairs))
            made.setdefault(token, []).append(code)

    def encodings(self, text: bytes) -> set[bytes]:
        """Every token sequence ``text`` can have been compressed to (one, unless a token
        on the way has several possible pairs)."""
        return self._replayed(text, [learned for learned in self.learned if learned[1] in text])

    def typed_encodings(self, name: bytes, kinds: bytes) -> set[bytes]:
        """:meth:`encodings` of each type character in ``kinds`` followed by ``name``.

        A type character no token could have joined to the name's start is a token of
        its own, before the name's encodings: only the others are replayed apart.
        """
        inside = [learned for learned in self.learned if learned[1] in name]
        joining: dict[int, list] = {}
        for learned in self.learned:
            token = learned[1]
            if token[0] in kinds and name.startswith(token[1:]):
                joining.setdefault(token[0], []).append(learned)
        alone = self._replayed(name, inside)
        found = {bytes((kind,)) + encoding for kind in kinds if kind not in joining for encoding in alone}
        for kind, extra in joining.items():
            merged = {learned[0]: learned for learned in inside + extra}
            order = [merged[code] for code in sorted(merged, reverse=True)]
            found |= self._replayed(bytes((kind,)) + name, order)
        return found

    def _replayed(self, text: bytes, learned: list[tuple[int, bytes, tuple[bytes, ...]]]) -> set[bytes]:
        if any(byte not in self.single for byte in set(text)):
            return set()
        found = {text}
        for code, _, pairs in learned:
            replacement = bytes((code,))
            found = {encoding.replace(pair, replacement) for encoding in found for pair in pairs}
            if len(found) > _MAX_ENCODINGS:
                raise KallsymsIndexError(f"{text!r} has more than {_MAX_ENCODINGS} possible encodings")
        return found


def _common_part(encodings: set[bytes]) -> bytes:
    """The longest run of bytes every encoding holds (what is searched for)."""
    shortest = min(encodings, key=len)
    for length in range(len(shortest), 0, -1):
        for start in range(len(shortest) - length + 1):
            part = shortest[start:start + length]
            if all(part in encoding for encoding in encodings):
                return part
    return b""


def _offsets_of(part: bytes, within: bytes) -> list[int]:
    """Every offset at which ``part`` starts in ``within`` (overlapping ones too)."""
    found, at = [], within.find(part)
    while at >= 0:
        found.append(at)
        at = within.find(part, at + 1)
    return found


class KallsymsIndex:
    """Lookups in kallsyms tables by name and by address, decoding only what they touch.

    :param names: ``kallsyms_names`` (at least to the end of its last entry).
    :param markers: ``kallsyms_markers`` (:func:`find_markers`).
    :param tokens: the token table (:func:`read_tokens`).
    :param addresses: the function making every entry's address (:func:`decode_addresses`),
        called at the first lookup that needs one.
    :param long_names: whether a length byte with its top bit set is followed by a
        second one (Linux 6.1+; drgn decides it by release, and so must its caller).
    :param ordered: :meth:`ordered` of an earlier index of the same tables.
    :param known: names and the entries a search of these same tables found before
        (:meth:`searched` of an earlier index, kept by the caller per table): each is
        decoded before it is taken, and one that does not decode to its name discards
        them all.
    :raises KallsymsIndexError: if the tables do not decode, or compressing their own
        entries again does not give them back.
    """

    def __init__(self, names: bytes, num_syms: int, markers: Sequence[int], tokens: Sequence[bytes],
                 addresses: Callable[[], KallsymsAddresses], long_names: bool,
                 known: Optional[Mapping[str, Sequence[int]]] = None, ordered: frozenset[str] = frozenset()) -> None:
        if len(markers) != -(-num_syms // _GROUP) or num_syms <= 0:
            raise KallsymsIndexError(f"{len(markers)} kallsyms markers for {num_syms} entries")
        self._names = names
        self._count = num_syms
        self._markers = markers
        self._tokens = tokens
        self._make_addresses = addresses
        self._addresses: Optional[KallsymsAddresses] = None
        self._long = long_names
        self._compressor = _Compressor(tokens)
        self._kinds = bytes(kind for kind in _TYPE_CHARACTERS if kind in self._compressor.single)
        self._by_name: dict[str, tuple[int, ...]] = {}
        self._known = dict(known or {})
        self._ordered = set(ordered)
        self._searched: dict[str, tuple[int, ...]] = {}
        self._groups: dict[int, list[int]] = {}
        # Where the last entry ends: find_markers() checked that the last group ends here.
        last = markers[-1]
        for _ in range(num_syms - _GROUP * (len(markers) - 1)):
            first, length = _entry_span(names, last, long_names)
            last = first + length
        self._names_end = last
        # Tables whose type character is kept out of the compression (Zhen Lei's "don't
        # compress symbol types"; no kernel checked has it) start every entry with a lone
        # type character; the others start most with a learned token ("t_", "T__" ...),
        # so the markers' entries tell which.
        firsts = {names[_entry_span(names, offset, long_names)[0]] for offset in markers}
        self._type_apart = firsts <= self._compressor.single
        self._check_compression()

    # -- entries ---------------------------------------------------------------------------

    def _text(self, position: int) -> bytes:
        first, length = _entry_span(self._names, position, self._long)
        tokens = self._tokens
        return b"".join([tokens[code] for code in self._names[first:first + length]])

    def _group(self, group: int) -> list[int]:
        """Where each entry of a marker group starts, walked once from its marker and
        checked to end where the next marker (or, for the last, the names) says."""
        starts = self._groups.get(group)
        if starts is None:
            walked, starts = self._markers[group], []
            for _ in range(min(_GROUP, self._count - _GROUP * group)):
                starts.append(walked)
                first, length = _entry_span(self._names, walked, self._long)
                walked = first + length
            end = self._markers[group + 1] if group + 1 < len(self._markers) else self._names_end
            if walked != end:
                raise KallsymsIndexError(f"kallsyms marker {group} does not agree with the names "
                                         f"(its entries end at {walked}, not {end})")
            self._groups[group] = starts
        return starts

    def _number_at(self, position: int) -> Optional[int]:
        """The number of the entry that starts at ``position``, or None if none does."""
        group = bisect.bisect_right(self._markers, position) - 1
        if group < 0:
            return None
        starts = self._group(group)
        at = bisect.bisect_left(starts, position)
        return _GROUP * group + at if at < len(starts) and starts[at] == position else None

    def _position(self, number: int) -> int:
        return self._group(number // _GROUP)[number % _GROUP]

    def entry(self, number: int) -> KallsymsEntry:
        """Entry ``number`` (0 .. count-1, in address order)."""
        if not 0 <= number < self._count:
            raise IndexError(number)
        text = self._text(self._position(number))
        addresses = self._all_addresses()
        address = addresses[number]
        size = addresses[number + 1] - address if number + 1 < self._count else 0
        return KallsymsEntry(number, text[1:].decode("ascii", errors="replace"), chr(text[0]), address,
                             size if 0 <= size < _MAX_SYMBOL_SIZE else 0)

    @property
    def count(self) -> int:
        return self._count

    # -- by name -------------------------------------------------------------------------

    def _encodings(self, name: bytes) -> set[bytes]:
        """Every token sequence an entry of this name can hold, type character included."""
        if self._type_apart:
            rest = self._compressor.encodings(name)
            return {bytes((kind,)) + encoding for kind in self._kinds for encoding in rest}
        return self._compressor.typed_encodings(name, self._kinds)

    def numbers_named(self, name: str) -> tuple[int, ...]:
        """The numbers of the entries this index finds with this name, in table order.

        Empty means only that this index found none: a caller that must know a name is
        absent asks the full decode.
        """
        found = self._by_name.get(name)
        if found is None:
            found = self._known_numbers(name)
            if found is None:
                found = self._search(name)
                if found:
                    self._searched[name] = found
            self._by_name[name] = found
        return found

    def _known_numbers(self, name: str) -> Optional[tuple[int, ...]]:
        numbers = self._known.get(name)
        if numbers is None:
            return None
        wanted = name.encode("ascii", errors="replace")
        if not numbers or not all(isinstance(n, int) and 0 <= n < self._count
                                  and self._text(self._position(n))[1:] == wanted for n in numbers):
            self._known = {}  # kept for other tables: none of them is taken
            return None
        return tuple(numbers)

    def known(self) -> dict[str, tuple[int, ...]]:
        """The answers given at the start (``known``), less any found not to be these tables'."""
        return {name: tuple(numbers) for name, numbers in self._known.items()}

    def ordered(self) -> frozenset[str]:
        """The address tables (:attr:`KallsymsAddresses.order_key`) known to be in order:
        given at the start (``ordered``) or checked since."""
        return frozenset(self._ordered)

    def searched(self) -> dict[str, tuple[int, ...]]:
        """The names this index found by searching, and their entries: what is worth
        keeping for the next index of the same tables (``known``)."""
        return dict(self._searched)

    def _search(self, name: str) -> tuple[int, ...]:
        try:
            wanted = name.encode("ascii")
        except UnicodeEncodeError:
            return ()
        encodings = self._encodings(wanted)
        if not encodings:
            return ()
        part = _common_part(encodings)
        names = self._names
        if part:
            # Where the common part can sit in an encoding, and the encodings that have it
            # there: each hit of it is checked against these.
            around: dict[tuple[int, int], set[bytes]] = {}
            for encoding in encodings:
                for offset in _offsets_of(part, encoding):
                    around.setdefault((offset, len(encoding)), set()).add(encoding)
            candidates = [(hit - offset, length) for hit in _offsets_of(part, names)
                          for (offset, length), possible in around.items()
                          if hit >= offset and names[hit - offset:hit - offset + length] in possible]
        else:
            candidates = [(hit, len(encoding)) for encoding in encodings for hit in _offsets_of(encoding, names)]
        found = []
        for start, length in candidates:
            number = self._entry_starting(start, length)
            if number is not None and self._text(self._position(number))[1:] == wanted:
                found.append(number)
        return tuple(sorted(set(found)))

    def _entry_starting(self, tokens_at: int, length: int) -> Optional[int]:
        """The entry whose tokens are the ``length`` bytes at ``tokens_at``, if there is one."""
        names = self._names
        if self._long and length >= 0x80:
            start = tokens_at - 2
            if start < 0 or names[start] != 0x80 | (length & 0x7F) or names[start + 1] != length >> 7:
                return None
        else:
            start = tokens_at - 1
            if start < 0 or names[start] != length:
                return None
        return self._number_at(start)

    def _check_compression(self) -> None:
        """Compress some of the table's own entries again: each must come back as it is."""
        groups = len(self._markers)
        for group in sorted({group * groups // _CHECKED_ENTRIES for group in range(_CHECKED_ENTRIES)}):
            position = self._markers[group]
            first, length = _entry_span(self._names, position, self._long)
            held, text = self._names[first:first + length], self._text(position)
            if self._type_apart:
                encodings = {text[:1] + encoding for encoding in self._compressor.encodings(text[1:])}
            else:
                encodings = self._compressor.encodings(text)
            if held not in encodings:
                raise KallsymsIndexError(f"entry {_GROUP * group} ({text[1:]!r}) is not compressed as "
                                         "scripts/kallsyms.c would: these tables cannot be searched")

    # -- by address ----------------------------------------------------------------------

    def _all_addresses(self) -> KallsymsAddresses:
        if self._addresses is None:
            addresses = self._make_addresses()
            if len(addresses) != self._count:
                raise KallsymsIndexError(f"{len(addresses)} addresses for {self._count} kallsyms entries")
            if addresses.order_key not in self._ordered:
                if not addresses.in_order():
                    raise KallsymsIndexError("the kallsyms addresses are not in order")
                self._ordered.add(addresses.order_key)
            self._addresses = addresses
        return self._addresses

    def number_containing(self, address: int) -> Optional[int]:
        """The entry whose [address, address + size) holds ``address``, or None.

        Entries are sorted and sizes are gaps to the next entry, so only the last
        entry at or below ``address`` can hold it (drgn's index looks the same way).
        """
        addresses = self._all_addresses()
        number = bisect.bisect_right(addresses, address) - 1
        if number < 0:
            return None
        entry_size = addresses[number + 1] - addresses[number] if number + 1 < self._count else 0
        if not 0 <= entry_size < _MAX_SYMBOL_SIZE:
            entry_size = 0
        return number if address < addresses[number] + entry_size else None


# The answers kept between runs: "n NAME NUMBER ..." per name (KallsymsIndex.searched)
# and "o KEY" per address table found in order (KallsymsIndex.ordered), in the framing
# of dfforensics.inputs.answers.
_ANSWERS_MAGIC: Final = b"dffKSYMa2\n"


class KallsymsAnswers(NamedTuple):
    """What an index of a kernel build's tables found, for the next index of them."""

    names: dict[str, tuple[int, ...]]
    ordered: frozenset[str]


def answers_bytes(names: Mapping[str, Sequence[int]], ordered: frozenset[str] = frozenset()) -> bytes:
    """Names and entry numbers, and the address tables found in order, as
    :func:`parse_answers` reads them back (names no kernel has, with spaces or not ASCII,
    are left out)."""
    lines = [f"n {name} {' '.join(map(str, numbers))}" for name, numbers in sorted(names.items())
             if numbers and name and name.isascii() and name.isprintable() and " " not in name]
    lines += [f"o {key}" for key in sorted(ordered) if key.isascii() and key.isprintable() and " " not in key]
    return pack_lines(_ANSWERS_MAGIC, lines)


def parse_answers(data: bytes) -> KallsymsAnswers:
    """What :func:`answers_bytes` wrote; nothing for anything else (cut short, damaged, older)."""
    names: dict[str, tuple[int, ...]] = {}
    ordered: set[str] = set()
    for line in unpack_lines(_ANSWERS_MAGIC, data) or ():
        what, _, rest = line.partition(" ")
        if what == "o" and rest:
            ordered.add(rest)
            continue
        name, _, numbers = rest.partition(" ")
        try:
            if what != "n":
                raise ValueError(what)
            names[name] = tuple(int(n) for n in numbers.split())
        except ValueError:
            return KallsymsAnswers({}, frozenset())
    return KallsymsAnswers(names, frozenset(ordered))
