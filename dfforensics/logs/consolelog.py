"""
Console-log parsing
-------------------

Text in, double-fault reports out. Serial captures, ``dmesg``, kdump's
``vmcore-dmesg.txt``, netconsole and ``/dev/kmsg`` records, and mail or forum
pastes (quoted, wrapped) are taken as they come. Pure: no drgn.

The knowledge of crash formats is data: :data:`DF_HEADERS` (what starts a #DF
report, per era), :data:`OTHER_CRASH_HEADERS` (look-alikes that are not #DF),
:data:`LINE_PREFIXES` (what capture tools put before each line),
:data:`LINE_WRAPPERS` (what pastes wrap a whole line in), :data:`PARAVIRT_GUESTS`
(paravirtual kernels, whose own lines tell the environment) and
:data:`REGISTER_FORMATS` (how each era prints the interrupted state). Adding a
format is adding a row.

A register dump is a unit (:class:`RegisterBlock`): every register of one event
comes from one block. A report prints several: the state the #DF interrupted
(the faulting block, right after the header), frames nested in ``<IRQ>``,
``<NMI>``, ``<#DF>``, ``<ENTRY_TRAMPOLINE>`` sections, the user-mode entry
state at the end of a call trace, and a repeat after ``---[ end trace``. Only
the faulting block is the #DF's; the others are kept as what they are.
"""

import re
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Optional

from dfforensics.core.model import Registers

# Patterns that only a #DF report or an unusual paste needs are strings, compiled by re's
# own cache on first use (re.search(PATTERN, ...)): a log without a #DF, most dumps', then
# compiles none of them (~3 ms of a verdict). Patterns every log meets are compiled here.

__all__ = (
    "Header",
    "RegisterBlock",
    "DfReport",
    "LogFacts",
    "DF_HEADERS",
    "OTHER_CRASH_HEADERS",
    "NON_FATAL_REPORTS",
    "LINE_PREFIXES",
    "LINE_WRAPPERS",
    "PARAVIRT_GUESTS",
    "Paravirt",
    "normalize_lines",
    "parse_log",
)


class Header(NamedTuple):
    """A line that starts a crash report."""

    name: str
    regex: str
    #: "double-fault" or "stack-overflow" (a #DF the kernel names an overflow).
    kind: str
    eras: str
    #: Text every line the regex matches holds (one of them): a line with none is not
    #: tried, so that a log with no crash compiles and runs none of the patterns.
    needles: tuple[str, ...]

    def may_match(self, text: str) -> bool:
        """Whether the text holds one of the needles: only then is the regex tried."""
        return any(needle in text for needle in self.needles)

    @property
    def pattern(self) -> re.Pattern[str]:
        # Compiled on first use, then kept by re's cache: a run that meets no look-alike
        # crash never compiles those.
        return re.compile(self.regex)


def _h(name: str, regex: str, kind: str, eras: str, *needles: str) -> Header:
    return Header(name, regex, kind, eras, needles)


DF_HEADERS: Final = (
    _h("panic-double-fault-i386", r"(?:PANIC: )?double fault, gdt at (?P<gdt>[0-9a-f]+)",
       "double-fault", "i386 task-gate handler to 5.5 ('PANIC: ' from about 2.6.9)", "double fault, gdt at "),
    _h("panic-double-fault", r"PANIC: double fault, error_code: 0x(?P<error_code>[0-9a-f]+)",
       "double-fault", "3.x–5.x df_debug / exc_double_fault (4.9/4.14 also without 'traps:')",
       "PANIC: double fault, error_code: 0x"),
    _h("die-double-fault", r"(?:Oops: )?double fault: (?P<error_code>[0-9a-f]{4}) \[#?\d+\]",
       "double-fault", "2.6 '[1]', 3.x+ '[#1]', 'Oops: ' prefix from 6.10", "double fault: "),
    _h("guard-page-hit",
       r"BUG: (?:(?P<stack_name>\w+) )?stack guard page was hit at (?P<guard>\S+)"
       r"(?: \(stack is (?P<stack_lo>\S+?)\.\.(?P<stack_hi>\S+?)\))?",
       "stack-overflow", "VMAP_STACK 4.9+; '<NAME> stack guard page' from 5.x/6.x", "stack guard page was hit at "),
    _h("kernel-stack-overflow", r"kernel stack overflow \(double-fault\)", "stack-overflow",
       "VMAP_STACK 4.9–5.x die() title", "kernel stack overflow (double-fault)"),
    _h("die-guard-page", r"(?:Oops: )?stack guard page: [0-9a-f]{4} \[#\d+\]", "stack-overflow",
       "6.x die() title", "stack guard page: "),
)

# Look-alikes: crashes that are not a #DF. The first one found is named in
# the no-double-fault answer.
OTHER_CRASH_HEADERS: Final = (
    _h("general-protection", r"general protection fault(?:, probably for non-canonical address"
       r" \S+)?: [0-9a-f]{4}", "oops", "all", "general protection fault"),
    _h("page-fault-oops", r"BUG: (?:unable to handle (?:kernel )?(?:paging request|NULL pointer "
       r"dereference|page fault)|kernel NULL pointer dereference).*", "oops", "2.6.19+",
       "BUG: unable to handle ", "BUG: kernel NULL pointer dereference"),
    # Without this row a 2.6.12 NULL-pointer oops was named by its "Oops: 0000 [#1]" line.
    _h("page-fault-oops-2.6", r"Unable to handle kernel (?:NULL pointer dereference|paging request)"
       r" at virtual address [0-9a-f]+", "oops", "2.6 to 2.6.18, before the 'BUG: ' prefix",
       "Unable to handle kernel "),
    _h("vc-panic", r"(?:#VC|VMM communication exception).*", "oops", "SEV-ES guests", "#VC",
       "VMM communication exception"),
    # die() titles of the other exceptions: without this row a divide error's
    # no-double-fault answer said the log showed "no crash".
    _h("die-other", r"(?:Oops: )?(?:divide[_ ]error|invalid opcode|stack segment|segment not present"
       r"|invalid TSS|alignment check|bounds|overflow|int3): [0-9a-f]{4} \[#\d+\]", "oops", "all", " [#"),
    _h("kernel-bug", r"[Kk]ernel BUG at .*", "oops", "all", "ernel BUG at "),
    _h("oops", r"Oops: .*", "oops", "all", "Oops: "),
    _h("panic", r"Kernel panic - .*", "oops", "all", "Kernel panic - "),
    # VMAP_STACK 4.9-5.x: a guard-page hit the #PF handler caught and died on;
    # the same "BUG: stack guard page was hit" line starts it as a #DF's does.
    _h("guard-page-page-fault", r"kernel stack overflow \(page fault\): [0-9a-f]{4} \[#\d+\].*", "oops",
       "VMAP_STACK 4.9-5.x", "kernel stack overflow (page fault): "),
    _h("user-trap", r"traps: \S+\[\d+\] general protection fault ip:\S+ sp:\S+ error:\S+",
       "user", "a user process's #GP, logged and survived by the kernel", "general protection fault ip:"),
)

