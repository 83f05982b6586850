"""
Kernel facts by version
-----------------------

Every fact about the x86_64 kernel that changed between versions lives here, as
data: each :class:`Fact` carries the value, the first version it holds for, the
first version it no longer holds for, and where it comes from. The kernel
release is parsed once per input (:func:`parse_release`); code asks
:func:`value_for` (the one value of a known version) or :func:`candidates` (the
order to probe in) instead of testing versions itself, and the drgn layer still
probes the debug info (``try``/``except LookupError``) in the order these tables
give, because distributions backport changes.

Pure: no drgn.
"""

import re
from dataclasses import dataclass
from typing import Final, Generic, Iterable, Optional, Sequence, Tuple, TypeVar

__all__ = (
    "Version",
    "Fact",
    "parse_release",
    "value_for",
    "candidates",
    "ORIG_AX_ENCODING",
    "TSS_PERCPU_SYMBOL",
    "DF_IST_INDEX",
    "DF_HANDLER",
    "DF_CR2_LOCAL",
    "SYSCALL_ENTRY_WINDOW",
    "SYSRET_SS_WORKAROUND",
    "I386_PAGE_OFFSET",
    "I386_SYSCALL_ENTRY",
    "X86_64_EARLY_DIRECT_MAP",
    "X86_64_EARLY_LAYOUT_UNTIL",
    "HYPERVISOR_FIXES",
)

Version = Tuple[int, ...]
T = TypeVar("T")


@dataclass(frozen=True)
class Fact(Generic[T]):
    """One version-dependent fact: ``value`` holds for ``since <= v < until``."""

    value: T
    since: Version
    until: Optional[Version]
    source: str

    def holds_for(self, version: Version) -> bool:
        """Return whether this fact holds for a kernel version."""
        return self.since <= version and (self.until is None or version < self.until)



_RELEASE_RE: Final = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_release(release: str) -> Optional[Version]:
    """Parse a kernel release such as ``"3.16.39kmemleak"`` into ``(3, 16, 39)``.

    Returns ``None`` when the text holds no version.
    """
    match = _RELEASE_RE.search(release)
    if not match:
        return None
    return tuple(int(part) for part in match.groups(default="0"))


def _newest_first(table: Iterable[Fact[T]]) -> list[Fact[T]]:
    return sorted(table, key=lambda fact: fact.since, reverse=True)


def value_for(table: Iterable[Fact[T]], version: Optional[Version]) -> Optional[T]:
    """Return the value a table gives for a kernel version.

    ``None`` when the version is unknown or no row holds for it: callers that
    must act anyway probe in the order of :func:`candidates`.
    """
    if version is None:
        return None
    holding = [fact.value for fact in table if fact.holds_for(version)]
    return holding[0] if holding else None


def candidates(table: Sequence[Fact[T]], version: Optional[Version]) -> list[T]:
    """Return the values to try for a version: the facts that hold first, then the rest.

    Distributions backport layout changes, so a probe should still fall back
    to the other eras' names when the expected one is missing.
    """
    rest = [fact.value for fact in _newest_first(table)]
    first = [fact.value for fact in table if version is not None and fact.holds_for(version)]
    ordered: list[T] = []
    for value in first + rest:
        if value not in ordered:
            ordered.append(value)
    return ordered


# What the entry code leaves in the orig_ax slot of an external interrupt.
ORIG_AX_ENCODING: Final[Sequence[Fact[str]]] = (
    Fact(
        "complement",
        (2, 6, 0),
        (5, 8),
        "entry_64.S irq_entries_start pushes ~vector+0x80 and common_interrupt adds "
        "-0x80, leaving ~vector; apicinterrupt system vectors push ~vector",
    ),
    Fact(
        "byte",
        (5, 8),
        None,
        "IDTENTRY_IRQ (5.8, 'x86/entry: Convert device interrupts to inline stack "
        "switching' series): irq_entries_start pushes the vector as a sign-extended "
        "imm8; system vectors push -1",
    ),
)

# The per-CPU variable holding the TSS, whose ist[] gives the #DF stack top.
TSS_PERCPU_SYMBOL: Final[Sequence[Fact[str]]] = (
    Fact("init_tss", (2, 6, 0), (4, 1), "arch/x86/kernel/process.c DEFINE_PER_CPU_SHARED_ALIGNED(init_tss)"),
    Fact("cpu_tss", (4, 1), (4, 15), "renamed by 'x86/asm/entry: Rename 'init_tss' to 'cpu_tss'' (4.1)"),
    Fact("cpu_tss_rw", (4, 15), None, "'x86/entry: Move SYSENTER_stack to the beginning of struct tss_struct' / cpu_entry_area (4.15)"),
)

# Zero-based index into tss.ist[] of the double-fault stack. The IDT gate of
# vector 8 names it directly (its IST field is index + 1); prefer reading the
# gate, because the 3.x change was backported to many stable branches.
DF_IST_INDEX: Final[Sequence[Fact[int]]] = (
    Fact(1, (2, 6, 0), (3, 18), "DOUBLEFAULT_STACK 2 (after STACKFAULT_STACK 1) before 'x86_64, traps: Stop using IST for #SS' (CVE-2014-9090, 3.18, backported to stable 3.x)"),
    Fact(0, (3, 18), (5, 2), "DOUBLEFAULT_STACK 1 after 'x86_64, traps: Stop using IST for #SS'"),
    Fact(0, (5, 2), None, "IST_INDEX_DF 0 ('x86/exceptions: Make IST index zero based', 5.2)"),
)

