"""
Console-log parsing
-------------------

Text in, double-fault reports out. Serial captures, ``dmesg``, kdump's
``vmcore-dmesg.txt``, netconsole and ``/dev/kmsg`` records, and mail or forum
pastes (quoted, wrapped) are taken as they come. Pure: no drgn.

The knowledge of crash formats is data: :data:`DF_HEADERS` (what starts a #DF
report, per era), :data:`OTHER_CRASH_HEADERS` (look-alikes that are not #DF),
:data:`LINE_PREFIXES` (what capture tools put before each line) and
:data:`REGISTER_FORMATS` (how each era prints the interrupted state). Adding a
format is adding a row.
"""

import functools
import re
from dataclasses import dataclass, field
from typing import Final, Optional

from dfforensics.core.model import Registers

__all__ = (
    "Header",
    "DfReport",
    "LogFacts",
    "DF_HEADERS",
    "OTHER_CRASH_HEADERS",
    "LINE_PREFIXES",
    "normalize_lines",
    "parse_log",
)


@dataclass(frozen=True)
class Header:
    """A line that starts a crash report."""

    name: str
    regex: str
    #: "double-fault" or "stack-overflow" (a #DF the kernel names an overflow).
    kind: str
    eras: str

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        # Compiled on first use: a run that meets no look-alike crash never compiles those.
        return re.compile(self.regex)


def _h(name: str, regex: str, kind: str, eras: str) -> Header:
    return Header(name, regex, kind, eras)


DF_HEADERS: Final = (
    _h("panic-double-fault-i386", r"(?:PANIC: )?double fault, gdt at (?P<gdt>[0-9a-f]+)",
       "double-fault", "i386 task-gate handler to 5.5 ('PANIC: ' from about 2.6.9)"),
    _h("panic-double-fault", r"PANIC: double fault(?:, error_code: 0x(?P<error_code>[0-9a-f]+))?",
       "double-fault", "3.x–5.x df_debug / exc_double_fault (4.9/4.14 also without 'traps:')"),
    _h("die-double-fault", r"(?:Oops: )?double fault: (?P<error_code>[0-9a-f]{4}) \[#?\d+\]",
       "double-fault", "2.6 '[1]', 3.x+ '[#1]', 'Oops: ' prefix from 6.10"),
    _h("guard-page-hit",
       r"BUG: (?:(?P<stack_name>\w+) )?stack guard page was hit at (?P<guard>\S+)"
       r"(?: \(stack is (?P<stack_lo>\S+?)\.\.(?P<stack_hi>\S+?)\))?",
       "stack-overflow", "VMAP_STACK 4.9+; '<NAME> stack guard page' from 5.x/6.x"),
    _h("kernel-stack-overflow", r"kernel stack overflow \(double-fault\)", "stack-overflow",
       "VMAP_STACK 4.9–5.x die() title"),
    _h("die-guard-page", r"(?:Oops: )?stack guard page: [0-9a-f]{4} \[#\d+\]", "stack-overflow",
       "6.x die() title"),
)

# Look-alikes: crashes that are not a #DF. The first one found is named in
# the no-double-fault answer.
OTHER_CRASH_HEADERS: Final = (
    _h("general-protection", r"general protection fault(?:, probably for non-canonical address"
       r" \S+)?: [0-9a-f]{4}", "oops", "all"),
    _h("page-fault-oops", r"BUG: (?:unable to handle (?:kernel )?(?:paging request|NULL pointer "
       r"dereference|page fault)|kernel NULL pointer dereference).*", "oops", "all"),
    _h("vc-panic", r"(?:#VC|VMM communication exception).*", "oops", "SEV-ES guests"),
    _h("kernel-bug", r"[Kk]ernel BUG at .*", "oops", "all"),
    _h("oops", r"Oops: .*", "oops", "all"),
    _h("panic", r"Kernel panic - .*", "oops", "all"),
    _h("user-trap", r"traps: \S+\[\d+\] general protection fault ip:\S+ sp:\S+ error:\S+",
       "user", "a user process's #GP, logged and survived by the kernel"),
)

# Lines just before a #DF report that say it happened inside firmware, whose
# stack pointer is an offset in a BIOS segment rather than a flat address.
FIRMWARE_CONTEXT: Final = re.compile(r"PNPBIOS fault|APM BIOS|BIOS call|EFI runtime")
_FIRMWARE_CONTEXT_LINES: Final = 5

