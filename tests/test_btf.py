"""The BTF reader (dfforensics/inputs/btf.py): every kind on crafted bytes, every way bytes
can be wrong, and real BTF that pahole makes from the committed fixture kernels compared
with the DWARF drgn reads from the same vmlinux."""

import random
import shutil
import struct

import drgn
import pytest

from dfforensics.inputs.btf import Btf, BtfError, Kind, find_btf_header, parse_btf
from btfbytes import BtfWriter, every_kind
from btffixtures import fixture_btf  # noqa: F401 (a pytest fixture)

# -- crafted bytes: every kind ------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_every_kind_decodes(order):
    blob, ids = every_kind(order)
    btf = parse_btf(blob)
    assert btf.count == len(ids)
    assert btf.byte_order == order
    assert (btf[ids["int"]].int_bits, btf[ids["int"]].signed) == (32, True)
    assert btf[ids["array"]].nelems == 7 and btf[ids["array"]].elem_type == ids["int"]
    s = btf[ids["struct"]]
    assert [(m.name, m.bit_offset, m.bitfield_size) for m in s.members] == [
        ("a", 0, 0), ("b", 32, 3), ("c", 35, 5), ("p", 64, 0)]
    assert [m.name for m in btf[ids["union"]].members] == ["i", "j"]
    assert [(m.name, m.value) for m in btf[ids["enum"]].members] == [("E_NEG", -1), ("E_ONE", 1)]
    assert btf[ids["fwd"]].kind_flag  # a union
    assert btf.resolve(ids["const"]) == ids["int"]
    proto = btf[ids["proto"]]
    assert proto.variadic and [(p.name, p.type) for p in proto.members] == [("x", ids["int"])]
    assert btf[ids["func"]].type == ids["proto"]
    assert btf[ids["var"]].linkage == 1
    assert [(m.type, m.offset, m.size) for m in btf[ids["datasec"]].members] == [(ids["var"], 0, 4)]
    assert btf[ids["float"]].size == 8
    assert btf[ids["decl_tag"]].component_idx == 1
    assert btf.resolve(ids["type_tag"]) == ids["int"]
    assert btf[ids["enum64"]].members[0].value == 0x0123456789ABCDEF
    assert btf.byte_size(ids["typedef"]) == 16 and btf.byte_size(ids["array"]) == 28
    assert btf.ids_named("s", [Kind.STRUCT]) == [ids["struct"]]
    assert btf.ids_of_kind(Kind.DATASEC) == [ids["datasec"]]


def test_unsigned_enum_values_stay_unsigned():
    w = BtfWriter()
    e = w.add(Kind.ENUM, "flags", 4, vlen=1, extra=w.words(w.name("TOP"), 0x80000000))
    assert parse_btf(w.blob())[e].members[0].value == 0x80000000


def test_signed_enum64():
    w = BtfWriter()
    e = w.add(Kind.ENUM64, "s64", 8, vlen=1, kind_flag=True,
              extra=w.words(w.name("MINUS_TWO"), 0xFFFFFFFE, 0xFFFFFFFF))
    assert parse_btf(w.blob())[e].members[0].value == -2


def test_enumerator_answers_are_kept_and_misses_stay_misses():
    # drgn asks every object finder for names no enum has (UTS_RELEASE, THREAD_SIZE), again
    # and again: the kept answer must be the one a fresh lookup gives, a miss included.
    w = BtfWriter()
    e = w.add(Kind.ENUM, "state", 4, vlen=2, extra=w.words(w.name("RUNNING"), 0, w.name("STOPPED"), 4))
    w.name("THREAD_SIZE")  # a string no enumerator names
    btf = parse_btf(w.blob())
    searched = []
    search = btf._find_enumerator
    btf._find_enumerator = lambda name: searched.append(name) or search(name)
    for _ in range(2):
        assert btf.enumerator("STOPPED") == (e, 4)
        assert btf.enumerator("THREAD_SIZE") is None
        assert btf.enumerator("RUNNING") == (e, 0)
    assert searched == ["STOPPED", "THREAD_SIZE", "RUNNING"]  # each name searched once


# -- crafted bytes: malformed input raises one clear error --------------------------------


def _blob_with(mutate) -> bytes:
    blob = bytearray(every_kind()[0])
    mutate(blob)
    return bytes(blob)


def _set_u32(blob: bytearray, offset: int, value: int) -> None:
    struct.pack_into("<I", blob, offset, value)


