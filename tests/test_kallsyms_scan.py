"""The search for kallsyms tables by their structure (dfforensics/inputs/kallsyms.py), on
plain bytes laid out as scripts/kallsyms.c writes them, with look-alikes that must be
rejected; and the search for a BTF blob by its header."""

import random
import struct

import pytest

from btfbytes import BtfWriter
from dfforensics.core.kernel_facts import KALLSYMS_LAYOUT, parse_release, value_for
from dfforensics.inputs.btf import Kind, find_btf_blobs
from dfforensics.inputs.kallsyms import LAYOUT_ADDRESSES, LAYOUT_OFFSETS, KallsymsError, find_kallsyms
from kallsymsbytes import TEXT, build, kernel_symbols

BASE = 0xFFFFFFFF81600000  # where the region starts in the guest (.rodata)
STEXT = {"_stext": TEXT}


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def region(*parts: bytes) -> bytes:
    """Parts one after the other, each 8-byte aligned, as the linker places them."""
    out = bytearray()
    for part in parts:
        out += part
        out += b"\0" * (-len(out) % 8)
    return bytes(out)


@pytest.mark.parametrize("count", [100, 256, 300, 513, 600, 2000])
def test_tables_are_found_and_decoded(count):
    symbols = kernel_symbols(count)
    built = build(symbols, relative_base=TEXT)
    before = noise(4096 + 24, 1)
    data = region(before, built.blob, noise(3000, 2))
    found = find_kallsyms([(BASE, data)], LAYOUT_OFFSETS, STEXT)
    start = BASE + len(before)
    tables = found.tables
    assert tables.offsets == start + built.labels["kallsyms_offsets"]
    assert tables.relative_base == start + built.labels["kallsyms_relative_base"]
    assert tables.num_syms_address == start + built.labels["kallsyms_num_syms"]
    assert tables.names == start + built.labels["kallsyms_names"]
    assert tables.markers == start + built.labels["kallsyms_markers"]
    assert tables.token_table == start + built.labels["kallsyms_token_table"]
    assert tables.token_index == start + built.labels["kallsyms_token_index"]
    assert (tables.num_syms, tables.addresses, tables.absolute_percpu) == (count, None, True)
    assert [(s.address, s.kind, s.name) for s in found.symbols] == symbols


def test_base_relative_without_absolute_percpu():
    symbols = [(a, k, n) for a, k, n in kernel_symbols(400, percpu=0)]
    built = build(symbols, relative_base=TEXT, absolute_percpu=False)
    found = find_kallsyms([(BASE, region(noise(800, 3), built.blob))], LAYOUT_OFFSETS, STEXT)
    assert not found.tables.absolute_percpu
    assert [(s.address, s.kind, s.name) for s in found.symbols] == symbols


def test_absolute_addresses_before_4_6():
    symbols = kernel_symbols(700, percpu=0)
    built = build(symbols, layout="addresses")
    found = find_kallsyms([(BASE, region(noise(1000, 4), built.blob))], LAYOUT_ADDRESSES, STEXT)
    assert found.tables.addresses == BASE + 1000 + built.labels["kallsyms_addresses"]
    assert found.tables.offsets is None and found.tables.relative_base is None
    assert [(s.address, s.name) for s in found.symbols] == [(a, n) for a, _, n in symbols]


@pytest.mark.parametrize("layout, count", [("offsets", 300), ("offsets", 600), ("addresses", 513)])
def test_markers_as_unsigned_long_in_older_kernels(layout, count):
    symbols = kernel_symbols(count, percpu=0 if layout == "addresses" else 3)
    built = build(symbols, layout=layout, relative_base=TEXT, marker_width=8)
    found = find_kallsyms([(BASE, region(noise(808, 14), built.blob))], layout, STEXT)
    assert found.tables.markers == BASE + 808 + built.labels["kallsyms_markers"]
    assert [(s.address, s.name) for s in found.symbols] == [(a, n) for a, _, n in symbols]


def test_the_layout_is_a_kernel_fact():
    assert value_for(KALLSYMS_LAYOUT, parse_release("4.4.302")) == LAYOUT_ADDRESSES
    assert value_for(KALLSYMS_LAYOUT, parse_release("5.10.223")) == LAYOUT_OFFSETS
    assert value_for(KALLSYMS_LAYOUT, parse_release("6.1.0")) == "not-searched"
    with pytest.raises(KallsymsError, match="cannot be searched"):
        find_kallsyms([], "not-searched", STEXT)


def test_a_token_table_and_index_alone_are_not_kallsyms():
    # The last two tables copied without the markers and names before them.
    real = build(kernel_symbols(300), relative_base=TEXT)
    lookalike = real.blob[real.labels["kallsyms_token_table"]:]
    data = region(noise(512, 5), lookalike, noise(512, 6), real.blob)
    found = find_kallsyms([(BASE, data)], LAYOUT_OFFSETS, STEXT)
    real_at = BASE + len(region(noise(512, 5), lookalike, noise(512, 6)))
    assert found.tables.token_table == real_at + real.labels["kallsyms_token_table"]
    assert len(found.symbols) == 300
    with pytest.raises(KallsymsError, match="no kallsyms tables"):
        find_kallsyms([(BASE, region(noise(512, 5), lookalike))], LAYOUT_OFFSETS, STEXT)


