"""
Rebuild VMCOREINFO
------------------

A QEMU dump of a guest run without ``-device vmcoreinfo`` carries no
VMCOREINFO, and drgn cannot open it without one. This rebuilds the note
from VMLINUX and the guest's physical memory: where the kernel was loaded,
and its KASLR offset.
"""

from typing import Callable, Final, Optional

from elftools.common.exceptions import ELFError

from dfforensics.core import x86
from dfforensics.inputs.elffacts import CorePhysicalMemory, VmlinuxFacts, kernel_load_address
from dfforensics.core.errors import DumpError, ErrorKind

__all__ = ("rebuild_vmcoreinfo",)


_HUGE_2M: Final = 1 << 21


def _kernel_text_virtual(read: Callable[[int, int], Optional[bytes]], pgd_physical: int,
                         text_physical: int) -> Optional[int]:
    """Find the virtual address at which init_top_pgt maps the kernel's first 2 MiB page."""
    def entry(table: int, index: int) -> Optional[int]:
        data = read(table + 8 * index, 8)
        return int.from_bytes(data, "little") if data else None

    pud_entry = entry(pgd_physical, (x86.START_KERNEL_MAP >> 39) & 511)
    if not pud_entry or not pud_entry & x86.PTE_PRESENT:
        return None
    for pud_index in range((x86.START_KERNEL_MAP >> 30) & 511, 512):
        pmd_entry = entry(pud_entry & x86.PTE_ADDRESS_MASK, pud_index)
        if not pmd_entry or not pmd_entry & x86.PTE_PRESENT:
            continue
        table = read(pmd_entry & x86.PTE_ADDRESS_MASK, 4096)
        if table is None:
            continue
        for index in range(512):
            value = int.from_bytes(table[8 * index:8 * index + 8], "little")
            if value & (x86.PTE_PRESENT | x86.PTE_HUGE) == x86.PTE_PRESENT | x86.PTE_HUGE and \
                    value & x86.PTE_ADDRESS_MASK & ~(_HUGE_2M - 1) == text_physical:
                return (0xFFFF << 48) | (511 << 39) | (pud_index << 30) | (index << 21)
    return None


def rebuild_vmcoreinfo(vmcore: str, facts: VmlinuxFacts) -> tuple[bytes, str]:
    """Build the VMCOREINFO drgn needs from VMLINUX and guest memory.

    1. Where the kernel sits in guest-physical memory: VMLINUX's own
       ``linux_banner`` is looked for at every 2 MiB-aligned load address
       (the kernel is loaded 2 MiB aligned, randomized or not).
    2. Where it sits virtually (the KASLR offset): ``init_top_pgt``, read at
       its physical address, maps the kernel text with 2 MiB pages; the slot
       that maps the text's physical page gives the virtual address.
    Returns the note and a sentence saying how it was rebuilt. Supports
    x86_64 kernels with 4-level paging, with or without KASLR.
    """
    if not facts.banner or "linux_banner" not in facts.symbols or not facts.release:
        raise DumpError("the dump has no VMCOREINFO and VMLINUX has no linux_banner to rebuild it from",
                        ErrorKind.NO_VMCOREINFO)
    pgd = facts.symbols.get("init_top_pgt") or facts.symbols.get("swapper_pg_dir")
    text = facts.symbols.get("_text")
    if pgd is None or text is None:
        raise DumpError("the dump has no VMCOREINFO and VMLINUX has no init_top_pgt/_text",
                        ErrorKind.NO_VMCOREINFO)
    try:
        memory = CorePhysicalMemory(vmcore)
    except (ELFError, OSError) as error:
        raise DumpError(f"VMCORE {vmcore}: not an ELF core ({error})", ErrorKind.NOT_A_DUMP) from None
    with memory:
        return _rebuild_from_memory(memory.read, facts, pgd, text)


def _rebuild_from_memory(read: Callable[[int, int], Optional[bytes]], facts: VmlinuxFacts,
                         pgd: int, text: int) -> tuple[bytes, str]:
    assert facts.banner is not None
    load = kernel_load_address(read, facts)
    if load is None:
        raise DumpError("the dump has no VMCOREINFO, and VMLINUX's linux_banner is nowhere in guest "
                        "memory at a 2 MiB-aligned load address: VMLINUX is not this kernel's",
                        ErrorKind.NO_VMCOREINFO)
    banner_physical = load + facts.symbols["linux_banner"] - text
    virtual_text = _kernel_text_virtual(read, load + (pgd - text), load)
    if virtual_text is None:
        raise DumpError("the dump has no VMCOREINFO; VMLINUX's banner is in guest memory at "
                        f"physical {banner_physical:#x}, but the kernel page tables "
                        "there do not map it: cannot rebuild the KASLR layout",
                        ErrorKind.NO_VMCOREINFO)
    offset = virtual_text - text
    phys_base = load - (virtual_text - x86.START_KERNEL_MAP)
    note = (f"OSRELEASE={facts.release}\nPAGESIZE=4096\nKERNELOFFSET={offset:x}\n"
            f"SYMBOL(swapper_pg_dir)={pgd + offset:x}\nNUMBER(phys_base)={phys_base}\n"
            f"NUMBER(pgtable_l5_enabled)=0\n")
    if facts.build_id:
        note += f"BUILD-ID={facts.build_id}\n"
    how = (f"the dump has no VMCOREINFO; rebuilt from VMLINUX and guest memory: its "
           f"linux_banner is at physical {banner_physical:#x} (kernel loaded at "
           f"{load:#x}), and init_top_pgt maps the text at {virtual_text:#x} "
           f"(KASLR offset {offset:#x}, phys_base {phys_base:#x})")
    return note.encode(), how
