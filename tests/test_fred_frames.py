"""FRED frames, laid out from the kernel's own struct definitions.

QEMU's TCG (7.2 on this machine) has no FRED, so no fixture guest delivers a FRED event
(fixtures/README.md). The frame decoder is tested instead on bytes laid out with the
DWARF of the 7.2 fixture kernel (CONFIG_X86_FRED=y): struct fred_frame (pt_regs +
struct fred_info), the bit fields of struct fred_cs and struct fred_ss
(arch/x86/include/asm/ptrace.h) and their offsets, all read through drgn, never written
here by hand. Only the values put in the fields are this test's: an APIC timer interrupt
(vector 0xec, EVENT_TYPE_EXTINT 0, arch/x86/include/asm/trapnr.h) delivered at CPL 0 on
the user stack the way FRED does it (RSP - 64 red zone, aligned down to 64:
FRED_CONFIG_REDZONE and FRED_STACK_FRAME_RSP_MASK of arch/x86/include/asm/fred.h).
"""

from pathlib import Path

import pytest

from dfforensics.core import x86
from dfforensics.core.frames import decode_fred, fred_push_base, scan_frames, words_to_bytes
from dfforensics.core.model import FrameKind, StackKind

drgn = pytest.importorskip("drgn")

FIXTURES = Path(__file__).parents[1] / "fixtures"
VMLINUX_72 = FIXTURES / "kernels" / "linux-7.2" / "vmlinux.xz"


@pytest.fixture(scope="module")
def kernel():
    from dfforensics.dump.opendump import decompressed
    # Types only, no dump: the vmlinux as an extra module of an empty x86_64 program.
    prog = drgn.Program(drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT
                                      | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
    module = prog.extra_module("vmlinux", create=True)
    module.try_file(decompressed(str(VMLINUX_72), "VMLINUX"), force=True)
    return prog


def _bitfields(prog, name):
    """{member: (bit offset, bit size)} of a kernel bit-field struct."""
    return {m.name: (m.bit_offset, m.bit_field_size) for m in prog.type(name).members if m.name}


def _pack(prog, name, **values):
    fields = _bitfields(prog, name)
    word = 0
    for member, value in values.items():
        offset, size = fields[member]
        assert value < 1 << size
        word |= value << offset
    return word


def _offset(prog, type_name, member):
    return drgn.offsetof(prog.type(type_name), member)


def _fred_frame_bytes(prog, *, rip, cs_word, flags, rsp, ss_word, error_code=0, edata=0):
    """The bytes of a struct fred_frame from its orig_ax (error code) slot to its end."""
    frame = prog.type("struct fred_frame")
    base = _offset(prog, "struct fred_frame", "regs.orig_ax")
    words = [0] * ((frame.size - base) // 8)
    for member, value in (("regs.orig_ax", error_code), ("regs.ip", rip), ("regs.csx", cs_word),
                          ("regs.flags", flags), ("regs.sp", rsp), ("regs.ssx", ss_word),
                          ("info.edata", edata), ("info.resv", 0)):
        words[(_offset(prog, "struct fred_frame", member) - base) // 8] = value
    return words


def test_the_kernel_s_fred_layout_is_the_one_the_decoder_assumes(kernel):
    # The decoder's constants against the kernel's DWARF: 8 words from the error code up,
    # the vector at bits 32-39 and the event type at bits 48-51 of the SS word.
    frame = kernel.type("struct fred_frame")
    assert (frame.size - _offset(kernel, "struct fred_frame", "regs.orig_ax")) // 8 == 8
    ss = _bitfields(kernel, "struct fred_ss")
    assert ss["vector"] == (32, 8) and ss["type"] == (48, 4) and ss["ss"] == (0, 16)
    assert _bitfields(kernel, "struct fred_cs")["sl"] == (16, 2)


def test_a_fred_frame_pushed_at_cpl0_on_a_user_stack_is_found_and_says_fred(kernel):
    user_rsp = 0x7FFC12345678
    # Where FRED puts the frame for a same-level delivery: it ends at (RSP - 64) & ~63.
    top = fred_push_base(user_rsp)
    frame_words = _fred_frame_bytes(
        kernel, rip=0x401136, cs_word=_pack(kernel, "struct fred_cs", cs=x86.USER_CS),
        flags=0x246, rsp=user_rsp,
        ss_word=_pack(kernel, "struct fred_ss", ss=x86.USER_DS, vector=0xEC, type=0, l=1, sti=0))
    start = top - 8 * len(frame_words) - 0x40
    words = [0] * 8 + frame_words + [0] * 4
    (frame,) = scan_frames(words_to_bytes(words), start, StackKind.USER)
    assert frame.address == top - 64
    assert (frame.cs, frame.ss, frame.rsp, frame.rip) == (x86.USER_CS, x86.USER_DS, user_rsp, 0x401136)
    assert frame.consistent and frame.kind is FrameKind.CPL0_USER_STACK
    assert frame.orig_ax.kind == "fred" and frame.vector == 0xEC
    assert "FRED frame" in frame.orig_ax.meaning and "external interrupt" in frame.orig_ax.meaning


def test_an_idt_frame_in_the_same_place_still_reads_as_idt(kernel):
    user_rsp = 0x7FFC12345678
    top = x86.aligned_push_base(user_rsp)
    words = [0] * 4 + [0xFFFFFFFFFFFFFFFF, 0x401136, x86.USER_CS, 0x246, user_rsp, x86.USER_DS] + [0] * 2
    start = top - 8 * 10
    (frame,) = scan_frames(words_to_bytes(words), start, StackKind.USER)
    assert frame.consistent and frame.orig_ax.kind != "fred"


def test_a_fred_double_fault_frame_decodes_with_its_stack_level(kernel):
    cs_word = _pack(kernel, "struct fred_cs", cs=x86.KERNEL_CS, sl=0)
    ss_word = _pack(kernel, "struct fred_ss", ss=x86.KERNEL_DS, vector=8, type=3, l=1)
    event = decode_fred(cs_word, ss_word)
    assert (event.vector, event.event_type, event.type_name) == (8, 3, "hardware exception")
    leveled = decode_fred(_pack(kernel, "struct fred_cs", cs=x86.KERNEL_CS, sl=2), ss_word)
    assert leveled.stack_level == 2


@pytest.mark.parametrize("bad", [
    dict(type=1),                 # EVENT_TYPE_RESERVED
    dict(type=3, vector=0xEC),    # a hardware exception has a vector below 32
    dict(type=0, vector=8),       # an external interrupt has one above
])
def test_fred_words_that_no_cpu_pushes_are_refused(kernel, bad):
    fields = dict(ss=x86.USER_DS, vector=0xEC, type=0, l=1)
    fields.update(bad)
    assert decode_fred(x86.USER_CS, _pack(kernel, "struct fred_ss", **fields)) is None


def test_a_reserved_bit_makes_it_no_fred_frame(kernel):
    ss_word = _pack(kernel, "struct fred_ss", ss=x86.USER_DS, vector=0xEC, type=0, l=1)
    assert decode_fred(x86.USER_CS, ss_word) is not None
    assert decode_fred(x86.USER_CS, ss_word | 1 << 20) is None    # inside the ':13' gap
    assert decode_fred(x86.USER_CS | 1 << 40, ss_word) is None     # fred_cs ':45' gap