def test_a_complete_lookalike_that_puts_stext_elsewhere_is_rejected():
    # Well-formed tables of another build (another base): _stext is not where VMCOREINFO says.
    other = build([(a + 0x200000 if a >= TEXT else a, k, n) for a, k, n in kernel_symbols(300)],
                  relative_base=TEXT + 0x200000)
    real = build(kernel_symbols(350), relative_base=TEXT)
    found = find_kallsyms([(BASE, region(other.blob, real.blob))], LAYOUT_OFFSETS, STEXT)
    assert len(found.symbols) == 350
    with pytest.raises(KallsymsError, match="no kallsyms tables"):
        find_kallsyms([(BASE, other.blob)], LAYOUT_OFFSETS, STEXT)


def test_every_symbol_the_dump_names_must_be_where_it_says():
    built = build(kernel_symbols(300), relative_base=TEXT)
    ok = find_kallsyms([(BASE, built.blob)], LAYOUT_OFFSETS, {**STEXT, "init_uts_ns": TEXT + 0x820000})
    assert ok.addresses_of("init_uts_ns") == [TEXT + 0x820000]
    with pytest.raises(KallsymsError, match="no kallsyms tables"):
        find_kallsyms([(BASE, built.blob)], LAYOUT_OFFSETS, {**STEXT, "init_uts_ns": TEXT + 0x820008})
    # A name the tables do not hold (x86_64's swapper_pg_dir is a macro) is not held against them.
    assert find_kallsyms([(BASE, built.blob)], LAYOUT_OFFSETS, {**STEXT, "swapper_pg_dir": 1})


def test_two_copies_are_ambiguous_and_give_no_symbol():
    built = build(kernel_symbols(300), relative_base=TEXT)
    with pytest.raises(KallsymsError, match="2 sets of kallsyms tables"):
        find_kallsyms([(BASE, region(built.blob, noise(100, 7), built.blob))], LAYOUT_OFFSETS, STEXT)
    # ... also when each is in its own region.
    with pytest.raises(KallsymsError, match="2 sets"):
        find_kallsyms([(BASE, built.blob), (BASE + 0x100000, built.blob)], LAYOUT_OFFSETS, STEXT)


def _damaged(built, label: str, delta: int, value: bytes) -> bytes:
    blob = bytearray(built.blob)
    at = built.labels[label] + delta
    blob[at:at + len(value)] = value
    return bytes(blob)


@pytest.mark.parametrize("label, delta, value", [
    ("kallsyms_markers", 4, struct.pack("<I", 7)),          # a marker off by a few bytes
    ("kallsyms_num_syms", 0, struct.pack("<I", 299)),        # one symbol fewer than the names hold
    ("kallsyms_names", 0, b"\0"),                            # a zero-length name
    ("kallsyms_token_index", 2 * 200, struct.pack("<H", 1)),  # an index out of order
    ("kallsyms_token_table", 0, b"\x07"),                    # a token that is not a symbol character
    ("kallsyms_relative_base", 0, struct.pack("<Q", TEXT + 8)),  # _stext decodes elsewhere
])
def test_one_inconsistency_anywhere_rejects_the_tables(label, delta, value):
    built = build(kernel_symbols(300), relative_base=TEXT)
    with pytest.raises(KallsymsError, match="no kallsyms tables"):
        find_kallsyms([(BASE, _damaged(built, label, delta, value))], LAYOUT_OFFSETS, STEXT)


def test_addresses_out_of_order_are_not_a_kallsyms_table():
    symbols = kernel_symbols(300)
    symbols[10], symbols[11] = symbols[11], symbols[10]
    built = build(symbols, relative_base=TEXT)
    with pytest.raises(KallsymsError, match="no kallsyms tables"):
        find_kallsyms([(BASE, built.blob)], LAYOUT_OFFSETS, STEXT)


def test_noise_alone_has_no_tables():
    with pytest.raises(KallsymsError, match=r"no kallsyms tables .*65536 bytes searched"):
        find_kallsyms([(BASE, noise(1 << 16, 8))], LAYOUT_OFFSETS, STEXT)
    with pytest.raises(KallsymsError, match="_stext is needed"):
        find_kallsyms([(BASE, b"")], LAYOUT_OFFSETS, {})


# -- BTF by its header --------------------------------------------------------------------------


def small_btf(name: str = "int") -> bytes:
    writer = BtfWriter()
    writer.add(Kind.INT, name, 4, extra=writer.words(32 | 1 << 24))
    return writer.blob()


def test_a_btf_blob_is_found_by_its_header_among_lookalikes():
    blob = small_btf()
    misaligned = b"\0" + blob[:24]
    gap = bytearray(blob[:24])
    gap[16:20] = struct.pack("<I", struct.unpack_from("<I", blob, 12)[0] + 4)  # str_off past type_len
    data = region(noise(100, 9), misaligned, bytes(gap), noise(64, 10)) + blob + noise(50, 11)
    found = find_btf_blobs(data)
    assert len(found) == 1
    offset, size = found[0]
    assert data[offset:offset + size] == blob


def test_two_btf_blobs_are_both_reported():
    data = region(small_btf("int"), noise(40, 12), small_btf("long"))
    assert len(find_btf_blobs(data)) == 2
    assert find_btf_blobs(noise(4096, 13)) == []