MALFORMED = {
    "empty": b"",
    "short header": every_kind()[0][:10],
    "bad magic": _blob_with(lambda b: b.__setitem__(slice(0, 2), b"\x9f\xec")),
    "version 2": _blob_with(lambda b: b.__setitem__(2, 2)),
    "header length beyond the end": _blob_with(lambda b: _set_u32(b, 4, 1 << 20)),
    "type section beyond the end": _blob_with(lambda b: _set_u32(b, 12, 1 << 20)),
    "string section beyond the end": _blob_with(lambda b: _set_u32(b, 20, 1 << 20)),
    "truncated": every_kind()[0][:-40],
    "unaligned type section": _blob_with(lambda b: _set_u32(b, 12, struct.unpack_from("<I", b, 12)[0] - 2)),
    "unknown kind": _blob_with(lambda b: _set_u32(b, 24 + 4, 25 << 24)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_blob_raises_btf_error(case):
    with pytest.raises(BtfError, match=r"^BTF "):
        parse_btf(MALFORMED[case])


def test_reference_out_of_range_is_an_error_when_read():
    w = BtfWriter()
    p = w.add(Kind.PTR, "", 99)
    btf = parse_btf(w.blob())
    with pytest.raises(BtfError, match="refers to type 99"):
        btf[p]
    with pytest.raises(BtfError, match="no type 5"):
        btf[5]


def test_member_type_out_of_range():
    w = BtfWriter()
    s = w.add(Kind.STRUCT, "s", 4, vlen=1, extra=w.words(w.name("m"), 1234, 0))
    with pytest.raises(BtfError, match="refers to type 1234"):
        parse_btf(w.blob())[s]


def test_typedef_loop_is_an_error_not_a_hang():
    w = BtfWriter()
    w.add(Kind.TYPEDEF, "a", 2)
    w.add(Kind.CONST, "", 1)
    btf = parse_btf(w.blob())
    with pytest.raises(BtfError, match="loop"):
        btf.resolve(1)
    with pytest.raises(BtfError, match="loop"):
        btf.byte_size(1)


def test_string_errors():
    w = BtfWriter()
    w.types += w.words(5000, int(Kind.INT) << 24, 4) + w.words(32)
    w.count += 1
    with pytest.raises(BtfError, match="outside the string section"):
        parse_btf(w.blob())[1]
    blob = bytearray(BtfWriter().blob())
    blob[-1:] = b"x"  # a string section that does not start with the empty string
    with pytest.raises(BtfError, match="empty string"):
        parse_btf(bytes(blob))


def test_random_damage_never_escapes_as_another_error():
    """Flipped bytes anywhere: either well-formed BTF or BtfError, never a crash or a hang."""
    blob, _ = every_kind()
    rng = random.Random(19)
    for _ in range(400):
        damaged = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            btf = parse_btf(bytes(damaged))
            for type_id in range(1, btf.count + 1):
                btf[type_id]
                try:
                    btf.byte_size(type_id)
                except BtfError:
                    pass
            btf.ids_named("s")
        except BtfError:
            pass


def test_find_header_in_noise():
    blob, _ = every_kind()
    # A lone magic (misaligned, then aligned with impossible lengths) precedes the real blob.
    noise = b"\x9f\xeb\x01\x00" + b"\0" * 3 + b"\x9f\xeb\x01" + b"\0" * 22 + b"\xff" * 4
    data = noise + b"\0" * (-len(noise) % 4) + blob + b"tail"
    offset, size = find_btf_header(data)
    assert data[offset:offset + size] == blob
    assert find_btf_header(b"\0" * 64) is None


# -- real BTF from the fixture kernels ------------------------------------------------------

STRUCTS = ["pt_regs", "task_struct", "mm_struct", "vm_area_struct", "tss_struct", "x86_hw_tss",
           "rq", "printk_ringbuffer", "maple_node", "gate_struct", "cpuinfo_x86"]


def test_real_btf_has_what_pahole_wrote(fixture_btf):
    btf = Btf(fixture_btf.btf_bytes, fixture_btf.btf_path)
    assert btf.count > 10000
    assert btf.ids_named("task_struct", [Kind.STRUCT])
    # pahole 1.24 encodes the per-CPU variables, in one DATASEC.
    [percpu] = btf.ids_of_kind(Kind.DATASEC)
    assert btf[percpu].name == ".data..percpu"
    names = {btf[entry.type].name for entry in btf[percpu].members}
    assert {"runqueues", "cpu_tss_rw"} <= names


@pytest.mark.parametrize("tag", STRUCTS)
def test_struct_layout_equals_dwarf(fixture_btf, tag):
    """Size, member names, bit offsets and bitfield sizes as drgn reads them from DWARF."""
    btf = Btf(fixture_btf.btf_bytes, fixture_btf.btf_path)
    candidates = [t for t in (btf[i] for i in btf.ids_named(tag, [Kind.STRUCT]))]
    assert len(candidates) == 1, f"struct {tag}: {len(candidates)} definitions"
    found = candidates[0]
    dwarf = fixture_btf.dwarf_prog.type("struct " + tag)
    assert found.size == dwarf.size
    assert [(m.name or None, m.bit_offset, m.bitfield_size) for m in found.members] == [
        (m.name, m.bit_offset, m.bit_field_size or 0) for m in dwarf.members]
    for member, dwarf_member in zip(found.members, dwarf.members):
        if not member.bitfield_size and dwarf_member.type.unaliased().kind != drgn.TypeKind.FUNCTION:
            # A flexible array member (DWARF: no length) is an ARRAY of 0 elements in BTF.
            complete = dwarf_member.type.unaliased().is_complete()
            assert btf.byte_size(member.type) == (drgn.sizeof(dwarf_member.type) if complete else 0), \
                member.name


def test_pahole_is_the_tool_the_fixture_btf_comes_from():
    assert shutil.which("pahole"), "dwarves (pahole) makes the detached BTF these tests read"