# Reports the kernel survives (warnings, lockdep, stalls, KASAN without
# panic_on_warn). They only name what a log without a #DF shows, and only
# when no crash above is found: they never stand in for a crash, so a kdump
# capture kernel's log that prints a boot-time WARNING still says that the
# crash itself was not printed.
NON_FATAL_REPORTS: Final = (
    _h("warning", r"WARNING: (?:CPU: \d+ PID: \d+ at \S+ \S+|inconsistent lock state"
       r"|possible circular locking dependency detected|.{1,80})", "warning", "all", "WARNING: "),
    _h("kasan", r"BUG: KASAN: \S+ in \S+", "warning", "KASAN kernels", "BUG: KASAN: "),
    _h("soft-lockup", r"BUG: soft lockup - CPU#\d+ stuck for \d+s!.*", "warning", "all", "BUG: soft lockup - CPU#"),
    _h("rcu-stall", r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected stalls?\b.*", "warning", "all", "INFO: rcu_"),
    _h("hung-task", r"INFO: task \S+ blocked for more than \d+ seconds\.", "warning", "all", "INFO: task "),
)

# Lines just before a #DF report that say it happened inside firmware, whose
# stack pointer is an offset in a BIOS segment rather than a flat address.
FIRMWARE_CONTEXT: Final = r"PNPBIOS fault|APM BIOS|BIOS call|EFI runtime"
_FIRMWARE_CONTEXT_LINES: Final = 5

# What capture tools put before a kernel line, stripped repeatedly.
LINE_PREFIXES: Final = (
    r"^\s*(?:>\s?)+",                                   # mail quoting
    r"^\d+,\d+,\d+,[-c][^;]*;",                          # /dev/kmsg, netconsole ext.
    r"^<\d+>",                                           # printk level
    r"^\d{1,7}\s+<\d>",                                  # numbered paste: "1146  <4>"
    r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: ?",  # syslog
    r"^\d{4}-\d\d-\d\d[T ][\d:.,+-]+Z? \S+ kernel: ?",   # RFC 3339 syslog / journal
    r"^kernel: ?",
    r"^\s+",                                            # indentation of pastes
    r"^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d \d{4}\] ?",  # dmesg -T
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ",                 # xl/Qubes console time
    r"^\[[A-Z][a-z]{2}\s?\d{1,2} \d\d:\d\d\] ?",               # dmesg -H: "[Apr19 16:15]"
    r"^\[\s*\+\d+\.\d+\] ?",                                # dmesg -H/--reltime: "[  +0.000628]"
    r"^\[\s*\d+[.:]\d+\]\s?",                           # printk time (2.6 boot: "[4294688.655000]")
    r"^\[\s*[CT]\d+\]\s?",                               # printk caller id
    r"^\s*\[\s*\d+\.\d+\]\[\s*[CT]\d+\]\s?",             # time + caller id
)

_BLOCK_END_RE: Final = r"---\[ end (?:trace|Kernel panic)|^Kernel Offset:|^Rebooting in"
_MAX_BLOCK_LINES: Final = 160
_HEX = r"[0-9a-fA-F]"

# Register lines per era. Whitespace may include a line break: mail clients
# wrap register lines (the seed report does). Searched once per report block,
# through re's own cache: the formats of other eras are never compiled.
REGISTER_FORMATS: Final = {
    # 2.6/3.x: "RIP: 0010:[<ffffffff81048ecf>]  [<ffffffff81048ecf>] __do_page_fault+0x1f/0x540"
    # 2.6.9:   "RIP: 0010:[<ffffffff8012501d>] <ffffffff8012501d>{do_page_fault+1453}"
    "rip_bracketed": (
        rf"\bRIP: (?P<cs>{_HEX}{{4}}):\[<(?P<rip>{_HEX}{{8,16}})>\]"
        rf"(?:\s+(?:\[<{_HEX}+>\]\s+(?P<sym>[\w.]+\+0x{_HEX}+(?:/0x{_HEX}+)?)"
        rf"|<{_HEX}+>\{{(?P<sym26>[\w.]+\+\d+)\}}))?"),
    # 4.x+ user mode: "RIP: 0033:0x40166c"
    "rip_user": rf"\bRIP: (?P<cs>{_HEX}{{4}}):0x(?P<rip>{_HEX}+)\b",
    # 4.x+ kernel: "RIP: 0010:entry_SYSCALL_64+0x3/0x29 [module]"
    "rip_symbol": (
        rf"\bRIP: (?P<cs>{_HEX}{{4}}):(?P<sym>[A-Za-z_][\w.]*\+0x{_HEX}+/0x{_HEX}+)"
        rf"(?: \[(?P<module>\w+)\])?"),
    "rip_plain": rf"\bRIP: (?P<cs>{_HEX}{{4}}):(?P<rip>{_HEX}{{16}})\b",
    "rsp": rf"\bRSP: (?P<ss>{_HEX}{{4}}):(?P<rsp>{_HEX}{{16}})(?:\s+EFLAGS: (?P<rflags>{_HEX}+))?",
    "cs_line": rf"\bCS:\s+(?P<cs>{_HEX}{{4}})\s+DS:",
    "cr2": rf"\bCR2: (?P<cr2>{_HEX}{{8,16}})\b",
    # i386
    "eip_bracketed": rf"\bEIP: (?P<cs>{_HEX}{{4}}):\[<(?P<rip>{_HEX}{{8}})>\]",
    "eip_symbol": rf"\bEIP: (?:{_HEX}{{4}}:)?(?P<sym>[A-Za-z_][\w.]*\+0x{_HEX}+/0x{_HEX}+)",
    "esp": rf"\bESP: (?:(?P<ss>{_HEX}{{4}}):)?(?P<rsp>{_HEX}{{8}})\b",
    "esp_lower": rf"\besp(?::| =) (?P<rsp>{_HEX}{{8}})\b",
    "eip_lower": rf"\beip = (?P<rip>{_HEX}{{8}})\b",
    "ss_i386": rf"\bSS: (?P<ss>{_HEX}{{4}}) EFLAGS: (?P<rflags>{_HEX}+)",
}

_GP_REGISTER_RE: Final = (
    rf"\b(?P<name>RAX|RBX|RCX|RDX|RSI|RDI|RBP|R8|R9|R1[0-5]|CR3|CR4):\s+(?P<value>{_HEX}{{8,16}})\b")
_TASK_LINE_RES: Final = (
    # 5.x/6.x: "CPU: 1 UID: 0 PID: 154 Comm: victim Not tainted 6.12.5 #1"
    # ("Kdump: loaded " precedes the taint when a crash kernel is loaded, 4.x+.)
    re.compile(r"\bCPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>.{1,16}?)\s+"
               r"(?:Kdump: loaded )?(?:Not tainted|Tainted: [A-Z ]*?)\s+(?P<release>\d+\.\d+\S*)"),
    # 2.6: "Pid: 12135, comm: bash Not tainted 2.6.9-rc2-mm1"
    re.compile(r"\bPid: (?P<pid>\d+), comm: (?P<comm>.{1,16}?)\s+(?:Not tainted|Tainted: [A-Z ]*?)\s+"
               r"(?P<release>\d+\.\d+\S*)"),
)
# Kernels that print their release elsewhere than on a task line. i386 die()
# to 2.6.2x: "EFLAGS: 00010202   (2.6.12-rc2-fs3) ".
_RELEASE_ONLY_RES: Final = (
    re.compile(r"^EFLAGS: [0-9a-f]{8}\s+\((?P<release>\d+\.\d+[^\s)]*)"),
)
_CPU_ALONE_RE: Final = r"^CPU (?P<cpu>\d+)\s*$"
_HARDWARE_RE: Final = re.compile(r"(?:Hardware name|DMI): (?P<hw>.+)")
# The kernel prints "VENDOR PRODUCT/BOARD, BIOS VERSION DATE": a value ending in
# "," or "BIOS" was wrapped (mail clients wrap after "PIIX, 1996)," or "BIOS").
_HARDWARE_CUT_RE: Final = re.compile(r"(?:,|,? BIOS)$")
# The wrapped rest is "BIOS 1.7.5-... 04/01/2014" or "2.2 05/23/2018"; a line that
# starts "WORD:" is a kernel line of its own (the rest was lost), never joined.
_KERNEL_LINE_RE: Final = r"^[\w<>/#() -]{1,40}:(?:\s|$)|^$"
_KERNEL_POINTER_RES: Final = (
    rf"\b(?:task|ti|task\.ti|task\.stack|threadinfo):? (?P<ptr>{_HEX}{{16}})\b",
)
_TRACE_MARKER_RE: Final = r"<(?P<marker>/?#?[A-Z_]+)>"
_HYPERVISOR_LINE_RES: Final = (
    r"Hypervisor detected: (?P<hv>.+)",
    r"Booting paravirtualized kernel on (?P<hv>.+)",
)

# Hardware names, by what they say about the environment.
_GUEST_HARDWARE: Final = (
    ("QEMU", r"QEMU|Bochs|Standard PC \((?:i440FX|Q35)"),
    ("KVM", r"\bKVM\b|Red Hat|oVirt|OpenStack|Nutanix|RHEV"),
    ("Xen", r"\bXen\b|HVM domU"),
    ("VMware", r"VMware"),
    ("VirtualBox", r"VirtualBox|innotek"),
    ("Hyper-V", r"Microsoft Corporation Virtual Machine|Hyper-V"),
    ("Google Compute Engine", r"Google Compute Engine|Google Google"),
    ("Amazon EC2", r"Amazon EC2|\bEC2\b"),
    ("bhyve", r"BHYVE|bhyve|Propolis|Oxide"),
    ("Parallels", r"Parallels"),
    ("cloud VM", r"Alibaba Cloud|DigitalOcean|Linode|Droplet|Cloud Hypervisor|Firecracker|"
                 r"Apple Virtualization|ACRN|Oracle Cloud|Tencent Cloud|Huawei Cloud|ECS"),
)
_BARE_METAL_HARDWARE: Final = (
    r"Dell|PowerEdge|Hewlett|HPE?\b|ProLiant|LENOVO|Lenovo|ThinkPad|ThinkCentre|Supermicro|"
    r"ASUS|Gigabyte|GIGABYTE|Intel Corporation|IBM|Cisco|FUJITSU|Fujitsu|Apple Inc|Acer|"
    r"Micro-Star|MSI|ASRock|Huawei|Inspur|Quanta|Wiwynn|Tyan|TYAN|Sugon|TOSHIBA|Toshiba|Sony|"
    r"SAMSUNG|Samsung|Framework|System manufacturer|To Be Filled By O\.E\.M\.|Notebook|"
    r"Gateway|Alienware|XPS|Latitude|Precision|Surface|Dynabook|Clevo|Razer|Google Pixelbook"
)


# Paravirtual guest kernels, whose own lines say a hypervisor runs beneath them
# whatever the Hardware name (a Xen dom0 prints the physical server's). Their
# kernel runs at CPL 3, so the hypervisor, not the CPU, switches it between its
# kernel and user mode: the KVM/SVM cause of the signature cannot act there.
class Paravirt(NamedTuple):
    """A paravirtual guest kernel, and what in its log shows it."""

    kind: str
    hypervisor: str
    regex: str


PARAVIRT_GUESTS: Final = (
    # xen/include/public/arch-x86/xen-x86_64.h: FLAT_RING3_CS64 0xe033; Linux
    # prints its saved kernel CS with RPL 0 (e030). Some 5.x print "CS: 10000e030".
    Paravirt("Xen PV", "Xen", r"^(?:RIP: |CS:\s+(?:10000)?)e03[03]\b"),
    # arch/x86/kernel/pvm.c (virt-pvm/linux, 2024) prints with "pvm-guest: " and
    # panics "invalid or fatal PVM event". An ordinary oops of a PVM guest prints
    # neither; the one real one found (virt-pvm/linux#2) is told only by the
    # release its builder gave it, 6.7.0-rc6-virt-pvm-guest+ (the project's own
    # guest config sets no LOCALVERSION). Hosts' releases ("-pvm-host", "-pvm-alex")
    # do not match: only a guest kernel's selectors are emulated.
    Paravirt("PVM", "PVM (kvm_pvm)",
             r"PANIC: invalid or fatal PVM event|^pvm-guest: |(?:Not tainted|Tainted: [A-Z ]*?)\s+"
             r"\d+\.\d+\S*pvm-guest"),
)


class RegisterBlock(NamedTuple):
    """One register dump as printed: every register of one event, and where it was printed."""

    regs: Registers
    #: 1-based line (of the normalised log) of its first RIP/EIP line.
    line: int
    #: "fault" (the state the report is about), the trace section it was printed in
    #: ("IRQ", "NMI", "#DF", "ENTRY_TRAMPOLINE", ...), "user-entry" (user state at the end
    #: of a call trace), "call-trace" (a kernel frame in a trace) or "repeat" (after
    #: ``---[ end trace``).
    where: str
    arch_bits: int = 64


@dataclass
class DfReport:
    """One #DF report found in a log, with what it says."""

    header: str
    header_name: str
    kind: str
    line: int
    regs: Registers
    arch_bits: int = 64
    cpu: Optional[int] = None
    pid: Optional[int] = None
    comm: Optional[str] = None
    release: Optional[str] = None
    hardware_name: Optional[str] = None
    guard_page_hit: bool = False
    #: The lines before the report say it happened inside a firmware call.
    firmware_context: Optional[str] = None
    kernel_pointers: list[int] = field(default_factory=list)
    call_trace: list[str] = field(default_factory=list)
    #: Register dumps of other events the report shows (never the #DF's own).
    nested_blocks: list[RegisterBlock] = field(default_factory=list)
    #: What the log does not show of the #DF's state and why, when it is a fragment.
    missing: Optional[str] = None


@dataclass
class LogFacts:
    """Everything a log says that the verdict needs."""

    reports: list[DfReport]
    #: The first crash that is not a #DF, when there is no #DF: (line, text).
    other_crash: Optional[tuple[int, str]]
    release: Optional[str]
    hardware_name: Optional[str]
    environment: str
    hypervisor: Optional[str]
    #: When no crash report is printed but the log shows one happened (a kdump
    #: capture kernel booting), what shows it.
    unprinted_crash: Optional[str] = None
    #: The paravirtual guest kind (:data:`PARAVIRT_GUESTS`) the log shows, or None.
    paravirt: Optional[str] = None


# A kdump capture kernel boots with elfcorehdr= on its command line: the
# previous kernel crashed, whether or not its report reached this console.
_CAPTURE_KERNEL_RE: Final = re.compile(r"^(?:Kernel )?[Cc]ommand line: .*\belfcorehdr=")


# Every prefix is anchored and none matches an empty string: one alternation,
# matched until nothing is left to strip, tries them all in one pass per prefix.
_ANY_LINE_PREFIX: Final = re.compile("|".join(f"(?:{prefix})" for prefix in LINE_PREFIXES))

# Mail archives keep quoted-printable bodies as sent: "=\n" soft breaks split
# register lines, "=3D" is "=", "=C2=A0" a no-break space.
_QP_DECLARED_RE: Final = re.compile(r"^Content-Transfer-Encoding:\s*quoted-printable\s*$",
                                    re.IGNORECASE | re.MULTILINE)
_QP_SOFT_BREAK_RE: Final = re.compile(r"=\r?\n")
_QP_ESCAPES_RE: Final = r"(?:=[0-9A-F]{2})+"
_QP_LOOKS_RE: Final = r"=(?:3D|20|C2=A0)"
_QP_MIN_SOFT_BREAKS: Final = 3

# One physical line holding several kernel lines: interleaved console output
# ("[RUN] M[   20.305426] PANIC: ...") and oopses flattened by forums or
# archives. A flattened dump is split only when it holds both RIP and RSP.
_MIDLINE_TIMESTAMP_RE: Final = re.compile(r"(?<=\S)\s*(?=\[\s*\d{1,7}\.\d{6}\])")
_FLATTENED_RE: Final = re.compile(r"\bR[IS]P: .{0,400}?\bR[SI]P: ")
_FLATTENED_SPLIT_RE: Final = (
    r"\s+(?=<\d>|(?:RIP|RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|DR0|DR3|Pid|Process|Stack|Code|"
    r"Call Trace|Hardware name|Modules linked in|CPU \d|CPU: \d)\b:?)")
_MAX_LINE: Final = 4096


def _decode_quoted_printable(text: str) -> str:
    if not _QP_DECLARED_RE.search(text) and (
            len(_QP_SOFT_BREAK_RE.findall(text)) < _QP_MIN_SOFT_BREAKS or not re.search(_QP_LOOKS_RE, text)):
        return text
    text = _QP_SOFT_BREAK_RE.sub("", text)
    return re.sub(_QP_ESCAPES_RE, lambda m: bytes.fromhex(m.group(0).replace("=", "")).decode("utf-8", "replace"),
                  text)


def _strip_prefixes(line: str) -> str:
    line = line.rstrip("\r\n")
    while (match := _ANY_LINE_PREFIX.match(line)) and match.end():
        line = line[match.end():]
    return line.strip()


def _split_physical_line(line: str) -> list[str]:
    # Bounded: a pathological line is cut, never scanned quadratically.
    line = line[:_MAX_LINE]
    parts = _MIDLINE_TIMESTAMP_RE.split(line)
    if _FLATTENED_RE.search(line):
        parts = [piece for part in parts for piece in re.split(_FLATTENED_SPLIT_RE, part)]
    return parts


# Whole lines wrapped around a kernel line, unwrapped before anything else:
# GitHub Markdown inline code, one `...` per console line (not a ``` fence).
LINE_WRAPPERS: Final = (
    re.compile(r"^\s*`(?P<line>[^`].*[^`])`\s*$"),
)


def _unwrap(line: str) -> str:
    for wrapper in LINE_WRAPPERS:
        match = wrapper.match(line)
        if match:
            return match.group("line")
    return line


def normalize_lines(text: str) -> list[str]:
    """Return the log's kernel lines with capture prefixes (time, level, quoting) removed.

    Quoted-printable mail bodies are decoded, no-break spaces made spaces, and
    one physical line holding several kernel lines is split.
    """
    text = _decode_quoted_printable(text).replace("\xa0", " ")
    lines = []
    for physical in text.splitlines():
        lines.extend(_strip_prefixes(part) for part in _split_physical_line(_unwrap(physical)))
    return lines


def classify_hardware(name: Optional[str]) -> tuple[str, Optional[str]]:
    """Return (environment, hypervisor) for a ``Hardware name:`` value."""
    if not name:
        return "unknown", None
    for hypervisor, regex in _GUEST_HARDWARE:
        if re.search(regex, name):
            return "guest", hypervisor
    if re.search(_BARE_METAL_HARDWARE, name):
        return "bare-metal", name.split(",")[0].strip()
    return "unknown", None


# What the kernel itself puts before a header on the same line.
_HEADER_LEAD_RE: Final = r"(?:traps: |x86/\w+: )?"


def _headers_in(headers: tuple[Header, ...], whole_log: str) -> tuple[Header, ...]:
    """The headers whose needles the whole log holds: one search of the log per needle,
    not one per line (a needle holds no newline, so a line's needle is the log's)."""
    return tuple(header for header in headers if header.may_match(whole_log))


def _find_header(line: str, headers: tuple[Header, ...]) -> Optional[tuple[Header, re.Match[str]]]:
    """A header starts its (normalised) line, as the kernel prints it.

    A mail subject or a bot title quoting "PANIC: double fault in f" sits
    after other text, or lacks the error code: it is not a report.
    """
    lead = re.match(_HEADER_LEAD_RE, line)
    start = lead.end() if lead else 0
    for header in headers:
        if not header.may_match(line):
            continue
        match = header.pattern.match(line, start)
        if match:
            return header, match
    return None


def _find_other_crash(line: str, headers: tuple[Header, ...]) -> Optional[re.Match[str]]:
    for header in headers:
        if not header.may_match(line):
            continue
        match = header.pattern.search(line)
        if match:
            return match
    return None


def _int(value: Optional[str]) -> Optional[int]:
    return int(value, 16) if value else None


def _parse_registers(block: str) -> tuple[Registers, int]:
    """The registers of one block, and whether it is 32- or 64-bit state."""
    regs = Registers()
    formats = REGISTER_FORMATS
    for name in ("rip_bracketed", "rip_user", "rip_symbol", "rip_plain"):
        match = re.search(formats[name], block)
        if match:
            groups = match.groupdict()
            regs.cs = _int(groups.get("cs"))
            regs.rip = _int(groups.get("rip"))
            symbol = groups.get("sym") or groups.get("sym26")
            if symbol and groups.get("module"):
                symbol = f"{symbol} [{groups['module']}]"
            regs.rip_symbol = symbol
            break
    match = re.search(formats["rsp"], block)
    if match:
        regs.ss, regs.rsp, regs.rflags = (_int(match.group(g)) for g in ("ss", "rsp", "rflags"))
    bits = 64
    if regs.rip is None and regs.rip_symbol is None and _parse_i386_registers(block, regs):
        bits = 32
    match = re.search(formats["cs_line"], block)
    if match and regs.cs is None:
        regs.cs = _int(match.group("cs"))
    match = re.search(formats["cr2"], block)
    if match:
        regs.cr2 = _int(match.group("cr2"))
    for match in re.finditer(_GP_REGISTER_RE, block):
        regs.others.setdefault(match.group("name").lower(), int(match.group("value"), 16))
    return regs, bits


def _parse_i386_registers(block: str, regs: Registers) -> bool:
    formats = REGISTER_FORMATS
    eip = re.search(formats["eip_bracketed"], block) or re.search(formats["eip_lower"], block)
    eip_symbol = re.search(formats["eip_symbol"], block)
    esp = re.search(formats["esp"], block) or re.search(formats["esp_lower"], block)
    if not (eip or eip_symbol or esp):
        return False
    if eip:
        regs.rip = _int(eip.group("rip"))
        regs.cs = _int(eip.groupdict().get("cs"))
    if eip_symbol:
        regs.rip_symbol = eip_symbol.group("sym")
    if esp:
        regs.rsp = _int(esp.group("rsp"))
        regs.ss = _int(esp.groupdict().get("ss"))
    ss = re.search(formats["ss_i386"], block)
    if ss:
        regs.ss, regs.rflags = _int(ss.group("ss")), _int(ss.group("rflags"))
    return True


# --- Register blocks -------------------------------------------------------

# A block starts at the line naming the interrupted instruction pointer.
_BLOCK_START_RE: Final = r"^(?:RIP|EIP):\s|^eip = "
# Lines a register dump is made of: "RSP: ...", "eax: ...", "eip = ...",
# "EIP is at ...", and the pieces of a register line a mail client wrapped (a
# "Code:" line wrapped to its last two or three bytes, "49 8b 5c", included).
_REGISTER_LINE_RE: Final = (
    r"^(?:[A-Za-z][A-Za-z0-9_]{0,7}:|[a-z]{2,3} = |EIP is at |\[<[0-9a-f]|[0-9a-f]{8,16}(?:\s|$)"
    r"|[A-Za-z_][\w.]*\+0x[0-9a-f]+/0x|<?[0-9a-f]{2}>?(?: <?[0-9a-f]{2}>?)+\s*$)")
# Lines that end a register dump even though they look like "WORD:".
_BLOCK_STOP_RE: Final = (
    r"^(?:Call Trace:|Stack:|Process |Kernel panic|Modules linked in|---\[|Kernel Offset:"
    r"|CPU: \d|Pid: \d|Hardware name:)")
_SECTION_RE: Final = r"<(?P<close>/?)(?P<name>#?[A-Z][A-Z0-9_]*)>"
# Trace sections that are the task's own stack, not a nested event.
_TASK_SECTIONS: Final = frozenset({"TASK"})
# Old kernels close an <IRQ> section with <EOI>.
_CLOSES: Final = {"EOI": "IRQ"}


@dataclass
class _BlockScanner:
    """Splits a report's lines into register blocks, tracking where each is printed."""

    sections: list[str] = field(default_factory=list)
    in_trace: bool = False
    after_end: bool = False
    blocks: list[tuple[int, str, list[str]]] = field(default_factory=list)
    current: Optional[list[str]] = None
    current_has_regs: bool = False

    def where(self) -> str:
        if self.after_end:
            return "repeat"
        nested = [name for name in self.sections if name not in _TASK_SECTIONS]
        if nested:
            return nested[-1]
        return "trace" if self.in_trace else "fault"

    def _apply_sections(self, line: str, closing: bool) -> None:
        for match in re.finditer(_SECTION_RE, line):
            name, close = match.group("name"), bool(match.group("close"))
            if name in _CLOSES and not closing:
                name, close = _CLOSES[name], True
            elif close != closing:
                continue
            if not close:
                self.sections.append(name)
                self.in_trace = True
            elif name in self.sections:
                del self.sections[len(self.sections) - 1 - self.sections[::-1].index(name)]

    def feed(self, number: int, line: str) -> None:
        if not line:
            # Pastes double-space their lines; a blank line ends nothing.
            return
        self._apply_sections(line, closing=False)
        starts = bool(re.match(_BLOCK_START_RE, line))
        if starts and (self.current is None or self.current_has_regs):
            self.current = [line]
            self.current_has_regs = False
            self.blocks.append((number, self.where(), self.current))
        elif self.current is not None and not re.match(_BLOCK_STOP_RE, line) and (
                starts or re.match(_REGISTER_LINE_RE, line)):
            self.current.append(line)
            self.current_has_regs |= not starts
        else:
            self.current = None
        if line.startswith(("Call Trace:", "Stack:")):
            self.in_trace = True
        if line.startswith("---[ end"):
            self.after_end = True
        self._apply_sections(line, closing=True)


def _register_blocks(lines: list[str], first_line: int) -> list[RegisterBlock]:
    scanner = _BlockScanner()
    for offset, line in enumerate(lines):
        scanner.feed(first_line + offset, line)
    blocks = []
    for number, where, block_lines in scanner.blocks:
        regs, bits = _parse_registers("\n".join(block_lines))
        if where == "trace":
            where = "user-entry" if regs.cs is not None and regs.cs & 3 == 3 else "call-trace"
        blocks.append(RegisterBlock(regs, number, where, bits))
    return blocks


# Lines that say why a report stops short of its registers.
_CUT_BY_REBOOT_RE: Final = (r"SeaBIOS|BIOS \(version|Linux version \d|Booting Linux|"
                             r"^Initializing cgroup|iPXE|Rebooting in|reboot: ")
_ELIDED_RE: Final = r"(?i)^\[?(?:snip|\.\.\.|…|cut|trimmed)\]?"
_FRAGMENT_LOOKAHEAD: Final = 6


def _why_missing(lines: list[str]) -> str:
    """Say why a #DF header is not followed by the #DF's registers."""
    after = [line for line in lines[1:_FRAGMENT_LOOKAHEAD] if line]
    for line in after:
        if re.search(_CUT_BY_REBOOT_RE, line):
            return f"the log is cut by a reboot right after the header ({line[:60]!r})"
        if re.match(_ELIDED_RE, line):
            return f"the reporter elided the register dump ({line[:40]!r})"
    if not after or all(re.match(_CPU_ALONE_RE, line) or _TASK_LINE_RES[0].search(line) for line in after):
        return "nothing after the header (or only the CPU line): the log ends there"
    return "no register dump follows the header in the log"


def _missing_registers(regs: Registers, arch_bits: int) -> list[str]:
    names = [("RIP" if arch_bits == 64 else "EIP", regs.rip is None and regs.rip_symbol is None),
             ("CS", regs.cs is None), ("RSP" if arch_bits == 64 else "ESP", regs.rsp is None),
             ("SS", regs.ss is None)]
    return [name for name, missing in names if missing]


def _parse_call_trace(lines: list[str]) -> list[str]:
    trace: list[str] = []
    in_trace = False
    for line in lines:
        if line.startswith("Call Trace:"):
            in_trace = True
            line = line[len("Call Trace:"):]
        elif not in_trace:
            continue
        if not line or line.startswith(("Code:", "Modules linked in", "---[", "RIP:", "Kernel panic")):
            if trace:
                break
            continue
        for marker in re.finditer(_TRACE_MARKER_RE, line):
            trace.append(f"<{marker.group('marker')}>")
        for match in re.finditer(r"(?:^|\s|\{|\])\??\s*([A-Za-z_][\w.]*\+(?:0x[0-9a-f]+(?:/0x[0-9a-f]+)?|\d+))", line):
            trace.append(match.group(1))
    return trace


# A task line a mail client wrapped before its release: "CPU: 10 PID: 2118287 Comm: kworker/10:0"
# then "Tainted: P           OE     5.11.8-051108-generic #202103200636", or
# "CPU: 40 PID: 0 Comm: swapper/40 Tainted: G" then "OE     5.12.0-rc3-md-next-pw-fix2 #1".
_TASK_LINE_CUT_RE: Final = (
    r"\bCPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: \S+(?: Tainted: [A-Z ]*)?$")


def _hardware_name(lines: list[str], index: int) -> Optional[str]:
    """The ``Hardware name:`` value on ``lines[index]``, with its wrapped rest."""
    match = _HARDWARE_RE.search(lines[index])
    if not match:
        return None
    name = match.group("hw").strip()
    if not _HARDWARE_CUT_RE.search(name):
        return name
    rest = lines[index + 1] if index + 1 < len(lines) else ""
    if not re.match(_KERNEL_LINE_RE, rest):
        return f"{name} {rest}"
    # The rest is lost: keep the whole fields, not a dangling separator.
    return _HARDWARE_CUT_RE.sub("", name).rstrip(", ")


def _parse_task_lines(lines: list[str], report: DfReport) -> None:
    for index, line in enumerate(lines):
        if re.search(_TASK_LINE_CUT_RE, line) and index + 1 < len(lines):
            # Joined with its continuation only: one extra line, so still linear.
            line = f"{line} {lines[index + 1]}"
        for regex in _TASK_LINE_RES:
            match = regex.search(line)
            if match and report.pid is None:
                report.pid = int(match.group("pid"))
                report.comm = match.group("comm").strip()
                report.release = match.group("release")
                if "cpu" in match.groupdict() and match.group("cpu") is not None:
                    report.cpu = int(match.group("cpu"))
        for regex in _RELEASE_ONLY_RES:
            match = regex.search(line)
            if match and report.release is None:
                report.release = match.group("release")
        match = re.match(_CPU_ALONE_RE, line)
        if match and report.cpu is None:
            report.cpu = int(match.group("cpu"))
        if report.hardware_name is None:
            report.hardware_name = _hardware_name(lines, index)
        for regex in _KERNEL_POINTER_RES:
            report.kernel_pointers.extend(int(m.group("ptr"), 16) for m in re.finditer(regex, line))


# Kernel pointers among the registers help recognise a truncated RSP and
# tell 5-level paging (kernel addresses from 0xff00...) from 4-level.
_KERNEL_POINTER_MIN: Final = 0xFF00_0000_0000_0000


def _parse_block(lines: list[str], first_line: int, report: DfReport) -> None:
    """Fill a report from its window of lines: the faulting block and everything else."""
    blocks = _register_blocks(lines, first_line)
    fault = next((block for block in blocks if block.where == "fault"), None)
    if fault is not None:
        error_code = report.regs.error_code
        report.regs = fault.regs
        report.regs.error_code = error_code

        report.arch_bits = 32 if fault.arch_bits == 32 else report.arch_bits
    report.nested_blocks = [block for block in blocks if block is not fault]
    _parse_task_lines(lines, report)
    report.kernel_pointers.extend(
        value for value in report.regs.others.values() if value >= _KERNEL_POINTER_MIN)
    report.call_trace = _parse_call_trace(lines)
    missing = _missing_registers(report.regs, report.arch_bits)
    if fault is None:
        report.missing = _why_missing(lines)
    elif len(missing) == 4 or (report.regs.rsp is None and missing):
        report.missing = f"the register dump does not show {', '.join(missing)}"


_END_TRACE_RE: Final = r"---\[ end trace"


def _repeated_cr2(lines: list[str], after: int, regs: Registers) -> Optional[int]:
    """CR2 from the repeat of the faulting block just after ``---[ end trace`` (line
    ``after``), when that repeat is the same event's dump: a user-mode state is printed
    first without the control registers (``__show_regs`` with ``SHOW_REGS_USER``), then
    again whole. Same event means every register both print is equal, RIP and RSP included."""
    if after >= len(lines) or not re.search(_END_TRACE_RE, lines[after]):
        return None
    repeat = next((block for block in _register_blocks(lines[after:after + 1 + 24], after + 1)
                   if block.where == "repeat"), None)
    if repeat is None or repeat.regs.cr2 is None:
        return None
    again = repeat.regs
    mine = {"rip": regs.rip, "cs": regs.cs, "rflags": regs.rflags, "rsp": regs.rsp, "ss": regs.ss, **regs.others}
    theirs = {"rip": again.rip, "cs": again.cs, "rflags": again.rflags, "rsp": again.rsp, "ss": again.ss,
              **again.others}
    shared = [name for name in mine if mine[name] is not None and theirs.get(name) is not None]
    if {"rip", "rsp"} <= set(shared) and all(mine[name] == theirs[name] for name in shared):
        return again.cr2
    return None


def _block_lines(lines: list[str], start: int) -> list[str]:
    block = []
    for line in lines[start:start + _MAX_BLOCK_LINES]:
        if block and re.search(_BLOCK_END_RE, line):
            break
        block.append(line)
    return block


def _has_regs_soon(block: list[str]) -> bool:
    """A register dump printed right away belongs to this report; a later header starts a new one."""
    for block_line in block[1:5]:
        if re.match(_BLOCK_START_RE, block_line):
            return True
        if _find_header(block_line, DF_HEADERS):
            return False
    return False


def _new_report(lines: list[str], index: int, header: Header, match: re.Match[str]) -> DfReport:
    line = lines[index]
    report = DfReport(
        header=line[match.start():],
        header_name=header.name,
        kind=header.kind,
        line=index + 1,
        regs=Registers(error_code=_int(match.groupdict().get("error_code"))),
        guard_page_hit=header.kind == "stack-overflow",
    )
    if header.name == "panic-double-fault-i386":
        report.arch_bits = 32
    for before in lines[max(0, index - _FIRMWARE_CONTEXT_LINES):index]:
        context = re.search(FIRMWARE_CONTEXT, before)
        if context:
            report.firmware_context = before[context.start():]
    block = _block_lines(lines, index)
    _parse_block(block, index + 1, report)
    if report.regs.cr2 is None and report.regs.rip is not None:
        report.regs.cr2 = _repeated_cr2(lines, index + len(block), report.regs)
    return report


# The #PF handler's title after a guard-page hit: the report is not a #DF's.
_GUARD_HIT_BY_PAGE_FAULT_RE: Final = r"kernel stack overflow \(page fault\)"


def parse_log(text: str) -> LogFacts:
    """Find every #DF report in a console log and what the log says around it.

    Headers within a few lines of each other that print one register dump
    (``traps: PANIC: double fault`` then ``double fault: 0000 [#1]``, or a
    guard-page ``BUG:`` then its ``die()`` title) are one report.
    """
    lines = normalize_lines(text)
    whole_log = "\n".join(lines)
    df_headers = _headers_in(DF_HEADERS, whole_log)
    reports: list[DfReport] = []
    # Index in `lines` of the last report's header, to merge headers.
    last_report_line = -10
    last_has_regs = False
    for index, line in enumerate(lines if df_headers else ()):
        found = _find_header(line, df_headers)
        if not found:
            continue
        header, match = found
        if header.kind == "stack-overflow" and any(
                re.match(_GUARD_HIT_BY_PAGE_FAULT_RE, later) for later in lines[index:index + 4]):
            continue
        if reports and index - last_report_line <= 4 and not last_has_regs:
            report = reports[-1]
            report.guard_page_hit |= header.kind == "stack-overflow"
            if report.regs.error_code is None and match.groupdict().get("error_code"):
                report.regs.error_code = int(match.group("error_code"), 16)
            continue
        reports.append(_new_report(lines, index, header, match))
        last_report_line = index
        last_has_regs = _has_regs_soon(_block_lines(lines, index))
    # Drop the repeat of a register dump printed again after the trace: the
    # same header class at the same RIP/RSP within one block is one #DF.
    unique: list[DfReport] = []
    for report in reports:
        if unique and _same_fault(unique[-1], report):
            continue
        unique.append(report)

    other = None
    unprinted = None
    if not unique:
        crash_headers = _headers_in(OTHER_CRASH_HEADERS, whole_log)
        for index, line in enumerate(lines if crash_headers else ()):
            crash = _find_other_crash(line, crash_headers)
            if crash:
                other = (index + 1, line[crash.start():])
                break
        if other is None:
            unprinted = next((f"a kdump capture kernel booting (line {index + 1}: elfcorehdr= "
                              "on its command line) after a crash"
                              for index, line in enumerate(lines) if _CAPTURE_KERNEL_RE.match(line)),
                             None)
        if other is None:
            report_headers = _headers_in(NON_FATAL_REPORTS, whole_log)
            for index, line in enumerate(lines if report_headers else ()):
                report = _find_other_crash(line, report_headers)
                if report:
                    other = (index + 1, line[report.start():])
                    break

    hardware = next((r.hardware_name for r in unique if r.hardware_name), None)
    if hardware is None:
        hardware = next((name for index in range(len(lines))
                         if (name := _hardware_name(lines, index))), None)
    environment, hypervisor = classify_hardware(hardware)
    if environment == "unknown":
        for line in lines:
            for regex in _HYPERVISOR_LINE_RES:
                match = re.search(regex, line)
                if match and "bare hardware" not in match.group("hv"):
                    environment, hypervisor = "guest", match.group("hv").strip()
                    break
            if environment != "unknown":
                break
    # A row's pattern that matches a line matches the whole log read line by line
    # (MULTILINE): one search of the log rules out most rows before the search per line.
    paravirt = next((row for row in PARAVIRT_GUESTS if re.search(row.regex, whole_log, re.MULTILINE)
                     for line in lines if re.search(row.regex, line)), None)
    if paravirt is not None:
        beneath = hypervisor or (hardware.split(",")[0].strip() if hardware else None)
        environment = "guest"
        hypervisor = f"{paravirt.hypervisor}, a {paravirt.kind} guest kernel" + (
            f" on {beneath}" if beneath else "")
    release = next((r.release for r in unique if r.release), None)
    if release is None and not unique:
        # A log without a #DF still says which kernel printed its look-alike
        # (the KERNEL a triager files it under). A #DF report without its own
        # task line keeps None: a line of another report may be another boot.
        release = next((match.group("release") for line in lines
                        for regex in (*_TASK_LINE_RES, *_RELEASE_ONLY_RES)
                        if (match := regex.search(line))), None)
    return LogFacts(unique, other, release, hardware, environment, hypervisor, unprinted,
                    paravirt.kind if paravirt else None)


def _same_fault(first: DfReport, second: DfReport) -> bool:
    return (
        second.line - first.line < _MAX_BLOCK_LINES
        and first.regs.rsp == second.regs.rsp
        and first.regs.rip == second.regs.rip
        and first.regs.rip_symbol == second.regs.rip_symbol
        and first.pid == second.pid
    )
