"""kallsyms looked up without decoding every name (dfforensics/inputs/kallsymsindex.py), on
tables compressed as scripts/kallsyms.c compresses them (tests/kallsymsbytes.py replays
its optimize_result() forwards; the index replays it backwards from the token table)."""

import struct
from array import array

import pytest

from dfforensics.inputs.kallsymsindex import (
    ABSOLUTE_PERCPU,
    BASE_RELATIVE,
    PLACE_RELATIVE,
    KallsymsIndex,
    KallsymsIndexError,
    answers_bytes,
    decode_addresses,
    find_markers,
    parse_answers,
    read_tokens,
)
from kallsymsbytes import kallsyms_compress, names_tables

TEXT = 0xFFFFFFFF81000000


# Words whose pairs overlap ("stop", "top", "ops", "pop"): tokens that two pairs could make.
_WORDS = ("get", "set", "page", "cpu", "per", "task", "init", "exit", "lock", "unlock", "irq", "mask", "stack",
          "state", "set_", "_set", "ops", "pop", "top", "stop", "tops")


def kernel_like(count: int = 700) -> list[tuple[int, str, str]]:
    """(address, type, name) sorted by address: per-CPU first, repeated static names, names
    that hold other names, a gap of more than 0x10000, and _stext."""
    symbols = [(0x0, "A", "fixed_percpu_data"), (0x15000, "D", "cpu_tss_rw"), (0x1FB80, "D", "current_task")]
    address = TEXT
    symbols += [(address, "T", "_text"), (address, "T", "_stext")]
    for number in range(count):
        address += 0x40 + (number % 7) * 0x10
        kind = "t" if number % 3 else "T"
        first, second = _WORDS[number % len(_WORDS)], _WORDS[(number * 7 + 3) % len(_WORDS)]
        name = (f"cleanup_{number // 50 % 5}" if number % 50 == 0 else  # the same static name in many files
                f"do_{'percpu' if number % 2 else 'cpu'}_work_{number:04d}" if number % 4 == 0 else
                f"{first}_{second}{_WORDS[(number * 13 + 5) % len(_WORDS)]}_{number % 37}")
        symbols.append((address, kind, name))
    symbols += [(address + 0x40, "t", "cpu"), (address + 0x80, "T", "__cpu_possible_mask")]
    symbols += [(address + 0x40000, "D", "init_task"), (address + 0x40100, "d", "cpu")]
    return symbols


def build_index(symbols, long_names=True, seqs_gap=False, type_apart=False, tamper=None, ordered=frozenset()):
    texts = [(kind + name).encode() for _, kind, name in symbols]
    tables = names_tables(texts, long_names=long_names, seqs_gap=seqs_gap, type_apart=type_apart)
    data = bytearray(tables["data"])
    if tamper:
        tamper(data, tables)
    data = bytes(data)
    tokens = read_tokens(data[tables["token_table"]:tables["token_index"]], data[tables["token_index"]:])
    markers = find_markers(data, tables["token_table"], len(symbols), long_names)
    addresses = [address for address, _, _ in symbols]
    holder = {}

    def made():
        return decode_addresses(_offsets(addresses, TEXT - 0x1000), len(symbols), TEXT - 0x1000, 0x1000,
                                holder["index"].numbers_named("_stext")[0], TEXT)

    index = KallsymsIndex(data[:tables["token_table"]], len(symbols), markers, tokens, made, long_names,
                          ordered=ordered)
    holder["index"] = index
    return index, tables


def _offsets(addresses, base):
    # CONFIG_KALLSYMS_ABSOLUTE_PERCPU: per-CPU addresses as they are, the rest negated from base.
    return b"".join(struct.pack("<I", a if a < 1 << 31 else (base - 1 - a) & 0xFFFFFFFF) for a in addresses)


@pytest.fixture(scope="module")
def symbols():
    return kernel_like()


@pytest.fixture(scope="module")
def index(symbols):
    return build_index(symbols)[0]


def test_the_replayed_tokens_have_ambiguous_pairs_to_try(index):
    # Without a token that two pairs could have made, the test would not exercise the branching.
    assert any(len(pairs) > 1 for _, _, pairs in index._compressor.learned)


