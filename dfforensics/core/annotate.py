"""
Annotated stack words
---------------------

The words around the saved RSP and around each frame, each with what it is,
the way the seed report's authors annotated their ``crash> rd -s`` output.
Pure: no drgn; the caller supplies the words and a namer for addresses.
"""

from typing import Callable, Iterable, Mapping, Optional

from dfforensics.core import x86
from dfforensics.core.model import AnnotatedWord, Frame

__all__ = ("annotate",)

_SLOTS = ("orig_ax", "RIP", "CS", "RFLAGS", "RSP", "SS")


def _frame_slot_notes(frame: Frame, name: Callable[[int], Optional[str]]) -> dict[int, str]:
    where = f"frame @{frame.address:x}"
    rip_name = frame.rip_symbol or name(frame.rip)
    notes = {
        frame.address: f"{where} orig_ax: {frame.orig_ax.meaning}",
        frame.address + 8: f"{where} RIP" + (f" {rip_name}" if rip_name else ""),
        frame.address + 16: f"{where} CS {x86.selector_name(frame.cs)}",
        frame.address + 24: f"{where} RFLAGS {x86.rflags_names(frame.rflags)}",
        frame.address + 32: f"{where} RSP" + (" (points just above this frame: no stack switch)"
                                             if frame.consistent else ""),
        frame.address + 40: f"{where} SS {x86.selector_name(frame.ss)}"
                            + (" (impossible with this CS)" if frame.impossible_ss else ""),
    }
    return notes


def _describe(value: Optional[int], name: Callable[[int], Optional[str]]) -> str:
    if value is None:
        return "cannot be read from the dump"
    if value == 0:
        return ""
    label = name(value)
    if label is None:
        return ""
    return ("kernel text/data: " if x86.is_kernel_address(value) else "points into ") + label


def annotate(
    words: Mapping[int, Optional[int]],
    frames: Iterable[Frame],
    name: Callable[[int], Optional[str]],
    marks: Optional[Mapping[int, str]] = None,
) -> list[AnnotatedWord]:
    """Annotate stack words.

    :param words: address -> value (``None`` where the page is missing).
    :param frames: frames found in those words; their slots are labelled.
    :param name: names an address (symbol+offset or mapping+offset) or ``None``.
    :param marks: extra labels by address, e.g. the saved RSP or CR2.
    """
    notes: dict[int, str] = {}
    for frame in frames:
        notes.update(_frame_slot_notes(frame, name))
    result = []
    for address in sorted(words):
        value = words[address]
        parts = [part for part in (notes.get(address), (marks or {}).get(address)) if part]
        if address not in notes:
            described = _describe(value, name)
            if described:
                parts.append(described)
        result.append(AnnotatedWord(address, value, "; ".join(parts)))
    return result
