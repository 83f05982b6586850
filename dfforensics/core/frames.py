"""
Frame scanning
--------------

Find interrupt and exception frames ``[orig_ax][RIP][CS][RFLAGS][RSP][SS]`` in
the raw words of a stack. Pure: bytes in, :class:`~dfforensics.core.model.Frame`
out; the drgn layer reads memory and hands the bytes here.

A candidate is kept only when it passes at least the checks of the crash
utility's ``bt -e`` (selectors, RFLAGS, RIP privilege) plus SS/CS coherence.
What crash never checks, and what makes the signature provable, is
self-consistency: a frame the CPU pushed *without* a stack switch saves an RSP
that points just above the frame itself (after the 16-byte alignment the CPU
applies before pushing).
"""

import re
import struct
from typing import Final, Iterator, NamedTuple, Optional, Sequence, Union

from dfforensics.core import x86
from dfforensics.core.model import Frame, FrameKind, OrigAx, StackKind
from dfforensics.core.signature import impossible_ss

__all__ = (
    "FredEvent",
    "decode_fred",
    "fred_orig_ax",
    "decode_orig_ax",
    "frame_problems",
    "scan_frames",
    "words_to_bytes",
)

_WORD: Final = struct.Struct("<Q")
_MASK64: Final = (1 << 64) - 1
# Candidate RIP positions are found by searching for a valid CS word right
# after them: far faster than testing every word in Python. Every frame CS is
# one nonzero byte and seven zero bytes, so two matches can never overlap and
# plain matching (which re runs 3x faster than a lookahead, scanning only for
# the first byte) finds every aligned one (tests/test_frames.py checks the premise).
# A FRED CS word (struct fred_cs) may also carry the stack level (bits 16-17) and WFE
# (bit 18) in its third byte, which is 0..7 and so never a selector byte: matches still
# cannot overlap.
_CS_WORD_RE: Final = re.compile(
    b"[" + b"".join(re.escape(bytes([cs])) for cs in sorted(x86.FRAME_CS)) + b"]\x00[\x00-\x07]\x00{5}"
)
# External interrupt vectors (below are exceptions, which never use ~vector).
_FIRST_EXTERNAL_VECTOR: Final = 0x20


# --- FRED (6.9+ CONFIG_X86_FRED, CPUs with FRED) -----------------------------------------
# A FRED event frame is struct fred_frame = struct pt_regs + struct fred_info {edata, resv}:
# the CPU pushes 8 words, [error code][RIP][CS word][RFLAGS][RSP][SS word][event data][reserved],
# and the CS and SS words carry event information above their selectors. Bit positions of
# struct fred_cs / struct fred_ss in arch/x86/include/asm/ptrace.h (6.9+; checked in 7.2.13);
# tests/test_fred_frames.py lays frames out from the 7.2 fixture kernel's own DWARF of them.
_FRED_CS_SL_SHIFT: Final = 16          # sl:2, the stack level at event time
_FRED_CS_WFE: Final = 1 << 18          # wfe:1, IBT in WAIT_FOR_ENDBRANCH
_FRED_CS_RESERVED: Final = _MASK64 & ~((1 << 19) - 1)
_FRED_SS_STI, _FRED_SS_SWEVENT, _FRED_SS_NMI = 1 << 16, 1 << 17, 1 << 18
_FRED_SS_VECTOR_SHIFT: Final = 32      # vector:8, bits 32-39
_FRED_SS_TYPE_SHIFT: Final = 48        # type:4, bits 48-51
_FRED_SS_ENCLAVE, _FRED_SS_L, _FRED_SS_NESTED = 1 << 56, 1 << 57, 1 << 58
_FRED_SS_INSNLEN_SHIFT: Final = 60     # insnlen:4
_FRED_SS_RESERVED: Final = (0x1FFF << 19) | (0xFF << 40) | (0xF << 52) | (1 << 59)
#: Words of a FRED frame from the error-code slot up: pt_regs' last 6 + fred_info's 2.
FRED_FRAME_WORDS: Final = 8
# FRED_CONFIG_REDZONE (arch/x86/include/asm/fred.h: 1 << 6) and FRED_STACK_FRAME_RSP_MASK
# (~0x3f): an event delivered on the current stack (same stack level, CPL 0) starts at
# (RSP - 64) & ~63.
FRED_REDZONE: Final = 64
FRED_ALIGN: Final = 64
# EVENT_TYPE_* of arch/x86/include/asm/trapnr.h (6.9+).
FRED_EVENT_TYPES: Final = {0: "external interrupt", 2: "NMI", 3: "hardware exception",
                           4: "software interrupt (INT n)", 5: "privileged software exception (INT1)",
                           6: "software exception (INT3, INTO)", 7: "other (SYSCALL, SYSENTER)"}


