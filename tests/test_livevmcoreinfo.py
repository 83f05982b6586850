"""Reading a running guest's VMCOREINFO without pausing it (dfforensics.dump.livevmcoreinfo),
on plain bytes: guest-physical memory laid out as the x86_64 kernel lays it out (4-level
page tables, the kernel text mapping at __START_KERNEL_map + KASLR offset, the
``vmcoreinfo_note`` pointer into the direct map, an ELF note named VMCOREINFO)."""

import struct

import pytest

from dfforensics.dump.livevmcoreinfo import (KernelLandmarks, NoteNotFound, find_vmcoreinfo, kernel_image_runs,
                                             parse_note, search_vmcoreinfo, translate)

BANNER = b"Linux version 6.1.192 (builder@fixtures) #1 SMP"
TEXT_LINK = 0xFFFFFFFF81000000
SYMBOLS = {"_text": TEXT_LINK, "linux_banner": TEXT_LINK + 0x200000, "vmcoreinfo_note": TEXT_LINK + 0x500010,
           "page_offset_base": TEXT_LINK + 0x300008}
LANDMARKS = KernelLandmarks.from_symbols(BANNER, SYMBOLS)
KASLR, LOAD, PGD, NOTE = 0x2A000000, 0x5000000, 0x100000, 0x7F0000
PAGE_OFFSET = 0xFFFF9A0000000000  # a randomized direct-map base
START_KERNEL_MAP = 0xFFFFFFFF80000000
PHYS_BASE = LOAD - (TEXT_LINK + KASLR - START_KERNEL_MAP)
NOTE_TEXT = (f"OSRELEASE=6.1.192\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)={START_KERNEL_MAP + PGD - PHYS_BASE:x}\n"
             f"NUMBER(phys_base)={PHYS_BASE}\nKERNELOFFSET={KASLR:x}\n").encode()


def note(text=NOTE_TEXT, name=b"VMCOREINFO\0"):
    padded = name + b"\0" * (-len(name) % 4)
    return struct.pack("<III", len(name), len(text), 0) + padded + text


class Memory:
    """Guest-physical memory: RAM_SIZE bytes of RAM (zeros unless written), by page."""

    RAM_SIZE = 256 << 20

    def __init__(self):
        self.pages = {}

    def put(self, address, data):
        for i in range(0, len(data)):
            page = self.pages.setdefault((address + i) >> 12, bytearray(4096))
            page[(address + i) & 0xFFF] = data[i]

    def put_word(self, address, value):
        self.put(address, value.to_bytes(8, "little"))

    def read(self, address, size):
        if address < 0 or address + size > self.RAM_SIZE:
            return None
        out = bytearray()
        while size:
            page = self.pages.get(address >> 12)
            take = min(size, 4096 - (address & 0xFFF))
            out += page[address & 0xFFF:(address & 0xFFF) + take] if page else bytes(take)
            address, size = address + take, size - take
        return bytes(out)


def guest(note_physical=NOTE, pti_user_cr3=False, freed_page=None):
    """Memory of a guest whose kernel (SYMBOLS) runs at TEXT_LINK + KASLR, loaded at LOAD:
    an 8 MiB image mapped with 2 MiB pages but its third, split into 4 KiB pages (one of
    them, ``freed_page``, unmapped), and the direct map at PAGE_OFFSET (one 1 GiB page)."""
    memory = Memory()
    pud, pmd, direct_pud, ptes = PGD + 0x3000, PGD + 0x4000, PGD + 0x5000, PGD + 0x6000
    text_virtual = TEXT_LINK + KASLR
    memory.put_word(PGD + 8 * 511, pud | 0x63)
    memory.put_word(pud + 8 * 510, pmd | 0x63)
    memory.put_word(PGD + 8 * ((PAGE_OFFSET >> 39) & 511), direct_pud | 0x63)
    memory.put_word(direct_pud, 0 | 0xE3)
    first = (text_virtual >> 21) & 511
    for index in range(first, first + 4):
        if index == first + 2:
            memory.put_word(pmd + 8 * index, ptes | 0x63)
            for slot in range(512):
                if slot != freed_page:
                    memory.put_word(ptes + 8 * slot, (LOAD + (2 << 21) + (slot << 12)) | 0x63)
        else:
            memory.put_word(pmd + 8 * index, (LOAD + ((index - first) << 21)) | 0xE3)
    memory.put(LOAD + SYMBOLS["linux_banner"] - TEXT_LINK, BANNER + b"\0")
    memory.put_word(LOAD + SYMBOLS["page_offset_base"] - TEXT_LINK, PAGE_OFFSET)
    memory.put_word(LOAD + SYMBOLS["vmcoreinfo_note"] - TEXT_LINK, PAGE_OFFSET + note_physical)
    memory.put(note_physical, note())
    cr3 = (PGD | 0x1000) if pti_user_cr3 else PGD
    if pti_user_cr3:
        memory.put(PGD | 0x1000, bytes(4096))  # the user half: no kernel text mapped
    return memory, cr3


