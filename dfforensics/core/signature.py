"""
The marks of the signature
--------------------------

Each mark of the CPL-corruption signature, defined once and used by name by
the frame decoder, the verdict rules, the renderers and the drgn layer (which
uses them to choose what to read, never to judge). Pure: no drgn.
"""

from typing import Optional

from dfforensics.core import x86
from dfforensics.core.model import Frame, StackKind

__all__ = (
    "kernel_cs_with_foreign_ss",
    "user_cs_with_kernel_ss",
    "impossible_ss",
    "proves_cpl0_delivery",
    "cr2_at_first_push_slot",
    "entry_trail_shown",
)


def kernel_cs_with_foreign_ss(cs: int, ss: int) -> bool:
    """Kernel code saved with an SS other than NULL (event from user mode) or
    __KERNEL_DS (SYSCALL): a healthy 64-bit kernel never has that pair."""
    return x86.is_kernel_cs(cs) and ss not in x86.healthy_kernel_ss(cs)


def user_cs_with_kernel_ss(cs: int, ss: int) -> bool:
    """User code (CS RPL 3) saved with an SS of RPL 0: the CPU refuses to run
    user code with such an SS, so the state was made at CPL 0."""
    return x86.is_user_cs(cs) and x86.rpl(ss) != 3


def impossible_ss(cs: Optional[int], ss: Optional[int]) -> bool:
    """Saved state with an SS that a healthy kernel never has with that CS
    (False when either is unknown)."""
    if cs is None or ss is None:
        return False
    return kernel_cs_with_foreign_ss(cs, ss) or user_cs_with_kernel_ss(cs, ss)


def proves_cpl0_delivery(frame: Frame) -> bool:
    """Whether one frame alone proves an event delivered at CPL 0 with user state:
    self-consistent on a user stack (pushed without a stack switch), or saved
    with an impossible SS on any stack."""
    return (frame.stack is StackKind.USER and frame.consistent) or frame.impossible_ss


def cr2_at_first_push_slot(cr2: Optional[int], rsp: Optional[int]) -> bool:
    """Whether CR2 is the first slot the CPU pushes to below RSP: its own push faulted."""
    return cr2 is not None and rsp is not None and cr2 == x86.first_push_slot(rsp)


def entry_trail_shown(frame: Frame, caller: Optional[str]) -> Optional[bool]:
    """Whether the word below the frame's pt_regs is the return address the kernel's
    entry code leaves there (``caller``: ``error_entry``, or the ``asm_`` idtentry
    stubs' prefix, by kernel version). None when it cannot tell: the version's entry
    code is not known, the word was not read, or the frame is a FRED one."""
    if caller is None or frame.entry_return is None:
        return None
    name = frame.entry_return_symbol
    if name is None:
        return False
    function = name.split("+", 1)[0]
    return function.startswith(caller) if caller.endswith("_") else function == caller