class FredEvent(NamedTuple):
    """The event a FRED frame's CS and SS words describe."""

    cs: int
    ss: int
    vector: int
    event_type: int
    stack_level: int
    nmi: bool
    sti: bool
    swevent: bool
    long_mode: bool
    nested: bool
    insn_len: int

    @property
    def type_name(self) -> str:
        return FRED_EVENT_TYPES.get(self.event_type, f"type {self.event_type}")


def decode_fred(cs_word: int, ss_word: int) -> Optional[FredEvent]:
    """Decode the CS and SS words of a FRED frame, or ``None`` when they are not one.

    An IDT frame's CS and SS words hold the selector alone; a FRED frame's SS word always
    carries more (the L bit for 64-bit events, the vector and event type), so the two
    never read as each other. Reserved bits must be clear and vector and type agree.
    """
    cs_word &= _MASK64
    ss_word &= _MASK64
    if cs_word & _FRED_CS_RESERVED or ss_word & _FRED_SS_RESERVED or not ss_word >> 16:
        return None
    cs, ss = cs_word & 0xFFFF, ss_word & 0xFFFF
    if cs not in x86.FRAME_CS or ss not in x86.FRAME_SS:
        return None
    vector = (ss_word >> _FRED_SS_VECTOR_SHIFT) & 0xFF
    event_type = (ss_word >> _FRED_SS_TYPE_SHIFT) & 0xF
    nmi = bool(ss_word & _FRED_SS_NMI)
    if event_type not in FRED_EVENT_TYPES:
        return None
    # The vector must be one of the type: exceptions below 32, interrupts above, NMI is 2.
    if event_type == 0 and vector < _FIRST_EXTERNAL_VECTOR:
        return None
    if event_type in (3, 5, 6) and vector >= _FIRST_EXTERNAL_VECTOR:
        return None
    if (event_type == 2) != (vector == 2 and nmi):
        return None
    return FredEvent(cs=cs, ss=ss, vector=vector, event_type=event_type,
                     stack_level=(cs_word >> _FRED_CS_SL_SHIFT) & 3, nmi=nmi,
                     sti=bool(ss_word & _FRED_SS_STI), swevent=bool(ss_word & _FRED_SS_SWEVENT),
                     long_mode=bool(ss_word & _FRED_SS_L), nested=bool(ss_word & _FRED_SS_NESTED),
                     insn_len=ss_word >> _FRED_SS_INSNLEN_SHIFT)


def fred_orig_ax(raw: Optional[int], event: FredEvent) -> OrigAx:
    """The error-code slot of a FRED frame: always an error code (0 when the event has none);
    the vector is the SS word's."""
    code = None if raw is None else raw & _MASK64
    level = f", stack level {event.stack_level}" if event.stack_level else ""
    return OrigAx(code, "fred", event.vector, code,
                  f"FRED frame: vector {x86.vector_name(event.vector)}, "
                  f"{event.type_name}{level}; error code "
                  + ("outside the memory read" if code is None else f"{code:#x}"))


def fred_push_base(rsp: int) -> int:
    """Where a FRED event delivered on the current stack ends its frame: (RSP - 64) & ~63."""
    return (rsp - FRED_REDZONE) & ~(FRED_ALIGN - 1) & _MASK64


