"""
Guest context
-------------

What a triager wants on the first screen: kernel release, CPU vendor and
model, the hypervisor as the guest saw it, CPU count, uptime, and whether the
guest kernel carries the AMD SYSRET SS workaround.
"""

from typing import Optional

import drgn
from drgn import Program
from drgn.helpers.linux.cpumask import for_each_possible_cpu

from dfforensics.core import kernel_facts
from dfforensics.core.model import KernelInfo

__all__ = ("guest_context", "hypervisor_seen")

# X86_FEATURE_HYPERVISOR: CPUID.1:ECX bit 31, word 4 of x86_capability (all eras).
_HYPERVISOR_WORD, _HYPERVISOR_BIT = 4, 31


def hypervisor_seen(prog: Program) -> tuple[str, Optional[str]]:
    """Return (environment, hypervisor name) as the guest kernel saw it.

    ``x86_hyper_type`` (4.15+; ``x86_hyper`` before) names a hypervisor the
    kernel recognised; the CPUID hypervisor bit says one is there even when
    the kernel did not recognise it (e.g. QEMU TCG).
    """
    try:
        hyper = prog["x86_hyper_type"]
        name = prog.type("enum x86_hypervisor_type").enumerators[int(hyper)].name
        if name != "X86_HYPER_NATIVE":
            return "guest", name.removeprefix("X86_HYPER_")
    except (LookupError, IndexError, drgn.FaultError):
        pass
    try:
        caps = prog["boot_cpu_data"].x86_capability
        if int(caps[_HYPERVISOR_WORD]) >> _HYPERVISOR_BIT & 1:
            return "guest", "unnamed (CPUID hypervisor bit set)"
        return "bare-metal", "none (no CPUID hypervisor bit)"
    except (LookupError, drgn.FaultError):
        return "unknown", None


def _sysret_ss_workaround(prog: Program, release: Optional[str]) -> Optional[bool]:
    """Whether the guest kernel has X86_BUG_SYSRET_SS_ATTRS (4.1+), by version."""
    version = kernel_facts.parse_release(release) if release else None
    facts = kernel_facts.facts_for(kernel_facts.SYSRET_SS_WORKAROUND, version)
    return facts[0].value if version is not None and facts else None


def _uptime(prog: Program) -> Optional[float]:
    """Seconds since boot from the timekeeper (3.17+: tk_core.timekeeper.ktime_sec).

    The last kernel log record's time is not the uptime (a quiet guest logs
    nothing for hours), so it is not used.
    """
    try:
        return float(prog["tk_core"].timekeeper.ktime_sec)
    except (LookupError, AttributeError, drgn.FaultError):
        return None


def guest_context(prog: Program) -> KernelInfo:
    """Read the guest's context from the dump."""
    info = KernelInfo(arch="x86_64")
    try:
        info.release = prog["UTS_RELEASE"].string_().decode()
    except (LookupError, drgn.FaultError):
        pass
    try:
        cpu = prog["boot_cpu_data"]
        info.cpu_vendor = cpu.x86_vendor_id.string_().decode(errors="replace") or None
        info.cpu_model = cpu.x86_model_id.string_().decode(errors="replace").strip() or None
    except (LookupError, drgn.FaultError):
        pass
    try:
        info.cpus = sum(1 for _ in for_each_possible_cpu(prog))
    except (LookupError, drgn.FaultError):
        pass
    info.environment, info.hypervisor = hypervisor_seen(prog)
    info.uptime_seconds = _uptime(prog)
    info.sysret_ss_workaround = _sysret_ss_workaround(prog, info.release)
    return info