def test_the_note_is_found_through_the_live_page_table_root():
    memory, cr3 = guest()
    text, how = find_vmcoreinfo(memory.read, cr3, 0x6B0, [LANDMARKS])
    assert text == NOTE_TEXT
    assert "0xffffffffab000000" in how and "0x5000000" in how and "0x7f0000" in how


def test_a_user_cr3_under_pti_leads_to_the_kernel_half_of_its_pair():
    memory, cr3 = guest(pti_user_cr3=True)
    assert find_vmcoreinfo(memory.read, cr3 | 0x5, 0x6B0, [LANDMARKS])[0] == NOTE_TEXT  # PCID bits too


def test_another_kernel_at_that_place_is_refused():
    memory, cr3 = guest()
    other = KernelLandmarks.from_symbols(BANNER.replace(b"6.1.192", b"6.1.193"), SYMBOLS)
    with pytest.raises(NoteNotFound, match="not the expected one"):
        find_vmcoreinfo(memory.read, cr3, 0x6B0, [other])


def test_five_level_paging_and_unmapped_roots_fall_back():
    memory, cr3 = guest()
    with pytest.raises(NoteNotFound, match="5-level"):
        find_vmcoreinfo(memory.read, cr3, 0x6B0 | 1 << 12, [LANDMARKS])
    with pytest.raises(NoteNotFound, match="not readable|maps no kernel text"):
        find_vmcoreinfo(memory.read, 0x900000, 0x6B0, [LANDMARKS])  # a root outside RAM


def test_a_pointer_to_something_that_is_not_the_note_is_refused():
    memory, cr3 = guest()
    memory.put(NOTE, note(name=b"CORE\0"))
    with pytest.raises(NoteNotFound, match="no VMCOREINFO note"):
        find_vmcoreinfo(memory.read, cr3, 0x6B0, [LANDMARKS])


def test_a_kernel_without_page_offset_base_uses_the_fixed_direct_map():
    memory, cr3 = guest()
    symbols = {name: value for name, value in SYMBOLS.items() if name != "page_offset_base"}
    memory.put_word(LOAD + SYMBOLS["vmcoreinfo_note"] - TEXT_LINK, 0xFFFF888000000000 + NOTE)
    assert find_vmcoreinfo(memory.read, cr3, 0x6B0, [KernelLandmarks.from_symbols(BANNER, symbols)])[0] == NOTE_TEXT


def test_parse_note_checks_name_size_and_text():
    assert parse_note(note()) == NOTE_TEXT
    assert parse_note(note()[:20]) is None
    assert parse_note(note(text=b"garbage")) is None
    assert parse_note(b"") is None


def test_landmarks_need_banner_text_and_the_note_pointer():
    assert KernelLandmarks.from_symbols(b"", SYMBOLS) is None
    assert KernelLandmarks.from_symbols(BANNER, {"_text": TEXT_LINK, "linux_banner": TEXT_LINK + 8}) is None
    assert LANDMARKS.offsets["vmcoreinfo_note"] == 0x500010


def test_of_several_known_builds_the_one_whose_banner_is_there_is_used():
    memory, cr3 = guest()
    other = KernelLandmarks.from_symbols(b"Linux version 5.10.223 (other)", dict(SYMBOLS, linux_banner=TEXT_LINK + 0x40))
    assert find_vmcoreinfo(memory.read, cr3, 0x6B0, [other, LANDMARKS])[0] == NOTE_TEXT
    with pytest.raises(NoteNotFound, match="none of the 2 builds known"):
        find_vmcoreinfo(memory.read, cr3, 0x6B0, [other, other])