def decode_orig_ax(raw: Optional[int], encoding: Optional[str] = None) -> OrigAx:
    """Explain the word in the orig_ax / error-code slot of a frame.

    :param raw: the word, or ``None`` when it lies outside the memory read.
    :param encoding: the interrupt-vector encoding of the kernel's era,
        ``"complement"`` (2.6–5.7: ``~vector``) or ``"byte"`` (5.8+: the
        vector as a sign-extended byte), from
        :data:`dfforensics.core.kernel_facts.ORIG_AX_ENCODING`; ``None`` when the
        kernel version is unknown, in which case both readings are offered.
    """
    if raw is None:
        return OrigAx(None, "missing", None, None, "outside the memory read")
    raw &= _MASK64
    if raw == _MASK64:
        return OrigAx(raw, "none", None, None,
                      "-1: exception without error code, or a 5.8+ system vector")
    complement = ~raw & _MASK64
    as_byte = raw & 0xFF if raw >= _MASK64 - 0x7F else None
    complement_ok = _FIRST_EXTERNAL_VECTOR <= complement <= 0xFF and encoding != "byte"
    byte_ok = as_byte is not None and as_byte >= 0x80 and encoding != "complement"
    if complement_ok and not byte_ok:
        return OrigAx(raw, "irq-complement", complement, None,
                      f"~{complement:#x}: interrupt vector {complement:#x} (2.6–5.7 entry stub)")
    if byte_ok and not complement_ok:
        return OrigAx(raw, "irq-byte", as_byte, None,
                      f"interrupt vector {as_byte:#x} as a sign-extended byte (5.8+ entry stub)")
    if byte_ok and complement_ok:
        return OrigAx(raw, "irq-ambiguous", complement, None,
                      f"interrupt vector {complement:#x} (~vector, 2.6–5.7) "
                      f"or {as_byte:#x} (sign-extended byte, 5.8+)")
    if raw <= 0xFFFF:
        if encoding != "complement" and _FIRST_EXTERNAL_VECTOR <= raw <= 0x7F:
            return OrigAx(raw, "error-code", None, raw,
                          f"CPU error code {raw:#x}, or (5.8+) interrupt vector {raw:#x}")
        return OrigAx(raw, "error-code", None, raw, f"CPU error code {raw:#x}")
    return OrigAx(raw, "unknown", None, None, "not an orig_ax value of any era")


def frame_problems(rip: int, cs: int, rflags: int, rsp: int, ss: int) -> list[str]:
    """Return why five words cannot be a hardware frame (empty when they can).

    These are the crash utility's ``bt -e`` checks, made stricter: selectors
    the kernel uses, reserved RFLAGS bits clear and bit 1 set, RIP canonical and
    of the privilege CS says, RSP a plausible stack address for that privilege.
    """
    problems = []
    if cs not in x86.FRAME_CS:
        problems.append(f"CS {cs:#x} is not a kernel or user code selector")
    if ss not in x86.FRAME_SS:
        problems.append(f"SS {ss:#x} is not NULL, __KERNEL_DS or __USER_DS")
    if not x86.rflags_valid(rflags):
        problems.append(f"RFLAGS {rflags:#x} has reserved bits set or bit 1 clear")
    if cs == x86.KERNEL_CS:
        if not x86.is_kernel_address(rip):
            problems.append(f"kernel CS with non-kernel RIP {rip:#x}")
        if rsp == 0 or not x86.is_canonical(rsp):
            problems.append(f"kernel CS with impossible RSP {rsp:#x}")
    elif cs == x86.USER_CS:
        if not x86.is_plausible_user_pointer(rip):
            problems.append(f"user CS with non-user RIP {rip:#x}")
        if not x86.is_plausible_user_pointer(rsp):
            problems.append(f"user CS with non-user RSP {rsp:#x}")
    elif cs == x86.USER32_CS:
        if not 0 < rip < 1 << 32 or not 0 < rsp < 1 << 32:
            problems.append("compat CS with a RIP or RSP above 4 GiB")
    return problems