# What capture tools put before a kernel line, stripped repeatedly.
LINE_PREFIXES: Final = (
    r"^\s*(?:>\s?)+",                                   # mail quoting
    r"^\d+,\d+,\d+,[-c][^;]*;",                          # /dev/kmsg, netconsole ext.
    r"^<\d+>",                                           # printk level
    r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: ?",  # syslog
    r"^\d{4}-\d\d-\d\d[T ][\d:.,+-]+Z? \S+ kernel: ?",   # RFC 3339 syslog / journal
    r"^kernel: ?",
    r"^\[\s*\d+\.\d+\]\s?",                              # printk time
    r"^\[\s*[CT]\d+\]\s?",                               # printk caller id
    r"^\s*\[\s*\d+\.\d+\]\[\s*[CT]\d+\]\s?",             # time + caller id
)

_BLOCK_END_RE: Final = re.compile(r"---\[ end (?:trace|Kernel panic)|^Kernel Offset:|^Rebooting in")
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

_GP_REGISTER_RE: Final = re.compile(
    rf"\b(?P<name>RAX|RBX|RCX|RDX|RSI|RDI|RBP|R8|R9|R1[0-5]|CR3|CR4):\s+(?P<value>{_HEX}{{8,16}})\b")
_TASK_LINE_RES: Final = (
    # 5.x/6.x: "CPU: 1 UID: 0 PID: 154 Comm: victim Not tainted 6.12.5 #1"
    re.compile(r"\bCPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>.{1,16}?)\s+"
               r"(?:Not tainted|Tainted: [A-Z ]*?)\s+(?P<release>\d+\.\d+\S*)"),
    # 2.6: "Pid: 12135, comm: bash Not tainted 2.6.9-rc2-mm1"
    re.compile(r"\bPid: (?P<pid>\d+), comm: (?P<comm>.{1,16}?)\s+(?:Not tainted|Tainted: [A-Z ]*?)\s+"
               r"(?P<release>\d+\.\d+\S*)"),
)
_CPU_ALONE_RE: Final = re.compile(r"^CPU (?P<cpu>\d+)\s*$")
_HARDWARE_RE: Final = re.compile(r"(?:Hardware name|DMI): (?P<hw>.+)")
_KERNEL_POINTER_RES: Final = (
    re.compile(rf"\b(?:task|ti|task\.ti|task\.stack|threadinfo):? (?P<ptr>{_HEX}{{16}})\b"),
)
_TRACE_MARKER_RE: Final = re.compile(r"<(?P<marker>/?#?[A-Z_]+)>")
_HYPERVISOR_LINE_RES: Final = (
    re.compile(r"Hypervisor detected: (?P<hv>.+)"),
    re.compile(r"Booting paravirtualized kernel on (?P<hv>.+)"),
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


# Every prefix is anchored and none matches an empty string: one alternation,
# matched until nothing is left to strip, tries them all in one pass per prefix.
_ANY_LINE_PREFIX: Final = re.compile("|".join(f"(?:{prefix})" for prefix in LINE_PREFIXES))


def _strip_prefixes(line: str) -> str:
    line = line.rstrip("\r\n")
    while (match := _ANY_LINE_PREFIX.match(line)) and match.end():
        line = line[match.end():]
    return line.strip()


def normalize_lines(text: str) -> list[str]:
    """Return the log's lines with capture prefixes (time, level, quoting) removed."""
    return [_strip_prefixes(line) for line in text.splitlines()]


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


def _find_header(line: str, headers: tuple[Header, ...]) -> Optional[tuple[Header, re.Match[str]]]:
    for header in headers:
        match = header.pattern.search(line)
        if match:
            return header, match
    return None


def _int(value: Optional[str]) -> Optional[int]:
    return int(value, 16) if value else None


def _parse_registers(block: str, report: DfReport) -> None:
    regs = report.regs
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
    if regs.rip is None and regs.rip_symbol is None:
        _parse_i386_registers(block, report)
    match = re.search(formats["cs_line"], block)
    if match and regs.cs is None:
        regs.cs = _int(match.group("cs"))
    match = re.search(formats["cr2"], block)
    if match:
        regs.cr2 = _int(match.group("cr2"))
    for match in _GP_REGISTER_RE.finditer(block):
        regs.others.setdefault(match.group("name").lower(), int(match.group("value"), 16))


def _parse_i386_registers(block: str, report: DfReport) -> None:
    formats, regs = REGISTER_FORMATS, report.regs
    eip = re.search(formats["eip_bracketed"], block) or re.search(formats["eip_lower"], block)
    eip_symbol = re.search(formats["eip_symbol"], block)
    esp = re.search(formats["esp"], block) or re.search(formats["esp_lower"], block)
    if not (eip or eip_symbol or esp):
        return
    report.arch_bits = 32
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
        for marker in _TRACE_MARKER_RE.finditer(line):
            trace.append(f"<{marker.group('marker')}>")
        for match in re.finditer(r"(?:^|\s|\{|\])\??\s*([A-Za-z_][\w.]*\+(?:0x[0-9a-f]+(?:/0x[0-9a-f]+)?|\d+))", line):
            trace.append(match.group(1))
    return trace


def _parse_block(lines: list[str], report: DfReport) -> None:
    text = "\n".join(lines)
    _parse_registers(text, report)
    for line in lines:
        for regex in _TASK_LINE_RES:
            match = regex.search(line)
            if match and report.pid is None:
                report.pid = int(match.group("pid"))
                report.comm = match.group("comm").strip()
                report.release = match.group("release")
                if "cpu" in match.groupdict() and match.group("cpu") is not None:
                    report.cpu = int(match.group("cpu"))
        match = _CPU_ALONE_RE.match(line)
        if match and report.cpu is None:
            report.cpu = int(match.group("cpu"))
        match = _HARDWARE_RE.search(line)
        if match and report.hardware_name is None:
            report.hardware_name = match.group("hw").strip()
        for regex in _KERNEL_POINTER_RES:
            report.kernel_pointers.extend(int(m.group("ptr"), 16) for m in regex.finditer(line))
    # Kernel pointers among the registers help recognise a truncated RSP.
    report.kernel_pointers.extend(
        value for value in report.regs.others.values() if value >= 0xFFFF800000000000)
    report.call_trace = _parse_call_trace(lines)


def _block_lines(lines: list[str], start: int) -> list[str]:
    block = []
    for line in lines[start:start + _MAX_BLOCK_LINES]:
        if block and _BLOCK_END_RE.search(line):
            break
        block.append(line)
    return block


def parse_log(text: str) -> LogFacts:
    """Find every #DF report in a console log and what the log says around it.

    Headers within a few lines of each other that print one register dump
    (``traps: PANIC: double fault`` then ``double fault: 0000 [#1]``, or a
    guard-page ``BUG:`` then its ``die()`` title) are one report.
    """
    lines = normalize_lines(text)
    reports: list[DfReport] = []
    # Index in `lines` of the RIP of the last report, to merge headers.
    last_report_line = -10
    last_has_regs = False
    for index, line in enumerate(lines):
        found = _find_header(line, DF_HEADERS)
        if not found:
            continue
        header, match = found
        if reports and index - last_report_line <= 4 and not last_has_regs:
            report = reports[-1]
            report.guard_page_hit |= header.kind == "stack-overflow"
            if report.regs.error_code is None and match.groupdict().get("error_code"):
                report.regs.error_code = int(match.group("error_code"), 16)
            continue
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
            context = FIRMWARE_CONTEXT.search(before)
            if context:
                report.firmware_context = before[context.start():]
        block = _block_lines(lines, index)
        _parse_block(block, report)
        reports.append(report)
        last_report_line = index
        last_has_regs = False
        # A register dump printed right away belongs to this report; a later
        # header then starts a new one.
        for offset, block_line in enumerate(block[1:5], 1):
            if block_line.startswith(("RIP:", "EIP:", "eip =")):
                last_has_regs = True
                break
            if _find_header(block_line, DF_HEADERS):
                break
    # Drop the repeat of a register dump printed again after the trace: the
    # same header class at the same RIP/RSP within one block is one #DF.
    unique: list[DfReport] = []
    for report in reports:
        if unique and _same_fault(unique[-1], report):
            continue
        unique.append(report)

    other = None
    if not unique:
        for index, line in enumerate(lines):
            found = _find_header(line, OTHER_CRASH_HEADERS)
            if found:
                other = (index + 1, line[found[1].start():])
                break

    hardware = next((r.hardware_name for r in unique if r.hardware_name), None)
    if hardware is None:
        for line in lines:
            match = _HARDWARE_RE.search(line)
            if match:
                hardware = match.group("hw").strip()
                break
    environment, hypervisor = classify_hardware(hardware)
    if environment == "unknown":
        for line in lines:
            for regex in _HYPERVISOR_LINE_RES:
                match = regex.search(line)
                if match and "bare hardware" not in match.group("hv"):
                    environment, hypervisor = "guest", match.group("hv").strip()
                    break
            if environment != "unknown":
                break
    release = next((r.release for r in unique if r.release), None)
    return LogFacts(unique, other, release, hardware, environment, hypervisor)


def _same_fault(first: DfReport, second: DfReport) -> bool:
    return (
        second.line - first.line < _MAX_BLOCK_LINES
        and first.regs.rsp == second.regs.rsp
        and first.regs.rip == second.regs.rip
        and first.regs.rip_symbol == second.regs.rip_symbol
        and first.pid == second.pid
    )
