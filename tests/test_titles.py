"""Titles and dedup keys on plain values: the same event groups across dumps, look-alikes do not."""

import dataclasses

from dfforensics.core.frames import scan_frames, words_to_bytes
from dfforensics.core.model import DfClass, DoubleFault, Registers, Verdict
from dfforensics.core.titles import title_and_key


def _frame(rip_symbol, base=0x7FFD00000000, orig_ax=0xFFFFFFFFFFFFFFFF):
    (frame,) = scan_frames(words_to_bytes([orig_ax, 0x100017EC, 0x33, 0x202, base + 48, 0x2B]), base)
    return dataclasses.replace(frame, rip_symbol=rip_symbol)


def _df(df_class, symbol, rip=0xFFFFFFFF81001234, verdict=Verdict.NO_MATCH):
    return DoubleFault(verdict, df_class, "s", Registers(rip=rip, rip_symbol=symbol))


def test_cpl_corruption_names_binary_offset_and_vector_and_groups_offsets_together():
    title, key = title_and_key(Verdict.MATCH, DfClass.CPL_CORRUPTION, None, [_frame("/usr/bin/victim+0x17c7")], None)
    assert title == "cpl-corruption: CPL-0 event delivered onto a user stack (victim+0x17c7, vector not saved)"
    _, same = title_and_key(Verdict.MATCH, DfClass.CPL_CORRUPTION, None, [_frame("/opt/victim+0x17ef")], None)
    assert same == key  # another offset, another build path: the same bug
    _, other = title_and_key(Verdict.MATCH, DfClass.CPL_CORRUPTION, None,
                             [_frame("/victim+0x17c7", orig_ax=~0xEC & (2**64 - 1))], None)
    assert other != key  # another vector


def test_a_log_s_possible_is_titled_as_possible():
    title, _ = title_and_key(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION, None, [_frame(None)], None)
    assert title.startswith("possible cpl-corruption:") and "RIP 0x100017ec" in title


def test_look_alikes_are_titled_by_class_and_kernel_function():
    title, key = title_and_key(Verdict.NO_MATCH, DfClass.KERNEL_STACK_OVERFLOW,
                               _df(DfClass.KERNEL_STACK_OVERFLOW, "exc_page_fault+0x19/0x60"), [], None)
    assert title == "kernel-stack-overflow in exc_page_fault"
    _, same = title_and_key(Verdict.NO_MATCH, DfClass.KERNEL_STACK_OVERFLOW,
                            _df(DfClass.KERNEL_STACK_OVERFLOW, "exc_page_fault+0x22/0x60"), [], None)
    assert same == key
    wild, wild_key = title_and_key(Verdict.NO_MATCH, DfClass.WILD_RSP,
                                   _df(DfClass.WILD_RSP, "dftest_wild_push+0x0/0x7 [dftest]"), [], None)
    assert wild == "wild-rsp in dftest_wild_push" and wild_key != key


def test_user_rips_group_by_binary_not_by_address():
    title, _ = title_and_key(Verdict.POSSIBLE, DfClass.CPL_CORRUPTION,
                             _df(DfClass.CPL_CORRUPTION, "/victim+0x17d8", rip=0x100017D8, verdict=Verdict.POSSIBLE),
                             [], None)
    assert title == "possible cpl-corruption: double fault in user code (victim)"


def test_no_double_fault_names_the_crash():
    title, _ = title_and_key(Verdict.NO_DOUBLE_FAULT, None, None, [], "BUG: kernel NULL pointer dereference")
    assert title == "no-double-fault: BUG: kernel NULL pointer dereference"


def test_the_key_is_the_sha256_of_its_parts_whichever_module_computes_it():
    # Keys group events across runs and versions: the digest must stay SHA-256 of the parts.
    import hashlib

    _, key = title_and_key(Verdict.NO_MATCH, None, None, [], "Kernel panic - not syncing: x")
    assert key == hashlib.sha256("no-double-fault\0Kernel panic - not syncing: x".encode()).hexdigest()[:16]