def test_every_name_is_found_at_every_entry_it_has_in_table_order(index, symbols):
    by_name = {}
    for number, (_, _, name) in enumerate(symbols):
        by_name.setdefault(name, []).append(number)
    for name, numbers in by_name.items():
        assert index.numbers_named(name) == tuple(numbers), name


def test_a_repeated_static_name_gives_every_entry(index, symbols):
    numbers = index.numbers_named("cleanup_0")
    assert len(numbers) > 2 and all(symbols[n][2] == "cleanup_0" for n in numbers)
    # "cpu" is both a function and, later, data: both entries, types apart.
    assert [symbols[n][1] for n in index.numbers_named("cpu")] == ["t", "d"]


def test_a_name_inside_other_names_is_only_its_own_entries(index, symbols):
    # "cpu" and "cpu_tss_rw" sit inside hundreds of do_cpu_work_* names.
    assert all(symbols[n][2] == "cpu" for n in index.numbers_named("cpu"))
    assert index.numbers_named("do_cpu") == ()
    assert index.numbers_named("work_0004") == ()


def test_names_that_are_not_there_are_not_found(index):
    for name in ("init_tas", "nit_task", "_stex", "zzz", "", "ümlaut", "cleanup_9"):
        assert index.numbers_named(name) == ()


def test_entries_decode_as_drgn_makes_symbols(index, symbols):
    for number in (0, 1, 3, 4, 300, len(symbols) - 2, len(symbols) - 1):
        entry = index.entry(number)
        address, kind, name = symbols[number]
        following = symbols[number + 1][0] - address if number + 1 < len(symbols) else 0
        assert (entry.name, entry.kind, entry.address) == (name, kind, address)
        # drgn's loader: the gap to the next entry, or 0 from 0x10000 on and for the last.
        assert entry.size == (following if following < 0x10000 else 0)


def test_addresses_are_looked_up_as_drgn_looks_them_up(index, symbols):
    # fixed_percpu_data is 0x15000 below the next entry: too far for a size (drgn's cap).
    assert index.number_containing(0) is None
    assert index.number_containing(0x15000 + 5) == 1
    # _text and _stext share an address: only the last of equal addresses has a size.
    assert index.number_containing(TEXT) == 4
    assert index.number_containing(TEXT + 1) == 4
    last_function = len(symbols) - 4
    assert index.number_containing(symbols[last_function][0] + 0x20) == last_function
    # A gap of 0x10000 or more belongs to nobody, nor does anything past the last entry.
    assert index.number_containing(symbols[last_function + 1][0] + 0x20) is None
    assert index.number_containing(symbols[-1][0] + 0x10) is None
    assert index.number_containing(0x1FB80 + 0x100000) is None


def test_two_byte_lengths_are_read(symbols):
    long_name = "a_very_long_rust_symbol_" + "".join(f"{n:03d}x" for n in range(60))
    table = symbols[:-1] + [(symbols[-1][0], "d", long_name)]
    index, tables = build_index(table)
    assert len(tables["codes"][-1]) >= 0x80  # really a two-byte length
    assert index.numbers_named(long_name) == (len(table) - 1,)
    assert index.entry(len(table) - 1).name == long_name


def test_markers_are_found_past_seqs_of_names(symbols):
    index, _ = build_index(symbols, seqs_gap=True)
    assert index.numbers_named("init_task") == (len(symbols) - 2,)


