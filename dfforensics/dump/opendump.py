"""
Open the dump
-------------

Turn the user's VMCORE and VMLINUX paths into a drgn :class:`~drgn.Program`:
take their uncompressed copies (:mod:`dfforensics.inputs.formats`), read VMCOREINFO,
rebuild it from VMLINUX when the dump has none (QEMU dumps of guests without
``-device vmcoreinfo``), and check that VMLINUX belongs to the dump.

Every failure is a :class:`DumpError` whose message is shown to the user as is.
Input files are only ever opened for reading.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Optional, Sequence

import drgn

from dfforensics.core.errors import DumpError, ErrorKind
from dfforensics.inputs.formats import (
    DUMP_LEVEL_USER_DATA,
    DUMP_LEVEL_ZERO_PAGES,
    check_input_file,
    check_vmcoreinfo,
    decompressed,
    discard_cached,
    parse_vmcoreinfo,
    read_dump_format,
    read_kdump_header,
    reassembled,
)

if TYPE_CHECKING:
    from dfforensics.inputs.elffacts import VmlinuxFacts

__all__ = (
    "DUMP_LEVEL_USER_DATA",
    "DUMP_LEVEL_ZERO_PAGES",
    "DumpError",
    "OpenedDump",
    "open_dump",
)


@dataclass
class OpenedDump:
    """A program ready for analysis, and what was done to open it."""

    prog: drgn.Program
    vmcore: str
    #: The debug vmlinux's path, or None when types and symbols come from the guest.
    vmlinux: Optional[str]
    vmcoreinfo_source: str
    notes: list[str] = field(default_factory=list)
    format: str = "elf"
    dump_level: Optional[int] = None
    #: Where the types and symbols come from, as the report says it.
    debug_info: str = "DWARF from VMLINUX"


def _library_error(what: str, error: Exception, kind: ErrorKind) -> DumpError:
    """A libelf/libdw/libkdumpfile failure, which libdrgn gives as a bare Exception with
    only its text: their "out of memory" is the memory cap's doing, not the input's."""
    if "out of memory" in str(error).lower():
        kind = ErrorKind.MEMORY
    return DumpError(f"{what} ({error})", kind)


def _check_release_match(prog: drgn.Program, facts: "VmlinuxFacts", vmcore: str, vmlinux: str) -> None:
    release = parse_vmcoreinfo(prog["VMCOREINFO"].string_()).release
    if release and facts.release and release != facts.release:
        raise DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: kernel "
                        f"{facts.release} != the dump's {release}", ErrorKind.MISMATCH)


def _check_release_in_memory(prog: drgn.Program, vmcore: str) -> None:
    """Refuse a VMCOREINFO whose OSRELEASE is not the release of the kernel in memory.

    Where the build IDs match, VMLINUX is the dump's kernel whatever OSRELEASE says,
    so nothing else compares them; but the analysis picks its per-version kernel
    facts by that release. The kernel's own ``linux_banner`` (now that VMLINUX
    says where it is) names the true one.
    """
    from dfforensics.inputs.elffacts import release_from_banner

    release = parse_vmcoreinfo(prog["VMCOREINFO"].string_()).release
    if not release:
        return
    try:
        banner = prog.read(prog.symbol("linux_banner").address, 256).split(b"\0")[0]
    except (drgn.FaultError, LookupError):
        return  # not in the dump: nothing to compare with
    actual = release_from_banner(banner) if banner.startswith(b"Linux version ") else None
    if actual and actual != release:
        raise DumpError(f"VMCORE {vmcore}: corrupt VMCOREINFO: OSRELEASE {release} is not the release "
                        f"of the kernel in its memory, {actual} (its linux_banner)", ErrorKind.CORRUPT_DUMP)


def _check_banner_match(prog: drgn.Program, facts: "VmlinuxFacts", vmcore: str, vmlinux: str) -> None:
    if facts.banner:
        try:
            # drgn relocates the symbol by the dump's KASLR offset.
            in_memory = prog.read(prog.symbol("linux_banner").address, len(facts.banner))
        except (drgn.FaultError, LookupError):
            return
        if in_memory != facts.banner:
            theirs = in_memory.split(b"\0")[0].decode(errors="replace")[:80]
            ours = facts.banner.decode(errors="replace")[:80]
            raise DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: its banner "
                            f"'{ours}' is not the dump's '{theirs}'", ErrorKind.MISMATCH)


def _rejected_vmlinux(kernel: drgn.Module, vmlinux_path: str, vmcore: str, vmlinux: str) -> DumpError:
    """Say why drgn did not take VMLINUX as the kernel's debug info (pyelftools reads why)."""
    from dfforensics.inputs.elffacts import vmlinux_facts

    facts = vmlinux_facts(vmlinux_path, vmlinux)  # raises for non-ELF, foreign, stripped or DWARF-less files
    if kernel.build_id is not None and facts.build_id and facts.build_id.lower() != kernel.build_id.hex():
        return DumpError(f"VMLINUX {vmlinux} does not belong to VMCORE {vmcore}: build ID "
                         f"{facts.build_id} != the dump's {kernel.build_id.hex()}", ErrorKind.MISMATCH)
    return DumpError(f"VMLINUX {vmlinux}: drgn does not accept it as debug info for the dump's kernel",
                     ErrorKind.DEBUGINFO)


