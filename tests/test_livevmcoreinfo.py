"""Reading a running guest's VMCOREINFO without pausing it (dfforensics.dump.livevmcoreinfo),
on plain bytes: guest-physical memory laid out as the x86_64 kernel lays it out (4-level
page tables, the kernel text mapping at __START_KERNEL_map + KASLR offset, the
``vmcoreinfo_note`` pointer into the direct map, an ELF note named VMCOREINFO)."""

import struct

import pytest

from dfforensics.dump.livevmcoreinfo import KernelLandmarks, NoteNotFound, find_vmcoreinfo, parse_note

BANNER = b"Linux version 6.1.192 (builder@fixtures) #1 SMP"
TEXT_LINK = 0xFFFFFFFF81000000
SYMBOLS = {"_text": TEXT_LINK, "linux_banner": TEXT_LINK + 0x1200000, "vmcoreinfo_note": TEXT_LINK + 0x1A00010,
           "page_offset_base": TEXT_LINK + 0x1300008}
LANDMARKS = KernelLandmarks.from_symbols(BANNER, SYMBOLS)
NOTE_TEXT = b"OSRELEASE=6.1.192\nPAGESIZE=4096\nKERNELOFFSET=2a000000\n"
PAGE_OFFSET = 0xFFFF9A0000000000  # a randomized direct-map base


def note(text=NOTE_TEXT, name=b"VMCOREINFO\0"):
    padded = name + b"\0" * (-len(name) % 4)
    return struct.pack("<III", len(name), len(text), 0) + padded + text


class Memory:
    def __init__(self):
        self.bytes = {}

    def put(self, address, data):
        for i, byte in enumerate(data):
            self.bytes[address + i] = byte

    def put_word(self, address, value):
        self.put(address, value.to_bytes(8, "little"))

    def read(self, address, size):
        if any(address + i not in self.bytes for i in range(size)):
            return None
        return bytes(self.bytes[address + i] for i in range(size))


def guest(kaslr=0x2A000000, load=0x5000000, pgd=0x100000, note_physical=0x7F0000, pti_user_cr3=False):
    """Memory of a guest whose kernel (SYMBOLS) runs at TEXT_LINK + kaslr, loaded at ``load``."""
    memory = Memory()
    pud, pmd = pgd + 0x3000, pgd + 0x4000
    for table in (pgd, pgd + 0x1000, pud, pmd):
        memory.put(table, bytes(4096))
    text_virtual = TEXT_LINK + kaslr
    memory.put_word(pgd + 8 * 511, pud | 0x63)
    memory.put_word(pud + 8 * 510, pmd | 0x63)
    first = (text_virtual >> 21) & 511
    for index in range(first, first + 40):  # the image, 2 MiB pages
        memory.put_word(pmd + 8 * index, (load + ((index - first) << 21)) | 0xE3)
    memory.put(load + SYMBOLS["linux_banner"] - TEXT_LINK, BANNER + b"\0")
    memory.put_word(load + SYMBOLS["page_offset_base"] - TEXT_LINK, PAGE_OFFSET)
    memory.put_word(load + SYMBOLS["vmcoreinfo_note"] - TEXT_LINK, PAGE_OFFSET + note_physical)
    memory.put(note_physical, note())
    cr3 = (pgd | 0x1000) if pti_user_cr3 else pgd
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
    memory.put(0x7F0000, note(name=b"CORE\0"))
    with pytest.raises(NoteNotFound, match="no VMCOREINFO note"):
        find_vmcoreinfo(memory.read, cr3, 0x6B0, [LANDMARKS])


def test_a_kernel_without_page_offset_base_uses_the_fixed_direct_map():
    memory, cr3 = guest()
    symbols = {name: value for name, value in SYMBOLS.items() if name != "page_offset_base"}
    memory.put_word(0x5000000 + SYMBOLS["vmcoreinfo_note"] - TEXT_LINK, 0xFFFF888000000000 + 0x7F0000)
    assert find_vmcoreinfo(memory.read, cr3, 0x6B0, [KernelLandmarks.from_symbols(BANNER, symbols)])[0] == NOTE_TEXT


def test_parse_note_checks_name_size_and_text():
    assert parse_note(note()) == NOTE_TEXT
    assert parse_note(note()[:20]) is None
    assert parse_note(note(text=b"garbage")) is None
    assert parse_note(b"") is None


def test_landmarks_need_banner_text_and_the_note_pointer():
    assert KernelLandmarks.from_symbols(b"", SYMBOLS) is None
    assert KernelLandmarks.from_symbols(BANNER, {"_text": TEXT_LINK, "linux_banner": TEXT_LINK + 8}) is None
    assert LANDMARKS.offsets["vmcoreinfo_note"] == 0x1A00010


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
