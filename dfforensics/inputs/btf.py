"""
BTF, the kernel's compact type format
-------------------------------------

A reader of BTF (BPF Type Format) as the kernel's ``Documentation/bpf/btf.rst`` and
``include/uapi/linux/btf.h`` specify it: the header, the string section and every kind
of the released format, ``BTF_KIND_INT`` (1) to ``BTF_KIND_ENUM64`` (19, Linux 6.0).
Kernels built with ``CONFIG_DEBUG_INFO_BTF`` (4.18+; pahole encodes it) keep their
vmlinux BTF in memory between ``__start_BTF`` and ``__stop_BTF``; pahole's
``--btf_encode_detached`` writes the same format to a file.

No drgn here: this layer reads bytes. Records are located in one pass over the type
section (every record is a whole number of 32-bit words, so the pass indexes a word
array) and decoded only when asked for; the name index (type ids sorted by name, looked
up by bisection) is built on the first lookup by name. Both are what a distro kernel's
~95,000 types cost before the first type is made, and both depend on the blob alone, so
:func:`load_btf` keeps them in dfforensics' cache per kernel build (:meth:`Btf.index_bytes`)
and a second dump of the same build skips them. Every way the bytes can be wrong
(truncated, bad magic, an id out of range, a chain of references that loops) raises
:class:`BtfError`, one line for the user; a cached index that does not check out is
rebuilt, never used.
"""

from __future__ import annotations

import enum
import itertools
import struct
import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from typing import Any, Callable, Final, Iterator, NamedTuple, Optional, Sequence

from dfforensics.core.errors import InputError
from dfforensics.inputs.answers import pack_lines, unpack_lines

__all__ = (
    "BTF_MAGIC",
    "Btf",
    "BtfError",
    "BtfType",
    "Kind",
    "Member",
    "find_btf_blobs",
    "find_btf_header",
    "keep_btf_answers",
    "load_btf",
    "parse_btf",
)

BTF_MAGIC: Final = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off/len, str_off/len
_HEADER_BE = struct.Struct(">HBBIIIII")
_VERSION: Final = 1
# A chain of typedefs/qualifiers/pointers longer than this is a loop, not a kernel type
# (the deepest real chains are a few links: const volatile typedef of typedef ...).
_MAX_CHAIN: Final = 64


class BtfError(InputError):
    """BTF bytes that do not follow the format; the message is one line for the user."""


