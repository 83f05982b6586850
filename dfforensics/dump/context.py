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
from dfforensics.core.kernel_facts import Version
from dfforensics.core.model import KernelInfo
from dfforensics.logs.consolelog import LogFacts

__all__ = ("kernel_release", "kernel_version", "guest_context", "hypervisor_seen", "confidential_guest")

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
            return "guest", "unnamed, CPUID hypervisor bit set"
        return "bare-metal", "none, no CPUID hypervisor bit"
    except (LookupError, drgn.FaultError):
        return "unknown", None


# MSR_AMD64_SEV (0xc0010131) bits the kernel keeps in sev_status: SEV, SEV-ES, SEV-SNP
# (arch/x86/include/asm/msr-index.h MSR_AMD64_SEV_*_ENABLED_BIT 0/1/2; AMD APM vol. 2 15.34.10).
_SEV_BITS = ((2, "SEV-SNP"), (1, "SEV-ES"), (0, "SEV"))


def confidential_guest(prog: Program) -> Optional[str]:
    """Say whether the dumped guest ran as a confidential VM whose CPU state the hypervisor
    cannot write (AMD SEV-ES/SNP: the VMSA is encrypted, KVM takes CPL from the GHCB; Intel
    TDX: the TDX module owns it), or ``None`` when the dump shows no such guest.

    Read from the kernel's own state: ``sev_status`` (the SEV MSR as the guest read it;
    CONFIG_AMD_MEM_ENCRYPT, 5.10+) and ``cc_vendor`` (arch/x86/coco/core.c, named through
    its DWARF enum). Plain SEV encrypts memory only: the hypervisor still writes the
    register state, so it is reported but is not such a guest.
    """
    try:
        status = int(prog["sev_status"])
    except (LookupError, drgn.FaultError, TypeError):
        status = 0
    for bit, name in _SEV_BITS:
        if status >> bit & 1:
            return f"AMD {name} (sev_status {status:#x})" if bit else None
    try:
        vendor = prog["cc_vendor"]
        names = {value: name for name, value in vendor.type_.type.enumerators} \
            if vendor.type_.kind == drgn.TypeKind.TYPEDEF else \
            {value: name for name, value in vendor.type_.enumerators}
        if names.get(int(vendor)) == "CC_VENDOR_INTEL":
            return "Intel TDX (cc_vendor CC_VENDOR_INTEL)"
    except (LookupError, drgn.FaultError, TypeError, AttributeError):
        pass
    return None


def kernel_release(prog: Program) -> Optional[str]:
    """The kernel's release (``UTS_RELEASE``), or None when the dump does not say."""
    try:
        return prog["UTS_RELEASE"].string_().decode()
    except (LookupError, drgn.FaultError, UnicodeDecodeError):
        return None


def kernel_version(prog: Program) -> Optional[Version]:
    """The kernel's version, parsed from its release: what kernel facts are looked up with."""
    release = kernel_release(prog)
    return kernel_facts.parse_release(release) if release else None


def _uptime(prog: Program) -> Optional[float]:
    """Seconds since boot from the timekeeper (3.17+: tk_core.timekeeper.ktime_sec).

    The last kernel log record's time is not the uptime (a quiet guest logs
    nothing for hours), so it is not used.
    """
    try:
        return float(prog["tk_core"].timekeeper.ktime_sec)
    except (LookupError, AttributeError, drgn.FaultError):
        return None


def _cpu_identity(prog: Program) -> tuple[Optional[str], Optional[str]]:
    try:
        cpu = prog["boot_cpu_data"]
        return (cpu.x86_vendor_id.string_().decode(errors="replace") or None,
                cpu.x86_model_id.string_().decode(errors="replace").strip() or None)
    except (LookupError, drgn.FaultError):
        return None, None


def _possible_cpus(prog: Program) -> Optional[int]:
    try:
        return sum(1 for _ in for_each_possible_cpu(prog))
    except (LookupError, drgn.FaultError):
        return None


def guest_context(prog: Program, log: LogFacts) -> KernelInfo:
    """Read the guest's context from the dump, completed by what its own kernel log says."""
    release = kernel_release(prog)
    version = kernel_facts.parse_release(release) if release else None
    environment, hypervisor = hypervisor_seen(prog)
    if environment == "unknown" and log.environment != "unknown":
        environment, hypervisor = log.environment, log.hypervisor
    vendor, model = _cpu_identity(prog)
    return KernelInfo(
        release=release, arch="x86_64", hardware_name=log.hardware_name, environment=environment,
        hypervisor=hypervisor, cpus=_possible_cpus(prog), cpu_vendor=vendor, cpu_model=model,
        uptime_seconds=_uptime(prog),
        sysret_ss_workaround=kernel_facts.value_for(kernel_facts.SYSRET_SS_WORKAROUND, version),
    )
