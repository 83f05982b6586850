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
    "TOP_OF_KERNEL_STACK_PADDING_FRED",
    "FRED_ENTRY_SYMBOL",
    "TOP_OF_STACK_PERCPU",
    "CURRENT_TASK_PERCPU",
    "CEA_RANDOMIZED",
    "FRED_DEFAULT",
    "ENTRY_TRAIL_CALLER",
    "VMCOREINFO_KALLSYMS",
    "KALLSYMS_LAYOUT",
    "KALLSYMS_LONG_NAMES",
    "ORC_REG_PREV_SP",
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


# --- Issue 20: kernel generations 5.10 to 7.2, and FRED -------------------------------

# TOP_OF_KERNEL_STACK_PADDING of an x86_64 kernel built with CONFIG_X86_FRED=y: the bytes
# reserved above the user-entry pt_regs at the top of every task stack, so that
# task_pt_regs() = stack + THREAD_SIZE - padding - sizeof(struct pt_regs). Without
# CONFIG_X86_FRED it stays 0 in every version (arch/x86/include/asm/thread_info.h); whether a
# kernel has FRED built in is read from its symbols (FRED_ENTRY_SYMBOL), and the drgn layer
# first measures the padding from the per-CPU top of stack (TOP_OF_STACK_PERCPU).
TOP_OF_KERNEL_STACK_PADDING_FRED: Final[Sequence[Fact[int]]] = (
    Fact(0, (2, 6, 0), (6, 9), "x86_64 'define TOP_OF_KERNEL_STACK_PADDING 0' (no FRED before 6.9)"),
    Fact(16, (6, 9), None,
         "65c9cc9e2c14 'x86/fred: Reserve space for the FRED stack frame' (6.9): "
         "'ifdef CONFIG_X86_FRED / define TOP_OF_KERNEL_STACK_PADDING (2 * 8)'; checked in 7.2.13's "
         "arch/x86/include/asm/thread_info.h"),
)

# A symbol only a CONFIG_X86_FRED=y kernel has (arch/x86/entry/Makefile:
# obj-$(CONFIG_X86_FRED) += entry_64_fred.o entry_fred.o).
FRED_ENTRY_SYMBOL: Final = "asm_fred_entrypoint_user"

# Where the scheduler keeps the running task's top of stack (task_top_of_stack(), i.e.
# task_pt_regs() + 1) on x86_64: (per-CPU symbol, member path or "" for the variable itself).
TOP_OF_STACK_PERCPU: Final[Sequence[Fact[tuple[str, str]]]] = (
    Fact(("cpu_tss_rw", "x86_tss.sp1"), (4, 15), (5, 13),
         "'define cpu_current_top_of_stack cpu_tss_rw.x86_tss.sp1' (checked in 5.10.223's "
         "arch/x86/include/asm/processor.h)"),
    Fact(("cpu_current_top_of_stack", ""), (5, 13), (6, 2),
         "1591584e2e76 'x86/process/64: Move cpu_current_top_of_stack out of TSS' (5.13); seen in "
         "the 6.1 fixture's symbols"),
    Fact(("pcpu_hot", "top_of_stack"), (6, 2), (6, 15),
         "e57ef2ed97c1 'x86: Put hot per CPU variables into a struct' and c063a217bc07 "
         "'x86/percpu: Move current_top_of_stack next to current_task' (6.2); seen in the 6.12 fixture"),
    Fact(("cpu_current_top_of_stack", ""), (6, 15), None,
         "648e4e21fa7e 'x86/percpu: Move top_of_stack to percpu hot section' (6.15, pcpu_hot "
         "removed); checked in 7.2.13's arch/x86/kernel/cpu/common.c"),
)

# Where the running task pointer lives per CPU: (per-CPU symbol, member or "").
CURRENT_TASK_PERCPU: Final[Sequence[Fact[tuple[str, str]]]] = (
    Fact(("current_task", ""), (2, 6, 20), (6, 2), "DEFINE_PER_CPU(struct task_struct *, current_task) "
         "(checked in 5.10.223; seen in the 6.1 fixture's symbols)"),
    Fact(("pcpu_hot", "current_task"), (6, 2), (6, 15), "e57ef2ed97c1 'x86: Put hot per CPU variables into a struct' (6.2)"),
    Fact(("current_task", ""), (6, 15), None,
         "f19a605f4334 'x86/percpu: Move current_task to percpu hot section' (6.15, pcpu_hot "
         "removed); checked in 7.2.13: DEFINE_PER_CPU_CACHE_HOT(struct task_struct *, current_task)"),
)

# Whether each CPU's cpu_entry_area (its #DF IST stack among them) lies at a randomised
# per-boot slot (_cea_offset) rather than at CPU_ENTRY_AREA_BASE + cpu * its size: the #DF
# stack top must be read from the TSS, never computed from the CPU number.
CEA_RANDOMIZED: Final[Sequence[Fact[bool]]] = (
    Fact(False, (4, 15), (6, 2), "get_cpu_entry_area(): CPU_ENTRY_AREA_PER_CPU + cpu * CPU_ENTRY_AREA_SIZE "
         "(4.15 PTI rework; checked in 5.10.223's arch/x86/mm/cpu_entry_area.c)"),
    Fact(True, (6, 2), None, "97e3d26b5e5f 'x86/mm: Randomize per-cpu entry area' (6.2; CVE-2023-0597): "
         "per-CPU _cea_offset, checked in 7.2.13's arch/x86/mm/cpu_entry_area.c"),
)