def words_to_bytes(words: Sequence[Optional[int]]) -> bytes:
    """Pack 64-bit words little-endian; unknown words (``None``) become 0."""
    return b"".join(_WORD.pack((word or 0) & _MASK64) for word in words)


def scan_frames(
    data: Union[bytes, bytearray, memoryview],
    start: int,
    stack: Union[StackKind, str, None] = None,
    encoding: Optional[str] = None,
    include_inconsistent: bool = True,
    entry_return_below: Optional[int] = None,
) -> Iterator[Frame]:
    """Yield the interrupt/exception frames found in a stack region.

    :param data: the region's bytes, little-endian, starting at ``start``.
    :param start: address of the first byte; must be 8-byte aligned.
    :param stack: what memory this is (a :class:`StackKind` or its value); by
        default guessed from ``start`` (lower canonical half means user).
    :param encoding: orig_ax encoding of the kernel's era, see
        :func:`decode_orig_ax`.
    :param include_inconsistent: also yield valid frames whose saved RSP does
        not point just above them (stack-switch entries, copies).
    :param entry_return_below: how far below a frame's orig_ax slot the word under
        its pt_regs lies (``offsetof(struct pt_regs, orig_ax) + 8``, from the
        kernel's debug info), to record it as :attr:`Frame.entry_return`.
    :raises ValueError: if ``start`` is not 8-byte aligned.

    Frames are yielded from low to high address. The orig_ax slot of a frame
    whose RIP is the region's first word is reported as missing.
    """
    if start % 8:
        raise ValueError(f"stack region start {start:#x} is not 8-byte aligned")
    if stack is None:
        stack = StackKind.USER if x86.is_user_address(start) else StackKind.KERNEL
    stack = StackKind(stack)
    view = memoryview(data)
    usable = len(view) - len(view) % 8
    last_rip_offset = usable - 8 * x86.HW_FRAME_WORDS
    for match in _CS_WORD_RE.finditer(view[:usable]):
        cs_offset = match.start()
        rip_offset = cs_offset - 8
        if cs_offset % 8 or rip_offset < 0 or rip_offset > last_rip_offset:
            continue
        rip, cs, rflags, rsp, ss = struct.unpack_from("<5Q", view, rip_offset)
        fred = None
        if frame_problems(rip, cs, rflags, rsp, ss):
            # Not an IDT frame; a FRED frame's CS/SS words carry the event above the selector.
            fred = decode_fred(cs, ss)
            if fred is None or frame_problems(rip, fred.cs, rflags, rsp, fred.ss):
                continue
            cs, ss = fred.cs, fred.ss
            # Its 8 words end FRED_FRAME_WORDS - 1 words above the RIP slot's word below.
            frame_top = start + rip_offset - 8 + 8 * FRED_FRAME_WORDS
            consistent = fred_push_base(rsp) == frame_top
        else:
            frame_top = start + rip_offset + 8 * x86.HW_FRAME_WORDS
            consistent = x86.aligned_push_base(rsp) == frame_top
        if not consistent and not include_inconsistent:
            continue
        orig_ax = _WORD.unpack_from(view, rip_offset - 8)[0] if rip_offset >= 8 else None
        trail_offset = rip_offset - 8 - entry_return_below if entry_return_below is not None else -1
        entry_return = _WORD.unpack_from(view, trail_offset)[0] if trail_offset >= 0 and not fred else None
        yield Frame(
            address=start + rip_offset - 8,
            stack=stack,
            kind=FrameKind.of(stack, consistent),
            orig_ax=fred_orig_ax(orig_ax, fred) if fred else decode_orig_ax(orig_ax, encoding),
            rip=rip,
            cs=cs,
            rflags=rflags,
            rsp=rsp,
            ss=ss,
            consistent=consistent,
            impossible_ss=impossible_ss(cs, ss),
            entry_return=entry_return,
        )