# The C handler of #DF, as a stack trace through it names it.
DF_HANDLER: Final[Sequence[Fact[str]]] = (
    Fact("do_double_fault", (2, 6, 0), (5, 8), "arch/x86/kernel/traps.c dotraplinkage void do_double_fault()"),
    Fact("exc_double_fault", (5, 8), None, "DEFINE_IDTENTRY_DF(exc_double_fault) (5.8 IDTENTRY rework)"),
)

# The local of the #DF handler that holds CR2 as read at the #DF: the
# faulting address when the CPU's own push faulted.
DF_CR2_LOCAL: Final[Sequence[Fact[str]]] = (
    Fact("cr2", (5, 5), (5, 8), "do_double_fault(regs, error_code, cr2) (5.5–5.7)"),
    Fact("address", (5, 8), None, "exc_double_fault: 'unsigned long address = read_cr2();' (seen on 6.1)"),
)

# Entry and exit code that runs on the *user* RSP at CPL 0 by design: SYSCALL
# does not switch stacks, so until the entry code loads the task stack (and
# after the exit code restores the user RSP before SYSRET), a #DF here has a
# user RSP for reasons that have nothing to do with the hypervisor.
SYSCALL_ENTRY_WINDOW: Final[Sequence[Fact[frozenset[str]]]] = (
    Fact(
        frozenset({"system_call", "system_call_after_swapgs", "native_usergs_sysret64",
                   "ia32_cstar_target", "ia32_sysenter_target", "ia32_syscall"}),
        (2, 6, 0), (4, 2),
        "entry_64.S / ia32entry.S of 2.6–4.1",
    ),
    Fact(
        frozenset({"entry_SYSCALL_64", "entry_SYSCALL_64_after_swapgs", "entry_SYSCALL_64_trampoline",
                   "entry_SYSCALL_64_stage2", "native_usergs_sysret64", "syscall_return_via_sysret",
                   "entry_SYSCALL_compat", "entry_SYSENTER_compat"}),
        (4, 2), (5, 0),
        "entry_64.S renamed in 4.2 ('x86/asm/entry/64: Rename system_call to entry_SYSCALL_64'); PTI trampoline 4.15",
    ),
    Fact(
        frozenset({"entry_SYSCALL_64", "entry_SYSCALL_64_safe_stack", "syscall_return_via_sysret",
                   "entry_SYSRETQ_unsafe_stack", "entry_SYSRETQ_end", "entry_SYSCALL_compat",
                   "entry_SYSENTER_compat", "entry_SYSRETL_compat_unsafe_stack", "entry_SYSRETL_compat_end"}),
        (5, 0), None,
        "entry_64.S / entry_64_compat.S of 5.x–6.x",
    ),
)

# X86_BUG_SYSRET_SS_ATTRS: without it, an AMD CPU returning to user mode with
# SYSRET after SS was NULL leaves SS "unusable" (P clear) in user mode, which
# is the state the hypervisor mishandled in the seed report.
SYSRET_SS_WORKAROUND: Final[Sequence[Fact[bool]]] = (
    Fact(False, (2, 6, 0), (4, 1), "no workaround before 4.1"),
    Fact(True, (4, 1), None, "'x86_64, asm: Work around AMD SYSRET SS descriptor attribute issue' (4.1), set by init_amd()"),
)

# SYSENTER/SYSCALL entry of i386 kernels, which starts on the stack the
# SYSENTER_ESP MSR names.
I386_SYSCALL_ENTRY: Final = frozenset({
    "entry_SYSENTER_32", "__begin_SYSENTER_singlestep_region", "ia32_sysenter_target",
    "sysenter_entry", "sysenter_past_esp", "entry_INT80_32",
})

# x86_64 kernels before 2.6.11 used 3-level paging: user space ended at
# 0x8000000000 (512 GiB) and the direct map started at PAGE_OFFSET
# 0x10000000000, so their kernel stacks lie below 0x800000000000. Seen in a
# real 2.6.9 log (tests/data/logs/2.6.9-*: "threadinfo 0000010014062000");
# 4-level paging and PAGE_OFFSET 0xffff810000000000 came with 2.6.11
# (include/asm-x86_64/page.h; the header value itself is unverified here).
X86_64_EARLY_DIRECT_MAP: Final = (0x0000010000000000, 0x0000800000000000)
X86_64_EARLY_LAYOUT_UNTIL: Final = (2, 6, 11)

# i386 kernels put kernel space at PAGE_OFFSET (VMSPLIT_3G default): their
# kernel stack addresses lie far below 0x800000000000 and must not be taken
# for user stack pointers.
I386_PAGE_OFFSET: Final = 0xC0000000

HYPERVISOR_FIXES: Final = (
    "KVM: 'KVM: SVM: do not zero out segment attributes if segment is unusable or not present' "
    "(Roman Pen, 2017; stable backports e.g. 4.4.132)",
    "QEMU: 'i386/kvm: do not zero out segment flags if segment is unusable or not present' "
    "(Roman Pen, 2017; title unverified, the fix is in current QEMU's get_seg())",
)