def test_markers_that_disagree_with_the_names_are_refused(symbols):
    texts = [(kind + name).encode() for _, kind, name in symbols]
    tables = names_tables(texts)
    markers_at = tables["token_table"] - 4 * (-(-len(symbols) // 256)) - 4
    with pytest.raises(KallsymsIndexError, match="markers"):
        find_markers(tables["data"], tables["token_table"], len(symbols) + 300, True)
    last = bytearray(tables["data"])
    last[markers_at + 8:markers_at + 12] = struct.pack("<I", struct.unpack_from("<I", last, markers_at + 8)[0] + 1)
    with pytest.raises(KallsymsIndexError, match="markers"):
        find_markers(bytes(last), tables["token_table"], len(symbols), True)


def test_a_damaged_middle_marker_is_refused_when_its_entries_are_read(symbols):
    def damage(data, tables):
        markers_at = tables["token_table"] - 4 * (-(-len(symbols) // 256)) - 4
        good = struct.unpack_from("<I", data, markers_at + 4)[0]
        data[markers_at + 4:markers_at + 8] = struct.pack("<I", good + 3)

    index, _ = build_index(symbols, tamper=damage)
    name = symbols[300][2]
    with pytest.raises(KallsymsIndexError, match="marker"):
        index.numbers_named(name)
    with pytest.raises(KallsymsIndexError, match="marker"):
        index.entry(300)
    # Entries of the groups whose markers agree are still read.
    assert index.numbers_named("init_task") == (len(symbols) - 2,)


def test_type_characters_kept_out_of_the_compression_are_read_so(symbols):
    index, tables = build_index(symbols, type_apart=True)
    assert index._type_apart
    assert index.numbers_named("init_task") == (len(symbols) - 2,)
    assert index.numbers_named("cleanup_1") == tuple(n for n, s in enumerate(symbols) if s[2] == "cleanup_1")


def test_tables_not_compressed_as_scripts_kallsyms_does_are_refused(symbols):
    texts = [(kind + name).encode() for _, kind, name in symbols]
    tokens, codes = kallsyms_compress(texts)
    # Every entry spelt with one-character tokens only: it decodes, but no replay gives it.
    plain = [bytes(text) for text in texts]
    tables = names_tables(texts, tokens_and_codes=(tokens, plain))
    data = tables["data"]
    tokens = read_tokens(data[tables["token_table"]:tables["token_index"]], data[tables["token_index"]:])
    markers = find_markers(data, tables["token_table"], len(symbols), True)
    with pytest.raises(KallsymsIndexError, match="not compressed"):
        KallsymsIndex(data[:tables["token_table"]], len(symbols), markers, tokens, lambda: None, True)


def test_a_token_index_out_of_its_table_is_refused():
    with pytest.raises(KallsymsIndexError, match="outside"):
        read_tokens(b"a\0b\0", struct.pack("<256H", *range(0, 512, 2)))
    with pytest.raises(KallsymsIndexError, match="cut short"):
        read_tokens(b"a\0", b"\0" * 100)


def test_each_offset_encoding_is_chosen_as_drgn_chooses_it():
    base = TEXT - 0x1000
    # Base relative: every address base + offset.
    kernel = [TEXT - 0x800, TEXT, TEXT + 0x100, TEXT + 0x2000]
    table = decode_addresses(b"".join(struct.pack("<I", a - base) for a in kernel), 4, base, 0, 1, TEXT)
    assert [table[n] for n in range(4)] == kernel and table.in_order()
    assert table.encoding == BASE_RELATIVE
    addresses = [0x1000, TEXT, TEXT + 0x100, TEXT + 0x2000]
    # Absolute per-CPU.
    table = decode_addresses(_offsets(addresses, base), 4, base, 0, 1, TEXT)
    assert [table[n] for n in range(4)] == addresses and table.in_order()
    assert table.encoding == ABSOLUTE_PERCPU and list(table) == addresses
    # Place relative (7.0+): each offset from its own slot; no relative base.
    at = TEXT + 0x900000
    place = b"".join(struct.pack("<i", a - (at + 4 * n)) for n, a in enumerate(kernel))
    table = decode_addresses(place, 4, None, at, 1, TEXT)
    assert [table[n] for n in range(4)] == kernel and table.in_order()
    assert table.encoding == PLACE_RELATIVE
    # Without the table's own address (the pre-6.0 search: no such kernel) it is not tried.
    with pytest.raises(KallsymsIndexError, match="_stext"):
        decode_addresses(place, 4, None, None, 1, TEXT)
    with pytest.raises(KallsymsIndexError, match="_stext"):
        decode_addresses(place, 4, None, at, 1, TEXT + 8)
    with pytest.raises(KallsymsIndexError, match="cut short"):
        decode_addresses(place[:8], 4, None, at, 1, TEXT)


def test_addresses_out_of_order_are_not_bisected(symbols):
    index, _ = build_index(symbols)
    swapped = array("I", _offsets([a for a, _, _ in symbols], TEXT - 0x1000))
    swapped[10], swapped[11] = swapped[11], swapped[10]
    index._make_addresses = lambda: decode_addresses(swapped.tobytes(), len(symbols), TEXT - 0x1000, 0x1000, 4, TEXT)
    with pytest.raises(KallsymsIndexError, match="not in order"):
        index.number_containing(TEXT + 0x100)


def _searches_counted(index, monkeypatch) -> list[str]:
    searched = []
    search = index._search

    def counted(name):
        searched.append(name)
        return search(name)

    monkeypatch.setattr(index, "_search", counted)
    return searched


def test_answers_kept_from_an_earlier_index_are_taken_without_a_search(symbols, monkeypatch):
    first, _ = build_index(symbols)
    for name in ("init_task", "cleanup_2", "cpu", "_stext"):
        first.numbers_named(name)
    kept = parse_answers(answers_bytes(first.searched())).names
    assert kept == first.searched() and len(kept) == 4

    texts = [(kind + name).encode() for _, kind, name in symbols]
    tables = names_tables(texts)
    data = tables["data"]
    tokens = read_tokens(data[tables["token_table"]:tables["token_index"]], data[tables["token_index"]:])
    markers = find_markers(data, tables["token_table"], len(symbols), True)
    second = KallsymsIndex(data[:tables["token_table"]], len(symbols), markers, tokens, lambda: None, True, kept)
    searched = _searches_counted(second, monkeypatch)
    for name in ("init_task", "cleanup_2", "cpu"):
        assert second.numbers_named(name) == first.numbers_named(name)
    assert searched == []
    assert second.numbers_named("current_task") == (2,) and searched == ["current_task"]
    assert second.searched() == {"current_task": (2,)}


def test_answers_that_are_not_these_tables_are_all_dropped(symbols, monkeypatch):
    texts = [(kind + name).encode() for _, kind, name in symbols]
    tables = names_tables(texts)
    data = tables["data"]
    tokens = read_tokens(data[tables["token_table"]:tables["token_index"]], data[tables["token_index"]:])
    markers = find_markers(data, tables["token_table"], len(symbols), True)
    # Another build's answers: init_task at entry 7 (here a function), and one out of range.
    other = {"init_task": (7,), "cpu_tss_rw": (1,), "current_task": (10 ** 6,)}
    index = KallsymsIndex(data[:tables["token_table"]], len(symbols), markers, tokens, lambda: None, True, other)
    searched = _searches_counted(index, monkeypatch)
    assert index.numbers_named("init_task") == (len(symbols) - 2,)
    # cpu_tss_rw's kept answer happens to be right, but answers that lied once are not taken.
    assert index.numbers_named("cpu_tss_rw") == (1,)
    assert searched == ["init_task", "cpu_tss_rw"] and index.known() == {}


def test_kept_answers_that_are_damaged_read_as_none():
    data = answers_bytes({"init_task": (5, 9), "x": (1,)}, frozenset({"0badf00d-_rising"}))
    assert parse_answers(data) == ({"init_task": (5, 9), "x": (1,)}, frozenset({"0badf00d-_rising"}))
    nothing = ({}, frozenset())
    assert parse_answers(data[:-1]) == nothing
    assert parse_answers(data[:12] + b"Z" + data[13:]) == nothing
    assert parse_answers(b"") == nothing and parse_answers(b"dffKSYMa1\n") == nothing
    # Names no kernel has (spaces, not ASCII, empty) are not written: they could not be read back.
    assert parse_answers(answers_bytes({"a b": (1,), "ü": (2,), "": (3,)})) == nothing


def test_an_address_table_found_in_order_once_is_not_checked_again(symbols, monkeypatch):
    first, _ = build_index(symbols)
    assert first.number_containing(TEXT + 1) == 4
    assert len(first.ordered()) == 1
    second, _ = build_index(symbols, ordered=first.ordered())
    from dfforensics.inputs import kallsymsindex

    def never(self):
        raise AssertionError("checked again")

    monkeypatch.setattr(kallsymsindex.KallsymsAddresses, "in_order", never)
    assert second.number_containing(TEXT + 1) == 4
    # Another table (one offset changed) has another key: it is checked.
    third, _ = build_index(symbols[:-1] + [(symbols[-1][0] + 0x10, "d", "cpu")], ordered=first.ordered())
    with pytest.raises(AssertionError, match="checked again"):
        third.number_containing(TEXT + 1)