def _kernel_module(prog: drgn.Program) -> drgn.Module:
    """The kernel's module, as drgn makes it: with the build ID named by VMCOREINFO.

    Only the first of the loaded modules is taken: enumerating the others
    needs the kernel's debug info, which is not loaded yet.
    """
    for module, _ in prog.loaded_modules():
        if isinstance(module, drgn.MainModule):
            return module
        break
    return prog.main_module("kernel", create=True)


def _load_vmlinux(prog: drgn.Program, vmlinux_path: str, facts: Optional["VmlinuxFacts"],
                  vmcore: str, vmlinux: str) -> None:
    """Load VMLINUX as the kernel's debug info, refusing one that is not the dump's kernel.

    Where the dump names its kernel's build ID (VMCOREINFO ``BUILD-ID``,
    Linux 5.9 and later), drgn matches it against VMLINUX's own; pyelftools is
    then only needed to explain a refusal. Older kernels' dumps are matched
    by release and ``linux_banner``, read from VMLINUX with pyelftools.
    """
    kernel = _kernel_module(prog)
    if kernel.build_id is None and facts is None:
        from dfforensics.inputs.elffacts import vmlinux_facts

        facts = vmlinux_facts(vmlinux_path, vmlinux)
    if facts is not None:
        # Before loading, so that drgn never gets (and warns about) a foreign vmlinux.
        _check_release_match(prog, facts, vmcore, vmlinux)
    try:
        kernel.try_file(vmlinux_path)
    except OSError as error:
        raise DumpError(f"VMLINUX {vmlinux}: {error.strerror or error}", ErrorKind.DEBUGINFO) from None
    except Exception as error:  # libdrgn's bare Exception for libelf/libdw failures
        raise _library_error(f"VMLINUX {vmlinux}: unreadable debug info", error,
                             ErrorKind.DEBUGINFO) from None
    if kernel.wants_debug_file():
        raise _rejected_vmlinux(kernel, vmlinux_path, vmcore, vmlinux)
    if facts is not None:
        _check_banner_match(prog, facts, vmcore, vmlinux)
    _check_dwarf_readable(prog, vmlinux)


def _check_dwarf_readable(prog: drgn.Program, vmlinux: str) -> None:
    """drgn indexes DWARF on the first lookup: corrupt debug info would be a bare
    libdw Exception in the middle of the analysis. The lookup is one the
    analysis makes anyway, so the index is built here at no cost."""
    try:
        prog.type("struct pt_regs")
    except LookupError:
        pass  # readable DWARF without it: the analysis says what it misses
    except Exception as error:  # libdrgn's bare Exception for libelf/libdw failures
        raise _library_error(f"VMLINUX {vmlinux}: unreadable debug info", error,
                             ErrorKind.DEBUGINFO) from None


def _check_kdump_header(path: str, vmcore: str) -> None:
    """libkdumpfile maps what a kdump header points at: a range past the file's end
    would be SIGBUS in drgn, so the header is checked first."""
    dump_format, _ = read_dump_format(path)
    if dump_format == "kdump-compressed":
        read_kdump_header(path, shown=vmcore)


