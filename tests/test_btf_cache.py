"""The per-build BTF index in dfforensics' cache (dfforensics/inputs/btf.py load_btf): a
second load of the same build reads the index instead of making it, and an entry that is
cut short, damaged or another blob's is discarded and made again, never used. On the BTF
pahole encodes from the committed fixture kernels (tests/btffixtures.py); every cache is
a temporary directory."""

import os
import struct
from pathlib import Path

import drgn
import pytest

from dfforensics.inputs import btf as btfmodule
from dfforensics.inputs import formats
from dfforensics.inputs.btf import Btf, Kind, load_btf, parse_btf
from btffixtures import fixture_btf  # noqa: F401 (a pytest fixture)

BUILD_ID = "0123456789abcdef0123456789abcdef01234567"
NAMES = ["task_struct", "pt_regs", "mm_struct", "maple_node", "printk_ringbuffer", "list_head", "int",
         "unsigned long", "runqueues", "cpu_tss_rw", "no_such_type_anywhere"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("DFFORENSICS_CACHE", str(directory))
    return directory


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*-btf-index"))


def _answers(found: Btf) -> tuple:
    """What the finders ask of a Btf, to compare one made from a cached index with a fresh one."""
    named = {name: found.ids_named(name) for name in NAMES}
    some = [i for ids in named.values() for i in ids][:20] + [1, found.count // 2, found.count]
    return (found.count, named, found.ids_of_kind(Kind.DATASEC), found.ids_of_kind(Kind.ENUM)[:50],
            found.variable("runqueues"), found.variable("cpu_tss_rw"), found.enumerator("TASK_RUNNING"),
            [found[i] for i in some], [found.kind(i) for i in some])


def _count_passes(monkeypatch) -> list[int]:
    """Calls of the pass over the type section and of the name sort, counted."""
    calls = [0, 0]
    records, names = Btf._index_records, Btf._names

    def counted_records(self):
        calls[0] += 1
        return records(self)

    def counted_names(self):
        if self._name_order is None:
            calls[1] += 1
        return names(self)

    monkeypatch.setattr(Btf, "_index_records", counted_records)
    monkeypatch.setattr(Btf, "_names", counted_names)
    return calls


def test_second_load_of_a_build_reads_the_index(fixture_btf, cache, monkeypatch):
    fresh = _answers(parse_btf(fixture_btf.btf_bytes))
    calls = _count_passes(monkeypatch)
    first = load_btf(fixture_btf.btf_bytes, "first", BUILD_ID)
    assert calls == [1, 1] and len(_entries(cache)) == 1
    assert _answers(first) == fresh
    second = load_btf(fixture_btf.btf_bytes, "second", BUILD_ID)
    assert calls == [1, 1], "the second load made the index again"
    assert _answers(second) == fresh
    # It is an entry like the others: listed, counted against the cap, evictable.
    assert [e.path for e in formats.cache_entries(str(cache))] == [str(_entries(cache)[0])]


def test_another_build_or_blob_has_its_own_entry(fixture_btf, cache):
    load_btf(fixture_btf.btf_bytes, "a", BUILD_ID)
    load_btf(fixture_btf.btf_bytes, "b", "f" * 40)
    load_btf(fixture_btf.btf_bytes + b"\0" * 4, "c", BUILD_ID)  # the same build, other bytes
    load_btf(fixture_btf.btf_bytes, "d", None)  # a dump naming no build ID (before 5.9)
    assert len(_entries(cache)) == 4


def _damage_cases(entry: bytes) -> dict[str, bytes]:
    header = btfmodule._INDEX_HEADER
    middle = bytearray(entry)
    middle[len(entry) // 2] ^= 0xFF
    wrong_blob = bytearray(entry[:-4])
    struct.pack_into("=I", wrong_blob, 12, (struct.unpack_from("=I", entry, 12)[0] + 1) & 0xFFFFFFFF)
    wrong_blob += struct.pack("=I", __import__("zlib").crc32(wrong_blob))
    return {
        "cut short": entry[:len(entry) // 3],
        "empty": b"",
        "a flipped byte": bytes(middle),
        "its CRC rewritten": entry[:-4] + bytes(4),
        "another blob's (a consistent entry)": bytes(wrong_blob),
        "another format": b"x" * header.size + entry[header.size:],
    }


@pytest.mark.parametrize("case", sorted(_damage_cases(b"\0" * 64)))
def test_a_bad_entry_is_discarded_and_made_again(fixture_btf, cache, monkeypatch, case):
    fresh = _answers(parse_btf(fixture_btf.btf_bytes))
    load_btf(fixture_btf.btf_bytes, "first", BUILD_ID)
    [entry] = _entries(cache)
    good = entry.read_bytes()
    damaged = _damage_cases(good)[case]
    entry.write_bytes(damaged)
    # The size record made to match, so that only the content check can refuse it.
    Path(str(entry) + ".size").write_text(f"{len(damaged)}\n")
    calls = _count_passes(monkeypatch)
    again = load_btf(fixture_btf.btf_bytes, "again", BUILD_ID)
    assert calls == [1, 1], "a bad entry was used instead of being made again"
    assert _answers(again) == fresh
    assert entry.read_bytes() == good  # replaced by a whole one
    calls[:] = [0, 0]
    load_btf(fixture_btf.btf_bytes, "third", BUILD_ID)
    assert calls == [0, 0]


def test_an_entry_shorter_than_its_size_record_is_not_read(fixture_btf, cache, monkeypatch):
    load_btf(fixture_btf.btf_bytes, "first", BUILD_ID)
    [entry] = _entries(cache)
    entry.write_bytes(entry.read_bytes()[:100])  # cut short, the size record left as it was
    calls = _count_passes(monkeypatch)
    load_btf(fixture_btf.btf_bytes, "again", BUILD_ID)
    assert calls == [1, 1]


def test_a_cache_that_cannot_be_written_costs_only_the_saving(fixture_btf, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("DFFORENSICS_CACHE", str(blocked / "cache"))
    found = load_btf(fixture_btf.btf_bytes, "uncached", BUILD_ID)
    assert _answers(found) == _answers(parse_btf(fixture_btf.btf_bytes))


def test_kallsyms_read_ahead_gives_drgn_the_same_symbols(fixture_btf):
    """The copy of the kallsyms tables drgn's loader reads from (guestdebuginfo.read_ahead_kallsyms)
    gives the symbol table drgn makes through the page tables, symbol for symbol."""
    from dfforensics.dump import guestdebuginfo

    tables = []
    for read_ahead in (False, True):
        prog = drgn.Program()
        prog.set_core_dump(fixture_btf.vmcore)
        if read_ahead:
            guestdebuginfo.read_ahead_kallsyms(prog)
        guestdebuginfo.load_kallsyms(prog)
        tables.append(sorted((s.name, s.address, s.size, s.kind) for s in prog.symbols()))
    assert len(tables[0]) > 10000
    assert tables[1] == tables[0]


class _Recorder:
    """The three calls read_ahead_kallsyms makes of a program, recorded."""

    def __init__(self, count: int = 3) -> None:
        self.count, self.segments, self.reads = count, [], []

    def read_u32(self, address):
        return self.count

    def read(self, address, size):
        self.reads.append((address, size))
        return bytes(size)

    def add_memory_segment(self, address, size, read_fn):
        self.segments.append((address, size, read_fn))


def test_kallsyms_read_ahead_covers_the_tables_or_does_nothing(monkeypatch):
    from dfforensics.dump import guestdebuginfo

    info = {"SYMBOL(kallsyms_offsets)": "ffffffff81000000", "SYMBOL(kallsyms_num_syms)": "ffffffff81000100",
            "SYMBOL(kallsyms_names)": "ffffffff81000108", "SYMBOL(kallsyms_token_table)": "ffffffff81002000",
            "SYMBOL(kallsyms_token_index)": "ffffffff81003000"}
    monkeypatch.setattr(guestdebuginfo, "_vmcoreinfo", lambda prog: info)
    prog = _Recorder(count=0x40)
    guestdebuginfo.read_ahead_kallsyms(prog)
    # From the first table to the end of the last one whose size is known (token_index: 512).
    [(address, size, read_fn)] = prog.segments
    assert (address, size) == (0xFFFFFFFF81000000, 0x3000 + 512)
    assert read_fn(address + 5, 3, 5, False) == bytes(3)
    # Before 6.0 VMCOREINFO names no tables; tables too far apart are not kallsyms: nothing added.
    for names in ({"OSRELEASE": "5.10.0"}, dict(info, **{"SYMBOL(kallsyms_token_index)": "ffffffffa1003000"})):
        monkeypatch.setattr(guestdebuginfo, "_vmcoreinfo", lambda prog, names=names: names)
        prog = _Recorder()
        guestdebuginfo.read_ahead_kallsyms(prog)
        assert prog.segments == [] and prog.reads == []


def _forged(entry: bytes, word_at: int, value: int) -> bytes:
    """The entry with one u32 replaced and its own CRC made right again: what only a forger
    (or a bug in the writer) could make."""
    body = bytearray(entry[:-4])
    struct.pack_into("=I", body, word_at, value)
    return bytes(body) + struct.pack("=I", __import__("zlib").crc32(bytes(body)))


def test_a_forged_entry_beyond_the_checked_bounds_gives_errors_not_crashes(fixture_btf, cache):
    load_btf(fixture_btf.btf_bytes, "first", BUILD_ID)
    [entry] = _entries(cache)
    good = entry.read_bytes()
    header = btfmodule._INDEX_HEADER
    count = header.unpack_from(good)[3]
    middle = header.size + 4 * (count + 1)
    cases = {"a name id past the last type": _forged(good, middle + 4 * 10, count + 1000),
             "a record offset past the type section": _forged(good, header.size + 4 * (count // 2), 1 << 30)}
    for case, forged in cases.items():
        entry.write_bytes(forged)
        Path(str(entry) + ".size").write_text(f"{len(forged)}\n")
        found = load_btf(fixture_btf.btf_bytes, case, BUILD_ID)
        for name in NAMES:
            try:
                for type_id in found.ids_named(name):
                    found[type_id]
                found.variable(name)
                found.enumerator(name)
            except btfmodule.BtfError:
                pass  # refused where it was read: the one-line error the user sees
        for type_id in [count // 2] + list(range(1, found.count + 1, max(1, found.count // 500))):
            try:
                found[type_id]
            except btfmodule.BtfError:
                pass
        try:
            found.anonymous_structs(["seq", "timekeeper"])
        except btfmodule.BtfError:
            pass
