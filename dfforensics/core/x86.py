"""
x86_64 hardware facts
---------------------

Selectors, RFLAGS rules, address ranges and the interrupt-frame layout that
every kernel version shares. Pure: no drgn. Facts that differ between kernel
versions live in :mod:`dfforensics.core.kernel_facts`, not here.

Sources: Intel SDM Vol. 3A §6.14 "Exception and interrupt handling in 64-bit
mode" (frame layout, 16-byte alignment, stack switch rules); the kernel's
``arch/x86/include/asm/segment.h`` (GDT layout, unchanged since 2.6.24);
the crash utility's ``x86_64.c`` (RFLAGS reserved mask used by ``bt -e``).
"""

from typing import Final, Iterable

__all__ = (
    "KERNEL32_CS",
    "KERNEL_CS",
    "KERNEL_DS",
    "USER32_CS",
    "USER_DS",
    "USER_CS",
    "FRAME_CS",
    "FRAME_SS",
    "HEALTHY_KERNEL_SS",
    "XEN_PV_KERNEL_CS",
    "XEN_PV_KERNEL_SS",
    "is_kernel_cs",
    "is_user_cs",
    "healthy_kernel_ss",
    "implies_la57",
    "RFLAGS_RESERVED_MASK",
    "RFLAGS_FIXED_BIT",
    "HW_FRAME_WORDS",
    "PTE_PRESENT",
    "PTE_HUGE",
    "PTE_ADDRESS_MASK",
    "START_KERNEL_MAP",
    "MMAP_MIN_ADDR",
    "selector_name",
    "rpl",
    "is_canonical",
    "is_user_address",
    "is_kernel_address",
    "is_plausible_user_pointer",
    "rflags_valid",
    "rflags_names",
    "first_push_slot",
    "aligned_push_base",
    "vector_name",
)

# 64-bit GDT selectors (segment.h, GDT_ENTRY_* << 3 | RPL).
KERNEL32_CS: Final = 0x08
KERNEL_CS: Final = 0x10
KERNEL_DS: Final = 0x18
USER32_CS: Final = 0x23
USER_DS: Final = 0x2B
USER_CS: Final = 0x33

_SELECTOR_NAMES: Final = {
    0x00: "NULL",
    KERNEL32_CS: "__KERNEL32_CS",
    KERNEL_CS: "__KERNEL_CS",
    KERNEL_DS: "__KERNEL_DS",
    USER32_CS: "__USER32_CS",
    USER_DS: "__USER_DS",
    USER_CS: "__USER_CS",
}

# What a CPU-pushed frame of a 64-bit Linux kernel can hold: the CS of kernel,
# 64-bit user and compat user code; SS NULL (events from CPL 3 load a NULL SS),
# __KERNEL_DS (SYSCALL loads it) or __USER_DS (user mode).
FRAME_CS: Final = frozenset({KERNEL_CS, USER32_CS, USER_CS})
FRAME_SS: Final = frozenset({0x00, KERNEL_DS, USER_DS})

# SS values a healthy kernel has while it runs at CPL 0. Anything else saved
# with CS 0x10 means an event was delivered at CPL 0 with user segment state.
HEALTHY_KERNEL_SS: Final = frozenset({0x00, KERNEL_DS})

# A 64-bit Xen PV guest kernel runs in ring 3 on Xen's flat selectors
# (xen/include/public/arch-x86/xen-x86_64.h: FLAT_RING3_CS64 0xe033,
# FLAT_RING3_SS64 0xe02b); Linux prints its saved kernel CS with RPL 0
# (e030), the live CS as e033. Kernel state there is CS e030/e033 with SS
# e02b (or NULL): normal, not an impossible SS. Guest user mode keeps the
# guest's own 0x33/0x2b.
XEN_PV_KERNEL_CS: Final = frozenset({0xE030, 0xE033})
XEN_PV_KERNEL_SS: Final = frozenset({0x00, 0xE02B})

# Reserved RFLAGS bits (3, 5, 15, 22-63) must be clear and bit 1 set: the
# crash utility's check for a plausible saved RFLAGS.
RFLAGS_RESERVED_MASK: Final = 0xFFFFFFFFFFC08028
RFLAGS_FIXED_BIT: Final = 0x2
# VM (bit 17) cannot be set in a frame saved in 64-bit mode; checking it makes
# us stricter than crash at no cost.
RFLAGS_VM: Final = 1 << 17