def test_landmarks_round_trip_through_their_saved_form_and_bad_forms_are_none():
    assert KernelLandmarks.from_saved(LANDMARKS.saved()) == LANDMARKS
    for bad in (None, 3, {}, {"banner": "zz", "offsets": {}}, {"banner": BANNER.hex(), "offsets": {"x": "1"}},
                {"banner": BANNER.hex(), "offsets": {"linux_banner": 1}}):
        assert KernelLandmarks.from_saved(bad) is None


def test_the_image_runs_leave_out_the_pages_the_kernel_freed_and_unmapped():
    memory, _ = guest(freed_page=7)
    virtual_text, load, runs = kernel_image_runs(memory.read, PGD)
    assert (virtual_text, load) == (TEXT_LINK + KASLR, LOAD)
    gap = virtual_text + (2 << 21) + (7 << 12)
    assert [(v - virtual_text, size) for v, size, _ in runs] == [(0, (2 << 21) + (7 << 12)),
                                                                 (gap + 4096 - virtual_text, (1 << 21) - 8 * 4096 + (1 << 21))]
    assert translate(memory.read, PGD, gap) is None
    assert translate(memory.read, PGD, PAGE_OFFSET + NOTE + 12) == NOTE + 12


def test_without_the_build_the_note_is_found_by_the_kernel_s_pointer_to_it():
    memory, cr3 = guest()
    text, how = search_vmcoreinfo(memory.read, cr3, 0x6B0)
    assert text == NOTE_TEXT and "holds the only pointer" in how and hex(NOTE) in how
    memory, cr3 = guest(pti_user_cr3=True)
    assert search_vmcoreinfo(memory.read, cr3, 0x6B0)[0] == NOTE_TEXT


def test_a_note_user_code_forged_is_never_reached():
    # A page of user memory with a note that describes this very kernel: no pointer in the
    # kernel image leads to it, so it is not found; nor is anything, once the real one is gone.
    memory, cr3 = guest()
    memory.put(0x900000, note(NOTE_TEXT.replace(b"OSRELEASE=6.1.192", b"OSRELEASE=6.1.999")))
    assert search_vmcoreinfo(memory.read, cr3, 0x6B0)[0] == NOTE_TEXT
    memory.put(NOTE, bytes(64))
    with pytest.raises(NoteNotFound, match="no pointer in the kernel image leads"):
        search_vmcoreinfo(memory.read, cr3, 0x6B0)


def test_a_note_that_does_not_describe_the_live_kernel_is_refused():
    for wrong in (NOTE_TEXT.replace(f"phys_base)={PHYS_BASE}".encode(), b"phys_base)=0"),
                  NOTE_TEXT.replace(b"swapper_pg_dir)=", b"swapper_pg_dir)=1")):
        memory, cr3 = guest()
        memory.put(NOTE, note(wrong))
        with pytest.raises(NoteNotFound):
            search_vmcoreinfo(memory.read, cr3, 0x6B0)


def test_two_different_notes_of_this_kernel_are_ambiguous():
    memory, cr3 = guest()
    memory.put_word(LOAD + 0x400000, PAGE_OFFSET + 0xA00000)  # another image pointer, another note
    memory.put(0xA00000, note(NOTE_TEXT + b"CRASHTIME=1\n"))
    with pytest.raises(NoteNotFound, match="2 different VMCOREINFO notes"):
        search_vmcoreinfo(memory.read, cr3, 0x6B0)


def test_builds_seen_are_kept_in_the_cache_for_later_runs_and_a_bad_entry_is_ignored(tmp_path, monkeypatch):
    from dfforensics.dump.live import KnownKernels
    from dfforensics.inputs.formats import write_keyed

    monkeypatch.setenv("DFFORENSICS_CACHE", str(tmp_path))  # empty: no build any sweep saw
    first = KnownKernels.in_cache()
    assert first.candidates("/run/a.qmp") == []
    first.remember("/run/a.qmp", LANDMARKS)
    assert KnownKernels.in_cache().candidates("/run/b.qmp") == [LANDMARKS]
    assert KnownKernels().candidates("/run/b.qmp") == []  # not made from the cache: nothing saved
    write_keyed("live", "kernels", b"{not json")
    assert KnownKernels.in_cache().candidates("/run/b.qmp") == []