class Kind(enum.IntEnum):
    """``BTF_KIND_*`` of include/uapi/linux/btf.h (ENUM64 from Linux 6.0)."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Words (of 32 bits) each kind has after its 3-word struct btf_type: (fixed, per vlen entry).
_EXTRA_WORDS: Final = {
    Kind.INT: (1, 0), Kind.PTR: (0, 0), Kind.ARRAY: (3, 0), Kind.STRUCT: (0, 3),
    Kind.UNION: (0, 3), Kind.ENUM: (0, 2), Kind.FWD: (0, 0), Kind.TYPEDEF: (0, 0),
    Kind.VOLATILE: (0, 0), Kind.CONST: (0, 0), Kind.RESTRICT: (0, 0), Kind.FUNC: (0, 0),
    Kind.FUNC_PROTO: (0, 2), Kind.VAR: (1, 0), Kind.DATASEC: (0, 3), Kind.FLOAT: (0, 0),
    Kind.DECL_TAG: (1, 0), Kind.TYPE_TAG: (0, 0), Kind.ENUM64: (0, 3),
}
# The same, by kind number (what the pass indexes: a tuple is faster than the enum); -1: no such kind.
_FIXED_WORDS: Final = tuple(3 + _EXTRA_WORDS[Kind(k)][0] if Kind(k) in _EXTRA_WORDS else -1
                            for k in range(len(Kind))) + (-1,) * (32 - len(Kind))
_WORDS_PER_ENTRY: Final = tuple(_EXTRA_WORDS[Kind(k)][1] if Kind(k) in _EXTRA_WORDS else 0
                                for k in range(len(Kind))) + (0,) * (32 - len(Kind))
# The bits of a record's info word that decide its length: kind and vlen.
_LENGTH_BITS: Final = 0x1F00FFFF
# The top byte of an info word (kind_flag, two unused bits, the kind) to the kind alone.
_KIND_OF_TOP_BYTE: Final = bytes(b & 0x1F for b in range(256))
# Kinds whose third word is a size; for the others it is a type id.
_SIZED: Final = frozenset({Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64,
                           Kind.DATASEC, Kind.FLOAT})
# Kinds that only refer to another type: what a chain walk follows.
REFERENCE_KINDS: Final = frozenset({Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST,
                                    Kind.RESTRICT, Kind.TYPE_TAG})
# BTF_INT_ENCODING bits.
INT_SIGNED: Final = 1
INT_CHAR: Final = 2
INT_BOOL: Final = 4


class Member(NamedTuple):
    """A struct/union member, a function parameter, an enumerator or a DATASEC entry.

    ``type`` is a type id (for an enumerator: 0); ``bit_offset``/``bitfield_size`` are for
    members (``bitfield_size`` 0: not a bitfield, or a legacy one its INT says);
    ``value`` is an enumerator's value; ``offset``/``size`` a DATASEC entry's.
    """

    name: str
    type: int = 0
    bit_offset: int = 0
    bitfield_size: int = 0
    value: int = 0
    offset: int = 0
    size: int = 0


class BtfType(NamedTuple):
    """One decoded BTF record.

    ``size`` is set for sized kinds (INT, STRUCT, UNION, ENUM, ENUM64, DATASEC, FLOAT),
    ``type`` for the kinds that refer to another (PTR, TYPEDEF, qualifiers, FUNC,
    FUNC_PROTO's return type, VAR, DECL_TAG, TYPE_TAG; 0 is void). ``members`` holds what
    follows the record (see :class:`Member`); ``variadic`` marks a FUNC_PROTO ending in
    ``...``.
    """

    id: int
    kind: Kind
    name: str
    kind_flag: bool
    size: int = 0
    type: int = 0
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    elem_type: int = 0
    index_type: int = 0
    nelems: int = 0
    members: tuple[Member, ...] = ()
    linkage: int = 0
    component_idx: int = -1
    variadic: bool = False

    @property
    def signed(self) -> bool:
        """An INT with BTF_INT_SIGNED, or an ENUM/ENUM64 whose kind_flag says signed."""
        if self.kind == Kind.INT:
            return bool(self.int_encoding & INT_SIGNED)
        return self.kind_flag


def _header(data: bytes | memoryview, offset: int) -> Optional[tuple[str, tuple[int, ...]]]:
    """The byte order and fields of a BTF header at ``offset``, or None if the magic is not there."""
    if offset < 0 or offset + _HEADER.size > len(data):
        return None
    for order, layout in (("<", _HEADER), (">", _HEADER_BE)):
        fields = layout.unpack_from(data, offset)
        if fields[0] == BTF_MAGIC:
            return order, fields
    return None


def _checked_layout(fields: tuple[int, ...], available: int, where: str) -> tuple[int, int, int, int, int]:
    """Validate a header's fields against the bytes there are; return hdr_len and the sections."""
    _, version, _, hdr_len, type_off, type_len, str_off, str_len = fields
    if version != _VERSION:
        raise BtfError(f"BTF {where}: version {version}, only version {_VERSION} is known")
    if hdr_len < _HEADER.size or hdr_len > available:
        raise BtfError(f"BTF {where}: header length {hdr_len} is impossible")
    body = available - hdr_len
    if type_off % 4 or type_len % 4:
        raise BtfError(f"BTF {where}: the type section is not 4-byte aligned")
    for name, off, length in (("type", type_off, type_len), ("string", str_off, str_len)):
        if off + length > body:
            raise BtfError(f"BTF {where}: truncated ({name} section ends at {hdr_len + off + length}, "
                           f"{available} bytes given)")
    if type_off < str_off + str_len and str_off < type_off + type_len:
        raise BtfError(f"BTF {where}: the type and string sections overlap")
    return hdr_len, type_off, type_len, str_off, str_len


class _Steps(dict):
    """Record length in words by the info word's kind and vlen bits, computed once per pair.

    The pass looks every record's length up here: a kernel's 95,000 records have a few
    hundred distinct (kind, vlen) pairs, and a dict hit is the cheapest step Python has.
    """

    def __missing__(self, bits: int) -> int:
        fixed = _FIXED_WORDS[bits >> 24]
        if fixed < 0:
            raise KeyError(bits >> 24)
        step = self[bits] = fixed + _WORDS_PER_ENTRY[bits >> 24] * (bits & 0xFFFF)
        return step


# The cached index (Btf.index_bytes): magic, blob size, blob CRC-32, type count, type-section
# words, named types, then the record offsets (count + 1), the name order (the named types),
# the kinds (count + 1 bytes, padded to 4) and a CRC-32 of it all.
_INDEX_MAGIC: Final = b"dffBTFi" + bytes([1 if sys.byteorder == "little" else 2])
_INDEX_HEADER: Final = struct.Struct("=8sIIIII")
_KIND_NUMBERS: Final = bytes(range(len(Kind)))


class Btf:
    """A parsed BTF blob: types by id (1..``count``; 0 is void), looked up by name lazily.

    Supports BTF version 1 as every kernel since 4.18 writes it (ENUM64 from 6.0,
    DECL_TAG/TYPE_TAG from 5.16/5.17); base BTF only (split module BTF is not read).
    ``index`` is what :meth:`index_bytes` returned for the same blob; it is checked,
    and :class:`BtfError` is raised if it is not that blob's (:func:`load_btf` then
    rebuilds it).
    """

    def __init__(self, data: bytes | memoryview, where: str = "blob", index: Optional[bytes] = None,
                 crc: Optional[int] = None) -> None:
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        found = _header(data, 0)
        if found is None:
            raise BtfError(f"BTF {where}: no BTF magic 0x{BTF_MAGIC:04x} at its start")
        order, fields = found
        hdr_len, type_off, type_len, str_off, str_len = _checked_layout(fields, len(data), where)
        self.where = where
        self.byte_order = order
        self.size = hdr_len + max(type_off + type_len, str_off + str_len)
        start = hdr_len + type_off
        words = array("I")
        words.frombytes(memoryview(data)[start:start + type_len])  # one copy, not two
        if (order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        self._words = words
        self._strings = bytes(data[hdr_len + str_off:hdr_len + str_off + str_len])
        if self._strings and self._strings[0] != 0:
            raise BtfError(f"BTF {where}: the string section does not start with an empty string")
        self._decoded: dict[int, BtfType] = {}
        self._kinds: Optional[bytes] = None
        self._name_order: Optional[array] = None
        self._datasec_vars: Optional[dict[int, tuple[int, int]]] = None
        self._enumerators: Optional[tuple[list[int], dict[int, int]]] = None
        # drgn asks every object finder for every name (UTS_RELEASE, THREAD_SIZE ...); a
        # miss costs a scan of the string section, so answers, misses too, are kept.
        self._enumerator_answers: dict[str, Optional[tuple[int, int]]] = {}
        self._anonymous_answers: dict[tuple[str, ...], list[int]] = {}
        # Answers found in this life (not taken from a cache): what is worth keeping.
        self._new_answers = False
        #: The cache key load_btf() filed this blob under (None when not loaded through it).
        self.cache_key: Optional[str] = None
        # What a cached index is checked against (and load_btf keys it by): ~1 ms for 4 MB.
        self._crc = zlib.crc32(data) if crc is None else crc  # load_btf's, of the same bytes
        if index is None:
            self._offsets = self._index_records()
        else:
            self._offsets, self._name_order = self._checked_index(data, index)

    # -- the one pass over the type section ------------------------------------------------

    def _index_records(self) -> array:
        """Word offset of each record (index 0 stands for void), validating kinds and lengths."""
        words, offsets, steps = self._words, array("I", [0]), _Steps()
        append, position, total = offsets.append, 0, len(words)
        try:
            while position < total:
                append(position)
                position += steps[words[position + 1] & _LENGTH_BITS]
        except IndexError:
            raise BtfError(f"BTF {self.where}: truncated type record {len(offsets) - 1}") from None
        except KeyError as error:
            raise BtfError(f"BTF {self.where}: type {len(offsets) - 1} has unknown kind {error.args[0]}") from None
        if position != total:
            raise BtfError(f"BTF {self.where}: the last type record ({len(offsets) - 1}) is truncated")
        return offsets

    @property
    def count(self) -> int:
        """The number of types (the highest type id)."""
        return len(self._offsets) - 1

    def _kind_bytes(self) -> bytes:
        """Each id's kind number as one byte (index 0: void), from the info words' top bytes."""
        if self._kinds is None:
            infos = array("I", map(self._words.__getitem__, map((1).__add__, self._offsets[1:])))
            top = infos.tobytes()[3 if sys.byteorder == "little" else 0::4]
            self._kinds = b"\0" + top.translate(_KIND_OF_TOP_BYTE)
        return self._kinds

    def kind(self, type_id: int) -> Kind:
        """The kind of ``type_id`` (1..count) without decoding its record."""
        if not 1 <= type_id <= self.count:
            raise BtfError(f"BTF {self.where}: no type {type_id} (types are 1..{self.count})")
        return Kind(self._kind_bytes()[type_id])

    # -- the cached index ------------------------------------------------------------------

    def index_bytes(self) -> bytes:
        """What this blob's pass and name index found, for :class:`Btf`'s ``index`` next time."""
        order, kinds = self._names(), self._kind_bytes()
        body = _INDEX_HEADER.pack(_INDEX_MAGIC, self.size, self._crc, self.count, len(self._words), len(order))
        body += self._offsets.tobytes() + order.tobytes() + kinds + b"\0" * (-len(kinds) % 4)
        return body + struct.pack("=I", zlib.crc32(body))

    def _checked_index(self, data: bytes | memoryview, index: bytes) -> tuple[array, array]:
        # Checked so that a stale or damaged entry is refused, never read: its own CRC, then
        # that it describes these bytes, then the bounds that cost nothing to check. A
        # record offset or name id beyond them (which only a forged entry with a right
        # CRC could hold) is a BtfError where a lookup reads it: scanning 100,000 of each
        # here costs 5 ms of every start.
        def stale(why: str) -> BtfError:
            return BtfError(f"BTF {self.where}: the cached index is not this blob's ({why})")

        if len(index) < _INDEX_HEADER.size + 4 or zlib.crc32(index[:-4]) != struct.unpack("=I", index[-4:])[0]:
            raise stale("truncated or damaged")
        magic, size, crc, count, total, named = _INDEX_HEADER.unpack_from(index)
        if magic != _INDEX_MAGIC:
            raise stale("another format")
        if (size, total) != (self.size, len(self._words)) or crc != self._crc:
            raise stale("another blob")
        kinds_at = _INDEX_HEADER.size + 4 * (count + 1 + named)
        if named > count or len(index) != kinds_at + count + 1 + (-(count + 1) % 4) + 4:
            raise stale("wrong length")
        offsets, order = array("I"), array("I")
        middle = _INDEX_HEADER.size + 4 * (count + 1)
        offsets.frombytes(index[_INDEX_HEADER.size:middle])
        order.frombytes(index[middle:kinds_at])
        kinds = bytes(index[kinds_at:kinds_at + count + 1])
        if offsets[0] != 0 or (count and offsets[-1] + 3 > total):
            raise stale("record offsets out of range")
        if kinds[0] != 0 or kinds.translate(None, _KIND_NUMBERS) or 0 in kinds[1:]:
            raise stale("unknown kinds")
        self._kinds = kinds
        return offsets, order

    # -- strings and records ---------------------------------------------------------------

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of the string section."""
        return self._string_bytes(offset).decode("utf-8", errors="replace")

    def _string_bytes(self, offset: int) -> bytes:
        if offset >= len(self._strings) or offset < 0:
            if offset == 0:
                return b""
            raise BtfError(f"BTF {self.where}: string offset {offset} is outside the string section")
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfError(f"BTF {self.where}: the string at {offset} has no terminating NUL")
        return self._strings[offset:end]

    def _check_id(self, type_id: int, referrer: int) -> int:
        if not 0 <= type_id <= self.count:
            raise BtfError(f"BTF {self.where}: type {referrer} refers to type {type_id}, "
                           f"beyond the last ({self.count})")
        return type_id

    def __getitem__(self, type_id: int) -> BtfType:
        """The decoded record of ``type_id`` (1..count), decoded once.

        :raises BtfError: for an id out of range (0 is void, not a record) or a bad record.
        """
        found = self._decoded.get(type_id)
        if found is None:
            if not 1 <= type_id <= self.count:
                raise BtfError(f"BTF {self.where}: no type {type_id} (types are 1..{self.count})")
            try:
                found = self._decode(type_id)
            except IndexError:  # only a record the pass did not measure (a damaged index) gets here
                raise BtfError(f"BTF {self.where}: type {type_id} runs past the type section") from None
            self._decoded[type_id] = found
        return found

    def _decode(self, type_id: int) -> BtfType:
        w, at = self._words, self._offsets[type_id]
        name_off, info, size_or_type = w[at], w[at + 1], w[at + 2]
        kind, vlen, kflag = Kind((info >> 24) & 0x1F), info & 0xFFFF, bool(info >> 31)
        name = self.string(name_off)
        extra = at + 3
        if kind in _SIZED:
            base = {"size": size_or_type}
        else:
            base = {"type": self._check_id(size_or_type, type_id)}
        if kind == Kind.INT:
            bits = w[extra]
            return BtfType(type_id, kind, name, kflag, **base, int_encoding=(bits >> 24) & 0xF,
                           int_offset=(bits >> 16) & 0xFF, int_bits=bits & 0xFF)
        if kind == Kind.ARRAY:
            return BtfType(type_id, kind, name, kflag, **base, elem_type=self._check_id(w[extra], type_id),
                           index_type=self._check_id(w[extra + 1], type_id), nelems=w[extra + 2])
        if kind in (Kind.STRUCT, Kind.UNION):
            return BtfType(type_id, kind, name, kflag, **base, members=tuple(
                self._member(type_id, kflag, w[i], w[i + 1], w[i + 2])
                for i in range(extra, extra + 3 * vlen, 3)))
        if kind == Kind.ENUM:
            # btf.rst: kind_flag 1 is signed, 0 unsigned (the flag is from Linux 6.0; older
            # BTF has 0 and stores the 32 bits of the value either way).
            return BtfType(type_id, kind, name, kflag, **base, members=tuple(
                Member(self.string(w[i]), value=_s32(w[i + 1]) if kflag else w[i + 1])
                for i in range(extra, extra + 2 * vlen, 2)))
        if kind == Kind.ENUM64:
            return BtfType(type_id, kind, name, kflag, **base, members=tuple(
                Member(self.string(w[i]), value=_enum64(w[i + 1], w[i + 2], kflag))
                for i in range(extra, extra + 3 * vlen, 3)))
        if kind == Kind.FUNC_PROTO:
            params = [Member(self.string(w[i]), type=self._check_id(w[i + 1], type_id))
                      for i in range(extra, extra + 2 * vlen, 2)]
            # A last parameter with neither name nor type is C's "...".
            variadic = bool(params) and params[-1].type == 0 and not params[-1].name
            return BtfType(type_id, kind, name, kflag, **base, members=tuple(params[:-1] if variadic else params),
                           variadic=variadic)
        if kind == Kind.VAR:
            return BtfType(type_id, kind, name, kflag, **base, linkage=w[extra])
        if kind == Kind.DATASEC:
            return BtfType(type_id, kind, name, kflag, **base, members=tuple(
                Member("", type=self._check_id(w[i], type_id), offset=w[i + 1], size=w[i + 2])
                for i in range(extra, extra + 3 * vlen, 3)))
        if kind == Kind.DECL_TAG:
            return BtfType(type_id, kind, name, kflag, **base, component_idx=_s32(w[extra]))
        return BtfType(type_id, kind, name, kflag, **base)

    def _member(self, owner: int, kflag: bool, name_off: int, type_id: int, offset: int) -> Member:
        # With kind_flag set, the offset word holds the bitfield size in its top 8 bits.
        if kflag:
            return Member(self.string(name_off), self._check_id(type_id, owner),
                          bit_offset=offset & 0xFFFFFF, bitfield_size=offset >> 24)
        return Member(self.string(name_off), self._check_id(type_id, owner), bit_offset=offset)

    # -- by name ---------------------------------------------------------------------------

    def _names(self) -> array:
        """The ids of the named types sorted by their name's bytes (stable: ids of one name ascend)."""
        if self._name_order is None:
            strings = self._strings
            names = array("I", map(self._words.__getitem__, self._offsets))
            names[0] = 0
            find = strings.index
            try:
                # The string at each name offset (anonymous ones: the empty string at 0); a
                # name inside another string, which the format allows, is read the same way.
                keys = [strings[offset:find(0, offset)] for offset in names]
            except ValueError:
                bad = next(i for i, offset in enumerate(names) if strings.find(b"\0", offset) < 0)
                raise BtfError(f"BTF {self.where}: type {bad} has a name outside the string section") from None
            self._name_order = array("I", sorted(itertools.compress(range(len(names)), names),
                                                 key=keys.__getitem__))
        return self._name_order

    def _name_of(self, type_id: int) -> bytes:
        try:
            return self._string_bytes(self._words[self._offsets[type_id]])
        except IndexError:
            raise BtfError(f"BTF {self.where}: type {type_id} is outside the type section") from None

    def ids_named(self, name: str, kinds: Optional[Sequence[Kind]] = None) -> list[int]:
        """The ids of the types called ``name`` (of one of ``kinds``, if given), in id order."""
        order, key = self._names(), name.encode()
        if not key:
            return []  # anonymous types have no name to be found by
        try:
            first = bisect_left(order, key, key=self._name_of)
            ids = list(order[first:bisect_right(order, key, lo=first, key=self._name_of)])
        except BtfError:
            return []  # a damaged index's names; the records say so when read
        if kinds is None:
            return ids
        kind_of = self._kind_bytes()
        return [type_id for type_id in ids if kind_of[type_id] in kinds]

    def ids_of_kind(self, kind: Kind) -> list[int]:
        """The ids of every type of one kind, in id order."""
        kinds, wanted, ids = self._kind_bytes(), bytes([kind]), []
        position = kinds.find(wanted, 1)
        while position >= 0:
            ids.append(position)
            position = kinds.find(wanted, position + 1)
        return ids

    def types(self) -> Iterator[BtfType]:
        """Every type, in id order (decodes them all: for tests and tools, not the lazy path)."""
        for type_id in range(1, self.count + 1):
            yield self[type_id]

    # -- what the object finder asks, answered from the words ------------------------------

    def variable(self, name: str) -> Optional[int]:
        """The type id of the global ``name``: its first VAR in a DATASEC (where pahole puts
        every VAR it encodes), in DATASEC order; None if there is none."""
        try:
            return self._variable(name)
        except IndexError:
            raise BtfError(f"BTF {self.where}: a DATASEC or VAR of {name!r} runs past the type section") from None

    def _variable(self, name: str) -> Optional[int]:
        if self._datasec_vars is None:
            words, offsets, order = self._words, self._offsets, {}
            for section in reversed(self.ids_of_kind(Kind.DATASEC)):
                at = offsets[section]
                entries = words[at + 3:at + 3 + 3 * (words[at + 1] & 0xFFFF):3]
                # Last first, so that for a VAR in several places its first one is kept.
                order.update(zip(reversed(entries), ((section, i) for i in range(len(entries) - 1, -1, -1))))
            self._datasec_vars = order
        found = [(self._datasec_vars[v], v) for v in self.ids_named(name, (Kind.VAR,)) if v in self._datasec_vars]
        if not found:
            return None
        var = min(found)[1]
        return self._check_id(self._words[self._offsets[var] + 2], var)

    def enumerator(self, name: str) -> Optional[tuple[int, int]]:
        """(enum type id, value) of the enumerator ``name``: the first in id order, ENUMs
        before ENUM64s; None if no enum has it."""
        return self._answer(self._enumerator_answers, name, self._find_enumerator, "an enum")

    def _answer(self, answers: dict, key: Any, find: Callable[[Any], Any], what: str) -> Any:
        """``answers[key]``, found with ``find`` the first time (and then worth keeping)."""
        if key not in answers:
            try:
                answers[key] = find(key)
            except IndexError:  # only a forged cached index gets here: see _checked_index
                raise BtfError(f"BTF {self.where}: {what} runs past the type section") from None
            self._new_answers = True
        return answers[key]

    def _find_enumerator(self, name: str) -> Optional[tuple[int, int]]:
        words, offsets = self._words, self._offsets
        if self._enumerators is None:
            ranked = self.ids_of_kind(Kind.ENUM) + self.ids_of_kind(Kind.ENUM64)
            kinds, index = self._kind_bytes(), {}
            for rank in range(len(ranked) - 1, -1, -1):  # last first: the first one stays
                at = offsets[ranked[rank]]
                width = 2 if kinds[ranked[rank]] == Kind.ENUM else 3
                index.update(zip(words[at + 3:at + 3 + width * (words[at + 1] & 0xFFFF):width],
                                 itertools.repeat(rank)))
            self._enumerators = (ranked, index)
        ranked, index = self._enumerators
        key, strings, found = name.encode() + b"\0", self._strings, []
        position = strings.find(key)
        while position >= 0:  # every string (or string tail) that spells the name
            if position in index:
                found.append((index[position], position))
            position = strings.find(key, position + 1)
        if not found:
            return None
        rank, position = min(found)
        type_id = ranked[rank]
        at, width = offsets[type_id], 2 if self.kind(type_id) == Kind.ENUM else 3
        member = words[at + 3:at + 3 + width * (words[at + 1] & 0xFFFF):width].index(position)
        return type_id, self[type_id].members[member].value

    def anonymous_structs(self, first_members: Sequence[str]) -> list[int]:
        """The ids of the unnamed STRUCTs whose first members have these names, in id order."""
        return list(self._answer(self._anonymous_answers, tuple(first_members), self._find_anonymous_structs,
                                 "a struct"))

    def _find_anonymous_structs(self, first_members: Sequence[str]) -> list[int]:
        words, offsets, wanted = self._words, self._offsets, [m.encode() for m in first_members]
        found = []
        for type_id in self.ids_of_kind(Kind.STRUCT):
            at = offsets[type_id]
            if words[at] or (words[at + 1] & 0xFFFF) < len(wanted):
                continue
            try:
                names = [self._string_bytes(words[at + 3 + 3 * i]) for i in range(len(wanted))]
            except BtfError:
                continue  # a bad name: not the struct looked for; reading it says what is wrong
            if names == wanted:
                found.append(type_id)
        return found

    # -- answers kept between runs ----------------------------------------------------------

    @property
    def has_new_answers(self) -> bool:
        """Whether lookups made since this Btf was made found answers not yet kept."""
        return self._new_answers

    def answers_bytes(self) -> bytes:
        """The enumerator and anonymous-struct answers found so far, for
        :meth:`take_answers` of the same blob next time (dfforensics.inputs.answers)."""
        lines = []
        for name, found in sorted(self._enumerator_answers.items()):
            if name and name.isascii() and name.isprintable() and " " not in name:
                lines.append(f"e {name} -" if found is None else f"e {name} {found[0]} {found[1]}")
        for members, ids in sorted(self._anonymous_answers.items()):
            if all(m and m.isascii() and m.isprintable() and " " not in m and "," not in m for m in members):
                lines.append(f"a {','.join(members)} {' '.join(map(str, ids))}".rstrip())
        return pack_lines(_ANSWERS_MAGIC, lines)

    def take_answers(self, data: bytes) -> bool:
        """Take what :meth:`answers_bytes` of this same blob wrote (load_btf keys it by the
        blob's build ID, size and CRC-32). Each answer that names a type is checked against
        the type; if one does not hold, or the bytes are not such answers, none is taken.

        :return: whether they were taken.
        """
        lines = unpack_lines(_ANSWERS_MAGIC, data)
        if lines is None:
            return False
        enumerators: dict[str, Optional[tuple[int, int]]] = {}
        anonymous: dict[tuple[str, ...], list[int]] = {}
        try:
            for line in lines:
                what, _, rest = line.partition(" ")
                if what == "e":
                    name, _, found = rest.partition(" ")
                    if found == "-":
                        enumerators[name] = None
                    else:
                        type_id, value = map(int, found.split())
                        if self.kind(type_id) not in (Kind.ENUM, Kind.ENUM64) or (name, value) not in {
                                (m.name, m.value) for m in self[type_id].members}:
                            return False
                        enumerators[name] = (type_id, value)
                elif what == "a":
                    members, _, found = rest.partition(" ")
                    key, ids = tuple(members.split(",")), [int(i) for i in found.split()]
                    for type_id in ids:
                        struct_type = self[type_id]
                        if (struct_type.kind != Kind.STRUCT or struct_type.name
                                or [m.name for m in struct_type.members[:len(key)]] != list(key)):
                            return False
                    anonymous[key] = ids
                else:
                    return False
        except (ValueError, BtfError):
            return False
        self._enumerator_answers.update(enumerators)
        self._anonymous_answers.update(anonymous)
        return True

    # -- following references --------------------------------------------------------------

    def resolve(self, type_id: int, through: frozenset[Kind] = REFERENCE_KINDS - {Kind.PTR}) -> int:
        """Follow typedefs, qualifiers and type tags (``through``) to the type they name.

        :raises BtfError: if the chain loops.
        """
        seen = 0
        while type_id and self[type_id].kind in through:
            type_id = self[type_id].type
            seen += 1
            if seen > _MAX_CHAIN:
                raise BtfError(f"BTF {self.where}: the references from type {type_id} loop")
        return type_id

    def byte_size(self, type_id: int) -> int:
        """sizeof the type, as the C compiler had it (pointers are 8 bytes: x86_64).

        :raises BtfError: for void, functions, or a chain that loops.
        """
        for _ in range(_MAX_CHAIN):
            if type_id == 0:
                raise BtfError(f"BTF {self.where}: sizeof void")
            found = self[type_id]
            if found.kind in _SIZED:
                return found.size
            if found.kind == Kind.PTR:
                return 8
            if found.kind == Kind.ARRAY:
                return found.nelems * self.byte_size(found.elem_type)
            if found.kind in (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG,
                              Kind.VAR):
                type_id = found.type
                continue
            raise BtfError(f"BTF {self.where}: type {type_id} ({found.kind.name}) has no size")
        raise BtfError(f"BTF {self.where}: the references from type {type_id} loop")


def _s32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _enum64(low: int, high: int, signed: bool) -> int:
    value = high << 32 | low
    return value - (1 << 64) if signed and value & (1 << 63) else value


def parse_btf(data: bytes | memoryview, where: str = "blob") -> Btf:
    """Parse a BTF blob that starts at ``data[0]``.

    :raises BtfError: if it is not well-formed BTF.
    """
    return Btf(data, where)


def find_btf_header(data: bytes | memoryview, start: int = 0) -> Optional[tuple[int, int]]:
    """Find the first well-formed BTF header in ``data`` at or after ``start``.

    For blobs whose address no symbol gives (kernels without ``__start_BTF`` in kallsyms):
    the magic alone is two bytes, so a candidate counts only if its version and section
    lengths are consistent with the bytes that follow it (4-byte aligned in memory, as
    the linker places ``.BTF``).

    :return: (offset, total size of the blob), or None.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    needles = (struct.pack("<HB", BTF_MAGIC, _VERSION), struct.pack(">HB", BTF_MAGIC, _VERSION))
    raw = bytes(view) if not isinstance(view, bytes) else view
    position = start
    while True:
        hits = [hit for hit in (raw.find(needle, position) for needle in needles) if hit >= 0]
        if not hits:
            return None
        offset = min(hits)
        position = offset + 1
        if offset % 4:
            continue
        found = _header(raw, offset)
        if found is None:
            continue
        try:
            hdr_len, type_off, type_len, str_off, str_len = _checked_layout(found[1], len(raw) - offset, "scan")
        except BtfError:
            continue
        if type_len == 0 or str_len == 0:
            continue
        return offset, hdr_len + max(type_off + type_len, str_off + str_len)


# What pahole and the kernel's own BTF writers put first, little-endian (x86_64): the
# magic, version 1, no flags, and the 24-byte header of the released format.
_KERNEL_HEADER_START: Final = struct.pack("<HBBI", BTF_MAGIC, _VERSION, 0, _HEADER.size)


def find_btf_blobs(data: bytes | memoryview) -> list[tuple[int, int]]:
    """Every BTF blob in ``data`` laid out as a kernel's vmlinux BTF is: a header as
    :data:`_KERNEL_HEADER_START`, 4-byte aligned, the type section right after it and
    the string section right after that (the kernel's ``btf_check_sec_info()`` refuses
    gaps), strings that begin and end with a NUL, and every type record well-formed.

    For kernels whose kallsyms lack ``__start_BTF`` (Linux 4.18+ with
    ``CONFIG_DEBUG_INFO_BTF``): the caller takes the blob only if there is one.

    :return: (offset, size) of each.
    """
    raw = bytes(data)
    found = []
    position = raw.find(_KERNEL_HEADER_START)
    while position >= 0:
        if position % 4 == 0 and position + _HEADER.size <= len(raw):
            _, _, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(raw, position)
            size = hdr_len + type_len + str_len
            strings = position + hdr_len + str_off
            if (type_off == 0 and str_off == type_len and type_len and str_len
                    and position + size <= len(raw) and raw[strings] == 0 and raw[strings + str_len - 1] == 0):
                try:
                    Btf(raw[position:position + size], "scan")
                except BtfError:
                    pass
                else:
                    found.append((position, size))
        position = raw.find(_KERNEL_HEADER_START, position + 1)
    return found


# The cache entries' names (after their key): what `dfforensics cache` lists.
_INDEX_ENTRY: Final = "btf-index"
ANSWERS_ENTRY: Final = "btf-answers"
# Btf.answers_bytes(): "e NAME TYPE_ID VALUE" or "e NAME -" (no enumerator), and
# "a MEMBER,MEMBER TYPE_ID ..." (anonymous structs by their first members).
_ANSWERS_MAGIC: Final = b"dffBTFa1\n"


def load_btf(data: bytes | memoryview, where: str = "blob", build_id: Optional[str] = None) -> Btf:
    """:func:`parse_btf`, with the pass and the name index kept in dfforensics' cache.

    The entry is keyed by the kernel's build ID (when the dump names one) and the blob's
    size and CRC-32, so another build, or another BTF of the same build, has an entry of
    its own. One that does not check out (cut short, damaged, another blob's) is removed
    and made again. A cache that cannot be written costs only the saving.

    :raises BtfError: if the blob is not well-formed BTF.
    """
    from dfforensics.core.errors import DumpError
    from dfforensics.inputs import formats

    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    # The same CRC the index is checked against (Btf computes it again: ~1 ms).
    crc = zlib.crc32(view)
    key = f"{(build_id or 'nobuildid').lower()}-{len(view):x}-{crc:08x}"
    try:
        cached = formats.read_keyed(key, _INDEX_ENTRY)
    except DumpError:
        cached = None
    if cached is not None:
        try:
            btf = Btf(view, where, index=cached, crc=crc)
            btf.cache_key = key
            _take_kept_answers(btf, key)
            return btf
        except BtfError as error:
            if "cached index" not in str(error):
                raise  # the blob itself is bad: no index makes it good
            try:
                formats.discard_keyed(key, _INDEX_ENTRY)
            except DumpError:
                pass
    btf = Btf(view, where, crc=crc)
    btf.cache_key = key
    try:
        formats.write_keyed(key, _INDEX_ENTRY, btf.index_bytes())
    except DumpError:
        pass
    return btf


def _take_kept_answers(btf: Btf, key: str) -> None:
    from dfforensics.core.errors import DumpError
    from dfforensics.inputs import formats

    try:
        kept = formats.read_keyed(key, ANSWERS_ENTRY)
    except DumpError:
        return
    if kept is not None and not btf.take_answers(kept):
        try:
            formats.discard_keyed(key, ANSWERS_ENTRY)
        except DumpError:
            pass


def keep_btf_answers(btf: Btf) -> None:
    """Keep in dfforensics' cache the answers a :func:`load_btf` blob found since it was
    loaded (:meth:`Btf.answers_bytes`), for the next dump of the same build. A cache that
    cannot be written costs only the saving."""
    from dfforensics.core.errors import DumpError
    from dfforensics.inputs import formats

    if btf.cache_key is None or not btf.has_new_answers:
        return
    try:
        formats.write_keyed(btf.cache_key, ANSWERS_ENTRY, btf.answers_bytes())
    except DumpError:
        pass