# FRED event delivery: absent, built but opt-in (fred=on), or on where the CPU has it.
FRED_DEFAULT: Final[Sequence[Fact[str]]] = (
    Fact("absent", (2, 6, 0), (6, 9), "no CONFIG_X86_FRED before 6.9"),
    Fact("opt-in", (6, 9), (7, 1), "the FRED series of 6.9 (65c9cc9e2c14 and others): 'Do not enable FRED by "
         "default yet', fred=on needed"),
    Fact("default-on", (7, 1), None,
         "ac66a73be03a 'x86/fred: Enable FRED by default' (7.1 per issue 20); checked in 7.2.13's "
         "arch/x86/kernel/cpu/common.c: only 'fred=off' is parsed"),
)

# Whose return address the IDT entry code leaves in the word just below the pt_regs it
# built: with CPL-0 delivery onto a user stack, that word stays in user memory below the
# CPU's frame (frame - 0x80 with 6.1's pt_regs), the trail of the kernel's entry code that
# a frame-shaped pattern user code writes (a user-mode IRETQ) does not have. Below it,
# mitigation calls may leave more (6.1's error_entry+0x5d at frame - 0x88; none on 6.12,
# 7.2): configuration, not version, so only this word is used.
ENTRY_TRAIL_CALLER: Final[Sequence[Fact[str]]] = (
    Fact("error_entry", (5, 8), (5, 19),
         "error_entry pops the stub's return address, then 'call sync_regs' pushes its own in that "
         "word (checked in 5.10.223's arch/x86/entry/entry_64.S; error_entry+0x5c on the 5.10 fixtures)"),
    Fact("asm_", (5, 19), None,
         "520a7e80c96d 'x86/entry: Switch the stack after error_entry() returns' (5.19): the word "
         "holds the idtentry stub's return address from 'call error_entry' "
         "(asm_sysvec_apic_timer_interrupt+0xb on 6.1, +0xf on 6.12 and 7.2.13 fixtures)"),
)

# VMCOREINFO names the kallsyms tables (SYMBOL(kallsyms_names) and others), so symbols can
# be had from the dump alone.
VMCOREINFO_KALLSYMS: Final[Sequence[Fact[bool]]] = (
    Fact(False, (2, 6, 0), (6, 0), "no kallsyms symbols in VMCOREINFO (checked in 5.10.223's kernel/crash_core.c)"),
    Fact(True, (6, 0), None, "5fd8fea935a1 'vmcoreinfo: include kallsyms symbols' (6.0); checked in "
         "7.2.13's kernel/vmcore_info.c"),
)

# How scripts/kallsyms.c lays the tables out, for the search by structure of kernels whose
# VMCOREINFO does not name them (dfforensics/inputs/kallsyms.py: "addresses" and "offsets").
KALLSYMS_LAYOUT: Final[Sequence[Fact[str]]] = (
    Fact("addresses", (2, 6, 0), (4, 6), "scripts/kallsyms.c write_src() before 2213e9a66bb8: kallsyms_addresses "
         "(u64 each), kallsyms_num_syms, kallsyms_names (one-byte lengths), kallsyms_markers, "
         "kallsyms_token_table, kallsyms_token_index"),
    Fact("offsets", (4, 6), (6, 1), "2213e9a66bb8 'kallsyms: add support for relative offsets in kallsyms "
         "address table' (4.6): kallsyms_offsets (u32) and kallsyms_relative_base before kallsyms_num_syms; "
         "CONFIG_KALLSYMS_BASE_RELATIVE has no prompt and is y on x86_64 (checked in 5.10.223's "
         "scripts/kallsyms.c write_src() and init/Kconfig)"),
    Fact("not-searched", (6, 1), None, "73bbb94466fd 'kallsyms: support \"big\" kernel symbols' (6.1) made "
         "name lengths one or two bytes, and later releases add and reorder tables; VMCOREINFO names "
         "the tables from 6.0 (VMCOREINFO_KALLSYMS), so they are not searched for"),
)

# Whether a kallsyms_names length byte with its top bit set is followed by a second one.
# The tables do not say: drgn decides by release (libdrgn/kallsyms.c guess_long_names,
# $DRGN_KALLSYMS_LONG overriding), and dfforensics reads the tables as drgn does.
KALLSYMS_LONG_NAMES: Final[Sequence[Fact[bool]]] = (
    Fact(False, (2, 6, 0), (6, 1), "one length byte per entry (scripts/kallsyms.c write_src() before 73bbb94466fd)"),
    Fact(True, (6, 1), None, "73bbb94466fd 'kallsyms: support \"big\" kernel symbols' (6.1): a length of 128 or "
         "more is two bytes, the low 7 bits first with the top bit set (checked in 6.1.192's, 6.12.117's and "
         "7.2.13's tables by dfforensics' equivalence tests against drgn's loader)"),
)

# ORC_REG_PREV_SP in arch/x86/include/asm/orc_types.h: the ORC register numbering an
# unwinder must use (drgn reads the kernel's ORC to unwind the #DF handler's stack).
ORC_REG_PREV_SP: Final[Sequence[Fact[int]]] = (
    Fact(1, (4, 14), (7, 1), "ORC_REG_PREV_SP 1 (checked in 5.10.223's orc_types.h; 4.14 introduced ORC)"),
    Fact(8, (7, 1), None, "1735858caa4b 'objtool/x86: Reorder ORC register numbering' (7.1): ORC_REG_AX 1 ... "
         "ORC_REG_PREV_SP 8 (checked in 7.2.13's orc_types.h; the commit as cited by drgn 75a4fd04 "
         "'libdrgn: orc: handle ORC register renumbering in Linux 7.1', first in drgn 0.2.0, "
         "which tells the two numberings apart by the .orc_header hash)"),
)
