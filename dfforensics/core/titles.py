"""
Titles and dedup keys
---------------------

A stable one-line title for each answer, and a key that groups the same event
across dumps, as syzkaller titles and ABRT/satyr duphashes do, fitted to this
signature: syzkaller's "PANIC: double fault in <RIP function>" groups badly when
RIP is a user address (every binary offset is a new bug), so a CPL-corruption
title names the user binary and vector, and its key leaves the offset out.
Pure: no drgn.
"""

from typing import Optional, Sequence

from dfforensics.core import x86
from dfforensics.core.model import DfClass, DoubleFault, Frame, Verdict
from dfforensics.core.signature import proves_cpl0_delivery

# CPython's own SHA-256, the one hashlib falls back to: hashlib would load OpenSSL first
# (3-4 ms of a 0.12 s verdict) for one 16-character key. The digest is the same.
try:
    from _sha256 import sha256  # Python 3.11
except ImportError:  # pragma: no cover - renamed _sha2 in 3.12
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

__all__ = ("title_and_key",)


def _function(symbol: Optional[str], address: Optional[int]) -> str:
    """``exc_page_fault+0x19/0x60 [mod]`` -> ``exc_page_fault``; user code by its binary."""
    if address is not None and x86.is_user_address(address):
        binary, _ = _binary_and_offset(symbol)
        return f"user code ({binary})" if symbol else "user code"
    if symbol:
        return symbol.split("+", 1)[0].split()[0]
    return f"{address:#x}" if address is not None else "unknown"


def _binary_and_offset(symbol: Optional[str]) -> tuple[str, str]:
    """``/victim+0x17c7`` -> (``victim``, ``0x17c7``): the basename groups one binary's builds."""
    if not symbol or "+" not in symbol:
        return "unknown", ""
    path, offset = symbol.rsplit("+", 1)
    return path.rsplit("/", 1)[-1] or path, offset


def _vector(frame: Frame) -> str:
    # 5.8+ system vectors and exceptions without an error code save -1: no vector in memory.
    return "not saved" if frame.vector is None else f"{frame.vector:#04x}"


def _key(*parts: str) -> str:
    return sha256("\0".join(parts).encode()).hexdigest()[:16]


def title_and_key(verdict: Verdict, df_class: Optional[DfClass], chosen: Optional[DoubleFault],
                  frames: Sequence[Frame], other_crash: Optional[str]) -> tuple[str, str]:
    """The title and dedup key of an answer.

    :param chosen: the deciding #DF, if any.
    :param frames: the frames found (the first one that proves CPL-0 delivery names the event).
    :param other_crash: what the input shows when it holds no #DF.
    """
    proving = [frame for frame in frames if proves_cpl0_delivery(frame)]
    if df_class is DfClass.CPL_CORRUPTION and proving:
        binary, offset = _binary_and_offset(proving[0].rip_symbol)
        vector = _vector(proving[0])
        where = f"{binary}+{offset}" if offset else f"RIP {proving[0].rip:#x}"
        prefix = "cpl-corruption" if verdict is Verdict.MATCH else "possible cpl-corruption"
        return (f"{prefix}: CPL-0 event delivered onto a user stack ({where}, vector {vector})",
                _key("cpl-corruption", binary, vector))
    if chosen is not None:
        regs = chosen.regs
        function = _function(regs.rip_symbol, regs.rip)
        cls = chosen.df_class.value if chosen.df_class else "double-fault"
        if chosen.verdict is Verdict.POSSIBLE:
            return (f"possible {cls}: double fault in {function}", _key("possible", cls, function))
        return f"{cls} in {function}", _key(cls, function)
    crash = other_crash or "no crash"
    return f"no-double-fault: {crash}", _key("no-double-fault", crash)
