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
array) and decoded only when asked for; the name index is built on the first lookup
by name. Every way the bytes can be wrong (truncated, bad magic, an id out of range,
a chain of references that loops) raises :class:`BtfError`, one line for the user.
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Final, Iterator, Optional, Sequence

from dfforensics.core.errors import InputError

__all__ = (
    "BTF_MAGIC",
    "Btf",
    "BtfError",
    "BtfType",
    "Kind",
    "Member",
    "find_btf_blobs",
    "find_btf_header",
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


@dataclass(frozen=True)
class Member:
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


@dataclass(frozen=True)
class BtfType:
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


class Btf:
    """A parsed BTF blob: types by id (1..``count``; 0 is void), looked up by name lazily.

    Supports BTF version 1 as every kernel since 4.18 writes it (ENUM64 from 6.0,
    DECL_TAG/TYPE_TAG from 5.16/5.17); base BTF only (split module BTF is not read).
    """

    def __init__(self, data: bytes | memoryview, where: str = "blob") -> None:
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
        words.frombytes(bytes(data[start:start + type_len]))
        if (order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        self._words = words
        self._strings = bytes(data[hdr_len + str_off:hdr_len + str_off + str_len])
        if self._strings and self._strings[0] != 0:
            raise BtfError(f"BTF {where}: the string section does not start with an empty string")
        self._offsets = self._index_records()
        self._decoded: dict[int, BtfType] = {}
        self._by_name: Optional[dict[str, list[int]]] = None
        self._by_kind: Optional[dict[Kind, list[int]]] = None

    # -- the one pass over the type section ------------------------------------------------

    def _index_records(self) -> array:
        """Word offset of each record (index 0 stands for void), validating kinds and lengths."""
        words, offsets = self._words, array("I", [0])
        position, total = 0, len(words)
        while position < total:
            if position + 3 > total:
                raise BtfError(f"BTF {self.where}: truncated type record {len(offsets)}")
            info = words[position + 1]
            kind_number, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            try:
                fixed, per_entry = _EXTRA_WORDS[Kind(kind_number)]
            except (ValueError, KeyError):
                raise BtfError(f"BTF {self.where}: type {len(offsets)} has unknown kind {kind_number}") from None
            offsets.append(position)
            position += 3 + fixed + per_entry * vlen
        if position != total:
            raise BtfError(f"BTF {self.where}: the last type record ({len(offsets) - 1}) is truncated")
        return offsets

    @property
    def count(self) -> int:
        """The number of types (the highest type id)."""
        return len(self._offsets) - 1

    # -- strings and records ---------------------------------------------------------------

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of the string section."""
        if offset >= len(self._strings) or offset < 0:
            if offset == 0:
                return ""
            raise BtfError(f"BTF {self.where}: string offset {offset} is outside the string section")
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfError(f"BTF {self.where}: the string at {offset} has no terminating NUL")
        return self._strings[offset:end].decode("utf-8", errors="replace")

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
            found = self._decode(type_id)
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

    def _name_index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            by_name: dict[str, list[int]] = {}
            strings, offsets, words = self._strings, self._offsets, self._words
            for type_id in range(1, len(offsets)):
                name_off = words[offsets[type_id]]
                if name_off:
                    end = strings.find(b"\0", name_off)
                    if end < 0 or name_off >= len(strings):
                        raise BtfError(f"BTF {self.where}: type {type_id} has a name outside the string section")
                    by_name.setdefault(strings[name_off:end].decode("utf-8", errors="replace"),
                                       []).append(type_id)
            self._by_name = by_name
        return self._by_name

    def ids_named(self, name: str, kinds: Optional[Sequence[Kind]] = None) -> list[int]:
        """The ids of the types called ``name`` (of one of ``kinds``, if given), in id order."""
        ids = self._name_index().get(name, [])
        if kinds is None:
            return list(ids)
        return [type_id for type_id in ids if self[type_id].kind in kinds]

    def ids_of_kind(self, kind: Kind) -> list[int]:
        """The ids of every type of one kind, in id order (the index is built on first use)."""
        if self._by_kind is None:
            by_kind: dict[Kind, list[int]] = {}
            words, offsets = self._words, self._offsets
            for type_id in range(1, len(offsets)):
                by_kind.setdefault(Kind((words[offsets[type_id] + 1] >> 24) & 0x1F), []).append(type_id)
            self._by_kind = by_kind
        return list(self._by_kind.get(kind, ()))

    def types(self) -> Iterator[BtfType]:
        """Every type, in id order (decodes them all: for tests and tools, not the lazy path)."""
        for type_id in range(1, self.count + 1):
            yield self[type_id]

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