_RFLAGS_BITS: Final = (
    (0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
    (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
    (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"),
)

# The hardware part of a frame: RIP, CS, RFLAGS, RSP, SS (low to high).
HW_FRAME_WORDS: Final = 5
# 4-level page-table entry bits (SDM Vol. 3A §4.5) and the kernel text
# mapping base __START_KERNEL_map (every x86_64 kernel).
PTE_PRESENT: Final = 0x1
PTE_HUGE: Final = 0x80
PTE_ADDRESS_MASK: Final = 0x000FFFFFFFFFF000
START_KERNEL_MAP: Final = 0xFFFFFFFF80000000

# Lowest address user space can map with the kernel's default
# vm.mmap_min_addr (CONFIG_DEFAULT_MMAP_MIN_ADDR = 65536 on x86 since 2.6.31).
# A stack pointer below it is not a user stack.
MMAP_MIN_ADDR: Final = 0x10000

_USER_TOP_4LEVEL: Final = 0x0000_8000_0000_0000
_KERNEL_BOTTOM_4LEVEL: Final = 0xFFFF_8000_0000_0000
_USER_TOP_5LEVEL: Final = 0x0100_0000_0000_0000
_KERNEL_BOTTOM_5LEVEL: Final = 0xFF00_0000_0000_0000

_VECTOR_NAMES: Final = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD",
    7: "#NM", 8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP",
    14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE",
    21: "#CP", 29: "#VC", 0x80: "int 0x80",
}


def selector_name(selector: int) -> str:
    """Return the kernel's name for a 64-bit GDT selector, or its hex value."""
    return _SELECTOR_NAMES.get(selector, f"{selector:#x}")


def rpl(selector: int) -> int:
    """Return the requested privilege level (low two bits) of a selector."""
    return selector & 3


def is_kernel_cs(selector: int) -> bool:
    """Return whether a saved CS is a kernel's: __KERNEL_CS, or a Xen PV kernel's ring-3 CS."""
    return selector == KERNEL_CS or selector in XEN_PV_KERNEL_CS


def is_user_cs(selector: int) -> bool:
    """Return whether a saved CS is user code (RPL 3 and not a Xen PV kernel's CS)."""
    return rpl(selector) == 3 and selector not in XEN_PV_KERNEL_CS


def healthy_kernel_ss(cs: int) -> frozenset[int]:
    """Return the SS values a healthy kernel saves with a kernel CS."""
    return XEN_PV_KERNEL_SS if cs in XEN_PV_KERNEL_CS else HEALTHY_KERNEL_SS


def implies_la57(addresses: Iterable[int]) -> bool:
    """Return whether addresses only 5-level paging makes canonical are among them.

    With LA57 the kernel half starts at 0xff00000000000000 (direct map at
    0xff11000000000000, Documentation/arch/x86/x86_64/mm.rst); under 4-level
    paging such an address is non-canonical, so seeing one printed as a live
    kernel pointer means the machine ran with 5-level paging.
    """
    return any(_KERNEL_BOTTOM_5LEVEL <= a < _KERNEL_BOTTOM_4LEVEL for a in addresses)


def is_canonical(address: int, la57: bool = False) -> bool:
    """Return whether a 64-bit address is canonical (4- or 5-level paging)."""
    bits = 57 if la57 else 48
    top = address >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def is_user_address(address: int, la57: bool = False) -> bool:
    """Return whether an address lies in the lower (user) canonical half."""
    return 0 <= address < (_USER_TOP_5LEVEL if la57 else _USER_TOP_4LEVEL)


def is_kernel_address(address: int, la57: bool = False) -> bool:
    """Return whether an address lies in the upper (kernel) canonical half."""
    return (_KERNEL_BOTTOM_5LEVEL if la57 else _KERNEL_BOTTOM_4LEVEL) <= address < 1 << 64


def is_plausible_user_pointer(address: int, la57: bool = False) -> bool:
    """Return whether an address could be in a user mapping at all.

    Below ``vm.mmap_min_addr`` nothing can be mapped, so such a "user" address
    is a wild pointer, not a user stack.
    """
    return MMAP_MIN_ADDR <= address and is_user_address(address, la57)


def rflags_valid(rflags: int) -> bool:
    """Return whether a saved RFLAGS value can have been pushed in 64-bit mode."""
    return (
        0 <= rflags < 1 << 64
        and rflags & RFLAGS_RESERVED_MASK == 0
        and rflags & RFLAGS_FIXED_BIT != 0
        and rflags & RFLAGS_VM == 0
    )


def rflags_names(rflags: int) -> str:
    """Return the set flags of an RFLAGS value as text, e.g. ``"IF"``."""
    names = [name for bit, name in _RFLAGS_BITS if rflags >> bit & 1]
    iopl = rflags >> 12 & 3
    if iopl:
        names.append(f"IOPL={iopl}")
    return " ".join(names) or "-"


def aligned_push_base(rsp: int) -> int:
    """Return where the CPU starts pushing an event frame for a given RSP.

    In 64-bit mode the CPU aligns RSP down to 16 bytes before it pushes
    SS:RSP (SDM Vol. 3A §6.14.2), whether or not it switched stacks.
    """
    return rsp & ~0xF


def first_push_slot(rsp: int) -> int:
    """Return the address of the CPU's first push (SS) for a given RSP.

    When that push faults, CR2 holds exactly this address.
    """
    return aligned_push_base(rsp) - 8


def vector_name(vector: int) -> str:
    """Return a short name for an interrupt vector (exception mnemonic or hex)."""
    name = _VECTOR_NAMES.get(vector)
    return f"{vector:#04x} ({name})" if name else f"{vector:#04x}"