def _program_from_vmcoreinfo(vmcore_path: str, vmlinux_path: str, vmcore: str, vmlinux: str
                             ) -> tuple[drgn.Program, "VmlinuxFacts", str]:
    """A program for a dump without VMCOREINFO, with the note rebuilt from VMLINUX."""
    from dfforensics.dump.rebuildvmcoreinfo import rebuild_vmcoreinfo
    from dfforensics.inputs.elffacts import vmlinux_facts

    facts = vmlinux_facts(vmlinux_path, vmlinux)
    vmcoreinfo, how = rebuild_vmcoreinfo(vmcore_path, facts)
    prog = drgn.Program(vmcoreinfo=vmcoreinfo)
    try:
        prog.set_core_dump(vmcore_path)
    except (ValueError, OSError, drgn.FaultError) as again:
        raise DumpError(f"VMCORE {vmcore}: {again}", ErrorKind.CORRUPT_DUMP) from None
    return prog, facts, how


@dataclass
class _Core:
    """The dump as drgn opened it, before any debug info."""

    prog: drgn.Program
    facts: Optional["VmlinuxFacts"] = None
    rebuilt_how: Optional[str] = None


def _open_core(vmcore_path: str, vmlinux_path: str, vmcore: str, vmlinux: str) -> _Core:
    """Open the dump itself; identified before VMLINUX is read, so that a bad dump
    is the error the user sees."""
    _check_kdump_header(vmcore_path, vmcore)
    prog = drgn.Program()
    try:
        prog.set_core_dump(vmcore_path)
        core = _Core(prog)
    except ValueError as error:
        if "vmcoreinfo" not in str(error).lower() and "QEMU" not in str(error):
            raise DumpError(f"VMCORE {vmcore}: {error}", ErrorKind.NOT_A_DUMP) from None
        core = _Core(*_program_from_vmcoreinfo(vmcore_path, vmlinux_path, vmcore, vmlinux))
    except OSError as error:
        raise DumpError(f"VMCORE {vmcore}: {error.strerror or error}") from None
    except drgn.FaultError as error:
        raise DumpError(f"VMCORE {vmcore}: truncated or corrupt ({error})", ErrorKind.CORRUPT_DUMP) from None
    except Exception as error:  # libdrgn reports libelf/libkdumpfile failures as bare Exception
        raise _library_error(f"VMCORE {vmcore}: truncated or corrupt", error,
                             ErrorKind.CORRUPT_DUMP) from None
    _check_linux_x86_64(core.prog, vmcore)
    check_vmcoreinfo(core.prog["VMCOREINFO"].string_(), vmcore)
    return core


def _check_linux_x86_64(prog: drgn.Program, vmcore: str) -> None:
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise DumpError(f"VMCORE {vmcore}: not a Linux kernel dump (a user-space core?)",
                        ErrorKind.NOT_A_DUMP)
    arch = prog.platform.arch if prog.platform is not None else None
    if arch != drgn.Architecture.X86_64:
        name = arch.name if arch is not None else "unknown"
        raise DumpError(f"VMCORE {vmcore}: a dump of an {name} kernel; dfforensics reads "
                        "x86_64 guests only", ErrorKind.NOT_A_DUMP)


def _check_module_file(path: str, shown: str) -> None:
    """drgn passes over a file that is not ELF without a word: say so instead."""
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise DumpError(f"module debug info {shown}: cannot read: {error.strerror or error}",
                        ErrorKind.DEBUGINFO) from None
    if magic != b"\x7fELF":
        raise DumpError(f"module debug info {shown}: not an ELF file", ErrorKind.DEBUGINFO)


def _load_modules(prog: drgn.Program, module_paths: Sequence[str]) -> None:
    try:
        # Also finds the loaded kernel modules, for the ones given and for symbolizing the rest.
        prog.load_debug_info(module_paths)
    except drgn.MissingDebugInfoError:
        pass  # modules without debug info are fine: the analysis needs vmlinux
    except (OSError, ValueError) as error:
        raise DumpError(f"module debug info: {error}", ErrorKind.DEBUGINFO) from None
    except Exception as error:  # libdrgn's bare Exception for libelf/libdw failures
        raise _library_error("module debug info: unreadable", error, ErrorKind.DEBUGINFO) from None


# The errors that condemn the file itself; a vmlinux of another kernel, a
# memory cap or a failed VMCOREINFO rebuild say nothing against it.
_UNUSABLE: Final = frozenset({ErrorKind.NOT_A_DUMP, ErrorKind.CORRUPT_DUMP, ErrorKind.DEBUGINFO})


class _Rejecting:
    """Removes the cache copies of an input when a step finds it unusable: what
    the cache keeps is only ever an input that could be used."""

    def __init__(self, *paths: str) -> None:
        self.paths = paths

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], trace: object) -> None:
        if isinstance(error, DumpError) and error.kind in _UNUSABLE:
            for path in self.paths:
                discard_cached(path)


def open_dump(vmcore: str, vmlinux: str, module_debuginfo: Sequence[str] = ()) -> OpenedDump:
    """Open a guest crash dump with its debug info.

    :raises DumpError: on unreadable, unrecognised or mismatched inputs.
    """
    plain_path = decompressed(vmcore, "VMCORE")
    with _Rejecting(plain_path):
        vmcore_path = reassembled(plain_path)
    vmlinux_path = decompressed(vmlinux, "VMLINUX")
    module_paths = [decompressed(path, "module debug info") for path in module_debuginfo]
    with _Rejecting(plain_path, vmcore_path):
        core = _open_core(vmcore_path, vmlinux_path, vmcore, vmlinux)
    with _Rejecting(vmlinux_path):
        _load_vmlinux(core.prog, vmlinux_path, core.facts, vmcore, vmlinux)
    with _Rejecting(plain_path, vmcore_path):
        _check_release_in_memory(core.prog, vmcore)
    with _Rejecting(*module_paths):
        for path, shown in zip(module_paths, module_debuginfo):
            _check_module_file(path, shown)
        _load_modules(core.prog, module_paths)
    notes = [core.rebuilt_how] if core.rebuilt_how else []
    source = "rebuilt from VMLINUX" if core.rebuilt_how else "the dump's VMCOREINFO note"
    dump_format, dump_level, format_notes = _dump_format(plain_path, vmcore_path)
    return OpenedDump(core.prog, vmcore_path, vmlinux_path, source, notes + format_notes, dump_format,
                      dump_level)


def _dump_format(plain_path: str, vmcore_path: str) -> tuple[str, Optional[int], list[str]]:
    dump_format, dump_level = read_dump_format(vmcore_path)
    if vmcore_path == plain_path:
        return dump_format, dump_level, []
    return "flattened", dump_level, ["the dump is makedumpfile's flattened format; it was reassembled "
                                     "into the cache (what 'makedumpfile -R' does)"]


def open_dump_from_guest(vmcore: str, btf: Optional[str] = None) -> OpenedDump:
    """Open a guest crash dump with no vmlinux: symbols from its kallsyms, types from its
    BTF (or ``btf``, a detached BTF file of the same build). x86_64 kernels with
    CONFIG_KALLSYMS_ALL (kallsyms named by VMCOREINFO from 6.0, searched for before); the
    kernel needs CONFIG_DEBUG_INFO_BTF unless ``btf`` is given.

    :raises DumpError: when the dump, its kallsyms or its BTF cannot be used.
    """
    from dfforensics.dump.guestdebuginfo import open_dump_without_vmlinux

    plain_path = decompressed(vmcore, "VMCORE")
    with _Rejecting(plain_path):
        vmcore_path = reassembled(plain_path)
    if btf is not None:
        check_input_file(btf, "BTF")
    with _Rejecting(plain_path, vmcore_path):
        _check_kdump_header(vmcore_path, vmcore)
        try:
            prog, how = open_dump_without_vmlinux(vmcore_path, btf)
        except DumpError as error:
            # Name the user's file, not its decompressed copy in the cache.
            raise DumpError(str(error).replace(vmcore_path, vmcore), error.kind) from None
    dump_format, dump_level, notes = _dump_format(plain_path, vmcore_path)
    return OpenedDump(prog, vmcore_path, None, "the dump's VMCOREINFO note", notes, dump_format,
                      dump_level, debug_info=how)
