"""
Debug info from the guest itself
--------------------------------

Open a dump with no vmlinux: symbols from the kernel's own kallsyms tables, types from
its BTF, handed to drgn through a type finder and an object finder so that drgn's own
helpers (``for_each_task``, ``find_task``, ``vma_find``, ``follow_phys``, ``per_cpu``,
``get_dmesg``, ``task_cpu`` ...) run unchanged on top of them.

- Symbols: drgn's ``load_vmlinux_kallsyms`` reads the tables VMCOREINFO names (Linux
  6.0+, or a backport of commit f09bddbd86619 "vmcoreinfo: add kallsyms_num_syms
  symbol"). Before 6.0 the tables are found by their structure in the kernel image's
  read-only data (:mod:`dfforensics.inputs.kallsyms`, :mod:`dfforensics.dump.kernelimage`),
  checked against what the dump says elsewhere (VMCOREINFO's symbols, ``linux_banner``,
  then ``init_task`` and ``init_uts_ns`` through the BTF), and read by drgn's own
  kallsyms loader; a search that fails or finds two candidates is an error, never a guess.
- Types: BTF (:mod:`dfforensics.inputs.btf`), from guest memory between ``__start_BTF``
  and ``__stop_BTF`` (``CONFIG_DEBUG_INFO_BTF``; where kallsyms lacks them, the one BTF
  header in the kernel's read-only data) or from a detached file made by
  ``pahole --btf_encode_detached`` from the same build. drgn types are made only for
  the BTF types asked for, once each; struct members are lazy.
- Objects: a global's address is its kallsyms address; its type is its BTF ``VAR``
  (pahole encodes the per-CPU variables, in the ``.data..percpu`` DATASEC; with
  ``--btf_features=global_var`` all of them) or, for the few the analysis and drgn's
  helpers read that BTF does not type, its declaration in :data:`UNTYPED_GLOBALS`.
  Functions are typed by their BTF ``FUNC``, enumerators are constants.

Every offset comes from the BTF; nothing here knows a struct layout. A name BTF and the
table do not type is not found (drgn raises LookupError), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Final, Optional

import drgn
from drgn import FindObjectFlags, Object, Program, Qualifiers, Type, TypeKind, TypeKindSet

from dfforensics.core.errors import DumpError, ErrorKind
from dfforensics.core.kernel_facts import KALLSYMS_LAYOUT, KALLSYMS_LONG_NAMES, parse_release, value_for
from dfforensics.inputs.btf import Btf, BtfError, BtfType, Kind, find_btf_blobs, load_btf
from dfforensics.inputs.kallsymsindex import (
    KallsymsAddresses,
    KallsymsAnswers,
    KallsymsEntry,
    KallsymsIndex,
    KallsymsIndexError,
    answers_bytes,
    decode_addresses,
    find_markers,
    parse_answers,
    read_tokens,
)

if TYPE_CHECKING:
    from dfforensics.inputs.kallsyms import Kallsyms, KallsymsTables

__all__ = (
    "DEBUG_INFO_SOURCE",
    "GuestDebugInfo",
    "KallsymsFinder",
    "UNTYPED_GLOBALS",
    "btf_from_memory",
    "kallsyms_finder",
    "keep_answers",
    "open_dump_without_vmlinux",
    "use_guest_debug_info",
)

# What the report names as its debug-info source (issue 19).
DEBUG_INFO_SOURCE: Final = "BTF and kallsyms from guest memory"
DETACHED_SOURCE: Final = "BTF from {path} and kallsyms from guest memory"

# Globals that pahole's default BTF (per-CPU variables only) leaves untyped, and that the
# analysis or drgn 0.3.0's helpers read, with their declaration in the kernel source
# (the same in 6.1 and 6.12; each is checked against the kallsyms symbol's extent):
UNTYPED_GLOBALS: Final[dict[str, str]] = {
    # init/init_task.c: for_each_task() walks init_task.tasks.
    "init_task": "struct task_struct",
    # kernel/pid.c: find_task() looks the pid up in init_pid_ns.idr.
    "init_pid_ns": "struct pid_namespace",
    # kernel/printk/printk.c (5.10+, the lockless ring buffer): get_dmesg().
    "prb": "struct printk_ringbuffer *",
    # arch/x86/kernel/setup_percpu.c, NR_CPUS entries: per_cpu(). (The arrays here have no
    # length: NR_CPUS and IDT_ENTRIES are not in BTF, and indexing needs none.)
    "__per_cpu_offset": "unsigned long []",
    # kernel/cpu.c: for_each_possible_cpu(), for_each_online_cpu(), ...
    "__cpu_possible_mask": "struct cpumask",
    "__cpu_online_mask": "struct cpumask",
    "__cpu_present_mask": "struct cpumask",
    "__cpu_active_mask": "struct cpumask",
    # kernel/smp.c: the CPU count drgn's cpumask helpers stop at.
    "nr_cpu_ids": "unsigned int",
    # kernel/module/main.c (kernel/module.c before 5.19): drgn's loaded_modules() and
    # for_each_module() walk it; the analysis names the module a RIP is in.
    "modules": "struct list_head",
    # mm/init-mm.c: the kernel's page tables.
    "init_mm": "struct mm_struct",
    # arch/x86/kernel/idt.c, IDT_ENTRIES gates: the #DF gate's IST index.
    "idt_table": "gate_desc []",
    # arch/x86/kernel/setup.c: CPUID of the boot CPU (vendor, hypervisor bit).
    "boot_cpu_data": "struct cpuinfo_x86",
    # arch/x86/kernel/cpu/hypervisor.c (4.15+).
    "x86_hyper_type": "enum x86_hypervisor_type",
    # arch/x86/kernel/head64.c (4.13+, CONFIG_X86_5LEVEL): whether page tables have 5 levels.
    "__pgtable_l5_enabled": "unsigned int",
    # kernel/panic.c: the CPU that panicked (atomic_t).
    "panic_cpu": "atomic_t",
    # kernel/time/jiffies.c.
    "jiffies_64": "u64",
    "jiffies": "volatile unsigned long",  # include/linux/jiffies.h
    # mm/sparse.c (CONFIG_SPARSEMEM_EXTREME): pfn_to_section().
    "mem_section": "struct mem_section **",
    # arch/x86/kernel/e820.c / mm: the highest page frame.
    "max_pfn": "unsigned long",
}
# kernel/time/timekeeping.c declares tk_core with an anonymous struct type: it is found by
# its member names, and only when exactly one anonymous struct has them.
ANONYMOUS_GLOBALS: Final[dict[str, tuple[str, ...]]] = {
    "tk_core": ("seq", "timekeeper"),
}

_BTF_START: Final = "__start_BTF"
_BTF_STOP: Final = "__stop_BTF"
# The kernel image's read-only data, once read (kernelimage.ReadOnlyData), and the kallsyms
# found in it (inputs.kallsyms.Kallsyms), in prog.cache.
_RODATA_CACHE: Final = "dfforensics_rodata"
_KALLSYMS_CACHE: Final = "dfforensics_kallsyms"
# The KallsymsFinder of a program, in prog.cache (keep_answers writes what it found).
_FINDER_CACHE: Final = "dfforensics_kallsyms_finder"
# The GuestDebugInfo of a program, in prog.cache (keep_answers writes what its BTF found).
_GUEST_CACHE: Final = "dfforensics_guest_debug_info"
# The direct map of x86_64 kernel text: virtual = physical + this + phys_base
# (arch/x86/include/asm/page_64_types.h __START_KERNEL_map).
_START_KERNEL_MAP: Final = 0xFFFFFFFF80000000


def _kind_of(found: BtfType) -> TypeKind:
    """The drgn kind a named BTF type answers to (a FWD is an incomplete struct or union)."""
    if found.kind == Kind.INT:
        return TypeKind.BOOL if found.int_encoding & 4 else TypeKind.INT
    if found.kind == Kind.FWD:
        return TypeKind.UNION if found.kind_flag else TypeKind.STRUCT
    return {Kind.STRUCT: TypeKind.STRUCT, Kind.UNION: TypeKind.UNION, Kind.ENUM: TypeKind.ENUM,
            Kind.ENUM64: TypeKind.ENUM, Kind.TYPEDEF: TypeKind.TYPEDEF, Kind.FLOAT: TypeKind.FLOAT
            }.get(found.kind, TypeKind.VOID)


def _int_words(name: str) -> tuple[str, ...]:
    """C's spelling-independent key for a base type name ("long unsigned int" == "unsigned long")."""
    words = name.split()
    if "int" in words and len(words) > 1:
        words.remove("int")
    if words == ["signed"]:
        words = ["int"]
    return tuple(sorted(words))


# The names drgn gives C's integer types (what its DWARF reader shows), by their key.
_C_NAMES: Final = {_int_words(n): n for n in (
    "char", "signed char", "unsigned char", "short", "unsigned short", "int", "unsigned int",
    "long", "unsigned long", "long long", "unsigned long long", "_Bool")}


@dataclass
class GuestDebugInfo:
    """drgn type and object finders backed by one BTF blob and the program's symbols.

    Register with :meth:`register`. Supports x86_64 kernels whose BTF and kallsyms are
    readable (BTF 4.18+; kallsyms through VMCOREINFO 6.0+, found by search before).
    """

    prog: Program
    btf: Btf
    _types: dict[int, Type] = field(default_factory=dict)
    # drgn asks its finders again for what it was given (struct task_struct once a task,
    # 56 times a verdict): answers are kept, errors are not.
    _found_types: dict[tuple[str, TypeKindSet], Optional[Type]] = field(default_factory=dict)
    _found_objects: dict[tuple[str, int], Optional[Object]] = field(default_factory=dict)

    # -- types -----------------------------------------------------------------------------

    def type(self, type_id: int) -> Type:
        """The drgn type of a BTF id, made once (0 is void)."""
        if type_id == 0:
            return self.prog.void_type()
        made = self._types.get(type_id)
        if made is None:
            made = self._make(type_id, 0)
            self._types[type_id] = made
        return made

    def _make(self, type_id: int, depth: int) -> Type:
        if depth > 64:
            raise BtfError(f"BTF {self.btf.where}: the references from type {type_id} loop")
        found = self.btf[type_id]
        prog, kind = self.prog, found.kind
        if kind in (Kind.VOLATILE, Kind.CONST, Kind.RESTRICT):
            target = self._type_at(found.type, depth)
            qualifier = {Kind.VOLATILE: Qualifiers.VOLATILE, Kind.CONST: Qualifiers.CONST,
                         Kind.RESTRICT: Qualifiers.RESTRICT}[kind]
            return target.qualified(target.qualifiers | qualifier)
        if kind == Kind.TYPE_TAG:  # an attribute (__user, __rcu, __percpu): no C type of its own
            return self._type_at(found.type, depth)
        if kind == Kind.PTR:
            return prog.pointer_type(self._type_at(found.type, depth), 8)
        if kind == Kind.TYPEDEF:
            return prog.typedef_type(found.name, self._type_at(found.type, depth))
        if kind == Kind.ARRAY:
            # BTF writes both a flexible array member (x[]) and GNU's x[0] as 0 elements;
            # DWARF (and so drgn with a vmlinux) has no length for the first, which is what
            # the kernel uses since its flexible-array conversions (5.x-6.x).
            return prog.array_type(self._type_at(found.elem_type, depth), found.nelems or None)
        if kind == Kind.INT:
            return self._int(found)
        if kind == Kind.FLOAT:
            return prog.float_type(found.name, found.size)
        if kind in (Kind.STRUCT, Kind.UNION):
            return self._compound(found)
        if kind == Kind.FWD:
            return prog.union_type(found.name) if found.kind_flag else prog.struct_type(found.name)
        if kind in (Kind.ENUM, Kind.ENUM64):
            return self._enum(found)
        if kind == Kind.FUNC_PROTO:
            return self._function(found)
        if kind == Kind.FUNC:
            return self._type_at(found.type, depth)
        raise BtfError(f"BTF {self.btf.where}: type {type_id} is a {kind.name}, not a C type")

    def _type_at(self, type_id: int, depth: int) -> Type:
        # The same cache as type(), with the depth carried for the loop check.
        if type_id == 0:
            return self.prog.void_type()
        made = self._types.get(type_id)
        if made is None:
            made = self._make(type_id, depth + 1)
            self._types[type_id] = made
        return made

    def _int(self, found: BtfType) -> Type:
        if found.int_offset or found.int_bits != 8 * found.size:
            # Legacy bitfield INTs; pahole has not written them since kind_flag (4.20).
            raise BtfError(f"BTF {self.btf.where}: type {found.id} is an INT of {found.int_bits} "
                           f"bits at bit {found.int_offset}, which is not supported")
        name = _C_NAMES.get(_int_words(found.name), found.name)
        if found.int_encoding & 4:
            return self.prog.bool_type(name, found.size)
        return self.prog.int_type(name, found.size, bool(found.int_encoding & 1))

    def _member_object(self, member_type: int, bitfield_size: int) -> Callable[[], Object | Type]:
        def make() -> Object | Type:
            member = self.type(member_type)
            if bitfield_size:
                return Object(self.prog, member, bit_field_size=bitfield_size)
            return member
        return make

    def _compound(self, found: BtfType) -> Type:
        members = [drgn.TypeMember(self._member_object(m.type, m.bitfield_size), m.name or None,
                                   m.bit_offset) for m in found.members]
        make = self.prog.union_type if found.kind == Kind.UNION else self.prog.struct_type
        return make(found.name or None, found.size, members)

    def _enum(self, found: BtfType) -> Type:
        signed = found.kind_flag or any(m.value < 0 for m in found.members)
        compatible = self.prog.int_type(
            {1: "signed char" if signed else "unsigned char", 2: "short" if signed else "unsigned short",
             4: "int" if signed else "unsigned int", 8: "long" if signed else "unsigned long"}
            .get(found.size, "int"), found.size, signed)
        return self.prog.enum_type(found.name or None, compatible,
                                   [drgn.TypeEnumerator(m.name, m.value) for m in found.members])

    def _function(self, found: BtfType) -> Type:
        params = [drgn.TypeParameter(self._lazy(p.type), p.name or None) for p in found.members]
        return self.prog.function_type(self.type(found.type), params, found.variadic)

    def _lazy(self, type_id: int) -> Callable[[], Type]:
        return lambda: self.type(type_id)

    def find_type(self, prog: Program, kinds: TypeKindSet, name: str, filename: Optional[str]) -> Optional[Type]:
        """drgn type finder: the named BTF type of one of ``kinds`` (complete ones first)."""
        if filename is not None:
            return None  # BTF records no source files
        key = (name, kinds)
        if key not in self._found_types:
            self._found_types[key] = self._named_type(kinds, name)
        return self._found_types[key]

    def _named_type(self, kinds: TypeKindSet, name: str) -> Optional[Type]:
        candidates = self.btf.ids_named(name)
        if not candidates and (TypeKind.INT in kinds or TypeKind.BOOL in kinds):
            candidates = self._int_named(name)
        best: Optional[int] = None
        for type_id in candidates:
            found = self.btf[type_id]
            if _kind_of(found) not in kinds:
                continue
            if found.kind != Kind.FWD:
                best = type_id
                break
            if best is None:
                best = type_id  # only a declaration so far; a definition later wins
        return self.type(best) if best is not None else None

    def _int_named(self, name: str) -> list[int]:
        key = _int_words(name)
        return [t.id for t in (self.btf[i] for i in self.btf.ids_of_kind(Kind.INT))
                if _int_words(t.name) == key]

    # -- objects ---------------------------------------------------------------------------

    def _address(self, name: str) -> Optional[int]:
        """The kallsyms address of a name, or None; several different ones are an error."""
        try:
            symbols = self.prog.symbols(name)
        except LookupError:
            return None
        addresses = {s.address for s in symbols}
        if len(addresses) > 1:
            raise LookupError(f"{name!r} names {len(addresses)} symbols in kallsyms "
                              "(static symbols of several files); which one is meant is unknown")
        return addresses.pop() if addresses else None

    def _declared_type(self, name: str) -> Optional[Type]:
        declaration = UNTYPED_GLOBALS.get(name)
        if declaration is not None:
            return self.prog.type(declaration)
        wanted = ANONYMOUS_GLOBALS.get(name)
        if wanted is None:
            return None
        matches = self.btf.anonymous_structs(wanted)
        if len(matches) != 1:
            raise LookupError(f"{name!r}: {len(matches)} anonymous structs in the BTF begin with "
                              f"members {', '.join(wanted)}; its type is unknown")
        return self.type(matches[0])

    def _checked_extent(self, name: str, address: int, typ: Type) -> None:
        # A declaration that does not fit between its symbol and the next one is not this
        # kernel's: refuse it rather than read past the variable.
        try:
            symbol = self.prog.symbol(address)
            size = drgn.sizeof(typ)
        except (LookupError, ValueError, TypeError):
            return
        if symbol.address == address and 0 < symbol.size < size:
            raise LookupError(f"{name!r}: its declared type ({typ}) is {size} bytes, but the "
                              f"kallsyms symbol spans {symbol.size}")

    def find_object(self, prog: Program, name: str, flags: FindObjectFlags,
                    filename: Optional[str]) -> Optional[Object]:
        """drgn object finder: globals and functions at their kallsyms address, enumerators."""
        if filename is not None:
            return None
        key = (name, flags.value)
        if key not in self._found_objects:
            self._found_objects[key] = self._named_object(prog, name, flags)
        return self._found_objects[key]

    def _named_object(self, prog: Program, name: str, flags: FindObjectFlags) -> Optional[Object]:
        if flags & FindObjectFlags.VARIABLE:
            type_id = self.btf.variable(name)
            typ = self.type(type_id) if type_id is not None else self._declared_type(name)
            if typ is not None:
                address = self._address(name)
                if address is not None:
                    self._checked_extent(name, address, typ)
                    return Object(prog, typ, address=address)
        if flags & FindObjectFlags.FUNCTION:
            funcs = self.btf.ids_named(name, [Kind.FUNC])
            if funcs:
                address = self._address(name)
                if address is not None:
                    return Object(prog, self.type(funcs[0]), address=address)
        if flags & FindObjectFlags.CONSTANT:
            found = self.btf.enumerator(name)
            if found is not None:
                return Object(prog, self.type(found[0]), found[1])
        return None

    def register(self) -> None:
        """Enable both finders first in the program's lists (drgn's own Linux finder,
        for VMCOREINFO constants like UTS_RELEASE and PAGE_SIZE, stays enabled after)."""
        self.prog.register_type_finder("guest-btf", self.find_type, enable_index=0)
        self.prog.register_object_finder("guest-btf", self.find_object, enable_index=0)


# -- where the debug info comes from ---------------------------------------------------------


def _vmcoreinfo(prog: Program) -> dict[str, str]:
    try:
        text = prog["VMCOREINFO"].string_().decode("ascii", errors="replace")
    except (LookupError, drgn.FaultError):
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def load_kallsyms(prog: Program) -> bool:
    """Make the kernel's kallsyms tables the program's symbol table.

    Linux 6.0+: VMCOREINFO names the tables (drgn's ``load_vmlinux_kallsyms`` reads
    them). Before 6.0 (2.6 to 6.0 on x86_64), they are found by their structure in the
    kernel image's read-only data (:func:`_searched_kallsyms`).

    :return: whether the tables were found by search (then :func:`check_searched_kallsyms`
        should confirm them once types are loaded).
    :raises DumpError: when the tables cannot be found, are ambiguous, or unreadable.
    """
    info = _vmcoreinfo(prog)
    searched = "SYMBOL(kallsyms_num_syms)" not in info
    try:
        index = _searched_kallsyms(prog, info) if searched else _named_kallsyms(prog, info)
    except (ValueError, LookupError, drgn.FaultError, OSError) as error:
        raise DumpError(f"the kernel's kallsyms tables are unreadable ({error})") from None
    prog.register_symbol_finder("vmlinux-kallsyms", index, enable_index=0)
    if searched:
        _check_symbol_agreement(prog, index)
    return searched


def _full_kallsyms(prog: Program) -> drgn.SymbolIndex:
    """drgn's own loader over the tables VMCOREINFO names: every name decoded and indexed."""
    from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

    read_ahead_kallsyms(prog)
    return load_vmlinux_kallsyms(prog)


def _named_kallsyms(prog: Program, info: dict[str, str]) -> Callable[..., list[drgn.Symbol]]:
    """The symbol finder for tables VMCOREINFO names (Linux 6.0+): lookups straight from
    the tables (:class:`KallsymsFinder`), or drgn's full loader where they cannot be read so."""
    try:
        finder = kallsyms_finder(prog, info)
    except (KallsymsIndexError, drgn.FaultError, IndexError):
        return _full_kallsyms(prog)
    prog.cache[_FINDER_CACHE] = finder
    return finder


def _long_kallsyms_names(release: str) -> bool:
    """Whether kallsyms_names has two-byte lengths, decided exactly as drgn decides it
    (libdrgn/kallsyms.c ``guess_long_names``: $DRGN_KALLSYMS_LONG, else release 6.1+,
    :data:`KALLSYMS_LONG_NAMES`), so both read the same table."""
    import os

    setting = os.environ.get("DRGN_KALLSYMS_LONG", "")
    if setting[:1] in ("1", "y", "Y"):
        return True
    if setting[:1] in ("0", "n", "N"):
        return False
    return bool(value_for(KALLSYMS_LONG_NAMES, parse_release(release)))


def kallsyms_finder(prog: Program, info: Optional[dict[str, str]] = None) -> KallsymsFinder:
    """A :class:`KallsymsFinder` over the tables VMCOREINFO names (Linux 6.0+), read in
    one piece (names to token index: 1.4 MB on Debian's 6.1), the address table only
    when an address is first needed; with the names an earlier dump of the same tables
    had searched for (:func:`keep_answers`).

    :raises KallsymsIndexError: if VMCOREINFO does not name them or they cannot be
        searched (drgn's full loader still may read them).
    :raises drgn.FaultError: if they are not in the dump.
    """
    info = _vmcoreinfo(prog) if info is None else info
    where = _vmcoreinfo_addresses(info)
    try:
        names, table, index = where["kallsyms_names"], where["kallsyms_token_table"], where["kallsyms_token_index"]
        offsets, stext = where["kallsyms_offsets"], where["_stext"]
    except KeyError as missing:
        raise KallsymsIndexError(f"VMCOREINFO does not name {missing.args[0]}") from None
    if not names < table < index or index - names > _KALLSYMS_SPAN_MAX:
        raise KallsymsIndexError("the kallsyms tables are not in the order of any known layout")
    count = prog.read_u32(where["kallsyms_num_syms"])
    data = _read_kernel_image(prog, names, index + 512 - names)
    relative_base = prog.read_u64(where["kallsyms_relative_base"]) if "kallsyms_relative_base" in where else None
    long_names = _long_kallsyms_names(info.get("OSRELEASE", ""))
    markers = find_markers(data, table - names, count, long_names)
    tokens = read_tokens(data[table - names:index - names], data[index - names:])

    def addresses() -> KallsymsAddresses:
        stexts = found.numbers_named("_stext")
        if not stexts:
            raise KallsymsIndexError("_stext is not found in kallsyms")
        return decode_addresses(_read_kernel_image(prog, offsets, 4 * count), count, relative_base, offsets,
                                stexts[0], stext)

    key = _answers_key(data, count)
    kept = _kept_answers(key)
    found = KallsymsIndex(data[:table - names], count, markers, tokens, addresses, long_names, kept.names,
                          kept.ordered)
    return KallsymsFinder(prog, found, key)


# The names a search of a kernel build's kallsyms found, kept in dfforensics' cache per
# table (the key is the tables' size and CRC-32, so another build has its own entry):
# a second dump of the build looks them up without searching (~20 ms on Debian's 6.1).
_ANSWERS_ENTRY: Final = "kallsyms-answers"


def _answers_key(tables: bytes, count: int) -> str:
    import zlib

    return f"kallsyms-{count}-{len(tables):x}-{zlib.crc32(tables):08x}"


def _kept_answers(key: str) -> KallsymsAnswers:
    from dfforensics.inputs import formats

    try:
        kept = formats.read_keyed(key, _ANSWERS_ENTRY)
    except DumpError:
        kept = None
    return parse_answers(kept if kept is not None else b"")


def keep_answers(prog: Program) -> None:
    """Keep in dfforensics' cache what the program's kallsyms finder found by searching
    (:class:`KallsymsFinder`) and what its BTF lookups found (enumerators, anonymous
    structs: :func:`dfforensics.inputs.btf.keep_btf_answers`), for the next dump of the
    same kernel build. Nothing is done for a program opened otherwise; a cache that
    cannot be written costs only the saving."""
    from dfforensics.inputs import formats
    from dfforensics.inputs.btf import keep_btf_answers

    guest = prog.cache.get(_GUEST_CACHE)
    if isinstance(guest, GuestDebugInfo):
        keep_btf_answers(guest.btf)
    finder = prog.cache.get(_FINDER_CACHE)
    if not isinstance(finder, KallsymsFinder) or finder.index is None:
        return
    index = finder.index
    if not index.searched() and index.ordered() <= finder.kept_ordered:
        return  # nothing learned that the cache does not hold
    names = index.known()
    names.update(index.searched())
    try:
        formats.write_keyed(finder.key, _ANSWERS_ENTRY, answers_bytes(names, index.ordered()))
    except DumpError:
        pass


# nm's type characters as drgn reads them (libdrgn/kallsyms.c symbol_from_kallsyms).
_OBJECT_TYPES: Final = frozenset("bcdgrv")


def _symbol(entry: KallsymsEntry) -> drgn.Symbol:
    kind, lower = entry.kind, entry.kind.lower()
    if kind == "u":
        binding = drgn.SymbolBinding.UNIQUE
    elif lower in ("v", "w"):
        binding = drgn.SymbolBinding.WEAK
    elif kind.isupper():
        binding = drgn.SymbolBinding.GLOBAL
    else:
        binding = drgn.SymbolBinding.UNKNOWN
    symbol_kind = (drgn.SymbolKind.OBJECT if lower in _OBJECT_TYPES
                   else drgn.SymbolKind.FUNC if lower == "t" else drgn.SymbolKind.UNKNOWN)
    return drgn.Symbol(entry.name, entry.address, entry.size, binding, symbol_kind)


class KallsymsFinder:
    """A drgn symbol finder answering from the kallsyms tables in memory without decoding
    them all (:class:`dfforensics.inputs.kallsymsindex.KallsymsIndex`): the symbols are
    those drgn's loader makes (name, address, size, binding, kind, and for a repeated
    name the entries in table order). A name the index does not find, a listing of every
    symbol, or tables that turn out not to be searchable are answered by drgn's full
    loader, loaded then, once."""

    def __init__(self, prog: Program, index: KallsymsIndex, key: str) -> None:
        self._prog = prog
        self._index: Optional[KallsymsIndex] = index
        self._full: Optional[drgn.SymbolIndex] = None
        self._symbols: dict[int, drgn.Symbol] = {}
        self.key = key  # of the tables, for the answers kept between runs
        self.kept_ordered = index.ordered()  # what the cache held when the index was made

    @property
    def index(self) -> Optional[KallsymsIndex]:
        """The index answering, or None once the tables turned out not to be searchable."""
        return self._index

    def _entry_symbol(self, number: int) -> drgn.Symbol:
        symbol = self._symbols.get(number)
        if symbol is None:
            symbol = self._symbols[number] = _symbol(self._index.entry(number))
        return symbol

    def _from_full(self, name: Optional[str], address: Optional[int], one: bool) -> list[drgn.Symbol]:
        if self._full is None:
            self._full = _full_kallsyms(self._prog)
        return self._full(self._prog, name, address, one)

    def __call__(self, prog: Program, name: Optional[str], address: Optional[int], one: bool) -> list[drgn.Symbol]:
        if self._index is None or (name is None and address is None):
            return self._from_full(name, address, one)
        try:
            if address is not None:
                number = self._index.number_containing(address)
                symbols = [] if number is None else [self._entry_symbol(number)]
                return [symbol for symbol in symbols if name is None or symbol.name == name]
            numbers = self._index.numbers_named(name)
            if not numbers:
                return self._from_full(name, address, one)
            return [self._entry_symbol(number) for number in numbers[:1 if one else None]]
        except (KallsymsIndexError, IndexError):
            # Tables that stop making sense midway: drgn's own reading answers from now on.
            self._index = None
            return self._from_full(name, address, one)


# What the dump says a kernel has at an address, besides kallsyms: every SYMBOL() of
# VMCOREINFO but the one whose value is not an address (mem_section, a pointer under
# CONFIG_SPARSEMEM_EXTREME: kernel/crash_core.c's VMCOREINFO_SYMBOL_ARRAY prints its value).
_NOT_ADDRESSES: Final = frozenset({"mem_section"})
# Read-only data whose contents say which kernel it is: init/version.c.
_BANNER: Final = "linux_banner"
_HEAD_TEXT_MAX: Final = 2 << 20


def _vmcoreinfo_addresses(info: dict[str, str]) -> dict[str, int]:
    """VMCOREINFO's ``SYMBOL(name)=hex`` entries that are addresses (every kernel)."""
    found = {}
    for key, value in info.items():
        if key.startswith("SYMBOL(") and key.endswith(")") and key[7:-1] not in _NOT_ADDRESSES:
            try:
                found[key[7:-1]] = int(value, 16)
            except ValueError:
                continue
    return found


def _searched_kallsyms(prog: Program, info: dict[str, str]) -> drgn.SymbolIndex:
    """Find kallsyms tables VMCOREINFO does not name, check them, and load them in drgn.

    x86_64 Linux 2.6 to 6.0 (the layouts of :data:`KALLSYMS_LAYOUT`), with
    ``CONFIG_KALLSYMS_ALL`` (the analysis needs data symbols: ``init_task`` ...).
    """
    # The search (2.6 to 6.0 only) is imported when it is needed.
    from dfforensics.dump.kernelimage import read_only_data
    from dfforensics.inputs.kallsyms import LAYOUT_ADDRESSES, LAYOUT_OFFSETS, KallsymsError, find_kallsyms

    release = info.get("OSRELEASE", "unknown")
    layout = value_for(KALLSYMS_LAYOUT, parse_release(release))
    if layout not in (LAYOUT_OFFSETS, LAYOUT_ADDRESSES):
        raise DumpError(f"the dump's VMCOREINFO does not name the kallsyms tables (kernel {release}), and "
                        "their layout in this kernel is not one to search for: without a vmlinux there are no symbols")
    expected = _vmcoreinfo_addresses(info)
    if "_stext" not in expected:
        raise DumpError(f"the dump's VMCOREINFO names neither the kallsyms tables nor _stext (kernel {release}): "
                        "without a vmlinux there are no symbols")
    memory = read_only_data(prog, info)
    prog.cache[_RODATA_CACHE] = memory
    try:
        found = find_kallsyms(memory.regions, layout, expected)
    except KallsymsError as error:
        raise DumpError(f"kernel {release}: {error}") from None
    tables = found.tables
    first = tables.addresses if tables.addresses is not None else tables.offsets
    if not memory.holds(first, tables.token_index + 512):
        raise DumpError(f"the kallsyms tables at {first:#x}..{tables.token_index + 512:#x} are not all in the dump")
    _check_image_symbols(prog, found, release, expected["_stext"])
    index = _drgn_kallsyms(prog, tables, expected["_stext"])
    prog.cache[_KALLSYMS_CACHE] = found
    return index


def _check_image_symbols(prog: Program, found: Kallsyms, release: str, stext: int) -> None:
    """Refuse tables whose _text does not begin the image or whose linux_banner is not
    this release's (init/version.c: "Linux version <release> (...", 2.6+)."""
    where = f"the kallsyms tables found at {found.tables.token_table:#x}"
    # _text begins the image, _stext its .text: only .head.text (a few KiB) lies between.
    texts = set(found.addresses_of("_text"))
    if len(texts) != 1 or not 0 <= stext - min(texts) < _HEAD_TEXT_MAX:
        raise DumpError(f"{where} put _text ({', '.join(map(hex, sorted(texts))) or 'nowhere'}) "
                        "where no image starts: not taken")
    banners = set(found.addresses_of(_BANNER))
    if not banners:
        raise DumpError(f"{where} hold no data symbols (no linux_banner: built without CONFIG_KALLSYMS_ALL), "
                        "and the analysis reads data: a vmlinux is needed")
    wanted = f"Linux version {release} ".encode()
    try:
        banner = prog.read(banners.pop(), len(wanted)) if len(banners) == 1 else b""
    except drgn.FaultError:
        banner = b""
    if banner != wanted:
        raise DumpError(f"{where} do not give the banner of kernel {release} at linux_banner: not taken")


def _drgn_kallsyms(prog: Program, tables: KallsymsTables, stext: int) -> drgn.SymbolIndex:
    """drgn's own kallsyms reader (the one ``load_vmlinux_kallsyms`` uses, drgn 0.0.30+)
    on the tables' addresses, so that symbols are made exactly as on 6.0+ kernels."""
    import _drgn

    load = getattr(_drgn, "_linux_helper_load_builtin_kallsyms", None)
    if load is None:
        raise DumpError(f"this drgn ({drgn.__version__}) cannot load kallsyms tables from their addresses")
    try:
        return load(prog, tables.names, tables.token_table, tables.token_index, tables.num_syms_address,
                    tables.offsets or 0, tables.relative_base or 0, tables.addresses or 0, stext)
    except Exception as error:  # libdrgn reports tables it cannot parse as a bare Exception (BAD_DATA)
        raise DumpError(f"drgn cannot read the kallsyms tables found at {tables.token_table:#x} ({error})") from None


def _check_symbol_agreement(prog: Program, index: drgn.SymbolIndex) -> None:
    # drgn decodes the same tables itself: where it disagrees with our reading, neither is taken.
    found = prog.cache[_KALLSYMS_CACHE]
    for name in ("_stext", _BANNER, "init_task", _BTF_START):
        ours = set(found.addresses_of(name))
        if not ours:
            continue
        theirs = {symbol.address for symbol in index(prog, name, None, False)}
        if theirs != ours:
            raise DumpError(f"drgn reads the kallsyms tables found at {found.tables.token_table:#x} "
                            f"differently ({name}): not taken")


def check_searched_kallsyms(prog: Program) -> None:
    """Confirm kallsyms found by search against the kernel's own data, read with its types:
    ``init_task`` is the boot CPU's idle task (``swapper/0``, named by ``init_idle()``
    since 3.x; ``swapper`` before) and ``init_uts_ns`` holds the dump's release.

    :raises DumpError: if either is not so.
    """
    release = _vmcoreinfo(prog).get("OSRELEASE", "")
    try:
        comm = prog["init_task"].comm.string_()
        uts = Object(prog, prog.type("struct uts_namespace"), address=prog.symbol("init_uts_ns").address)
        uts_release = uts.name.release.string_().decode("ascii", errors="replace")
    except (LookupError, AttributeError, drgn.FaultError, ValueError) as error:
        raise DumpError(f"the kallsyms tables found by search cannot be checked ({error}): not taken") from None
    if not comm.startswith(b"swapper") or uts_release != release:
        raise DumpError(f"the kallsyms tables found by search disagree with the dump (init_task is {comm!r}, "
                        f"init_uts_ns says {uts_release!r}): not taken")


# The kallsyms tables VMCOREINFO names, with the size each has when it is known from the
# symbol count (kernel/kallsyms_internal.h): kallsyms_names and kallsyms_token_table end
# where the next table starts, so they are covered only up to it.
_KALLSYMS_TABLE_SIZES: Final = {
    "kallsyms_names": lambda count: 0, "kallsyms_token_table": lambda count: 0,
    "kallsyms_token_index": lambda count: 256 * 2, "kallsyms_num_syms": lambda count: 4,
    "kallsyms_offsets": lambda count: 4 * count, "kallsyms_relative_base": lambda count: 8,
    "kallsyms_addresses": lambda count: 8 * count, "kallsyms_markers": lambda count: 0,
}
# More than this between the first and last table is not kallsyms (a distro kernel's are ~2 MB).
_KALLSYMS_SPAN_MAX: Final = 64 << 20


def read_ahead_kallsyms(prog: Program) -> None:
    """Read the kallsyms tables in one read and serve drgn's loader from that copy.

    drgn 0.3.0's loader reads the length byte of each entry of ``kallsyms_names`` with a
    read of its own (87,000 of them on Debian's 6.1), and in a dump without virtual
    addresses (QEMU's, paging off) each read walks the page tables: 0.6 s. The copy is
    read through those same page tables, so drgn sees the bytes it would have read; the
    tables are read-only data, so for a dump the copy never goes stale. Nothing is done
    when VMCOREINFO names no tables or they cannot be read: the loader then says why.
    """
    info = _vmcoreinfo(prog)
    tables = {}
    for name in _KALLSYMS_TABLE_SIZES:
        value = info.get(f"SYMBOL({name})")
        if value is not None:
            try:
                tables[name] = int(value, 16)
            except ValueError:
                return
    if "kallsyms_num_syms" not in tables:
        return
    try:
        count = prog.read_u32(tables["kallsyms_num_syms"])
    except drgn.FaultError:
        return
    start = min(tables.values())
    end = max(address + _KALLSYMS_TABLE_SIZES[name](count) for name, address in tables.items())
    if not 0 < end - start <= _KALLSYMS_SPAN_MAX:
        return
    try:
        copy = prog.read(start, end - start)
    except drgn.FaultError:
        return
    prog.add_memory_segment(start, len(copy), lambda address, size, offset, physical: copy[offset:offset + size])


def set_kernel_image_range(prog: Program) -> None:
    """Give drgn's kernel module the image's extent, _text.._end from kallsyms.

    It is the range drgn takes from a vmlinux's loaded segments; with it drgn finds
    the kernel's own ORC tables in memory (``__start_orc_unwind_ip`` ..., "built-in
    ORC", CONFIG_UNWINDER_ORC, 4.14+) and unwinds stacks as it does with the vmlinux.

    :raises DumpError: if kallsyms has no ``_text`` or ``_end``.
    """
    try:
        start, end = prog.symbol("_text").address, prog.symbol("_end").address
    except LookupError:
        raise DumpError("kallsyms has no _text/_end: the kernel image's extent is unknown") from None
    module = prog.main_module("kernel", create=True)
    if module.address_range is None:
        module.address_range = (start, end)


def _read_kernel_image(prog: Program, address: int, size: int) -> bytes:
    """Read from the kernel image, in one physical read where phys_base is known.

    Page-by-page virtual reads of a 4 MB blob cost ~0.2 s; one physical read a few ms.
    """
    phys_base = _vmcoreinfo(prog).get("NUMBER(phys_base)")
    if phys_base is not None and address >= _START_KERNEL_MAP:
        try:
            return prog.read(address - _START_KERNEL_MAP + int(phys_base, 0), size, True)
        except (drgn.FaultError, ValueError):
            pass
    return prog.read(address, size)


def btf_from_memory(prog: Program) -> Btf:
    """The kernel's BTF, read from ``__start_BTF``..``__stop_BTF`` (CONFIG_DEBUG_INFO_BTF,
    4.18+), or where kallsyms lacks them, the one BTF blob in the kernel image's read-only
    data (:func:`dfforensics.inputs.btf.find_btf_blobs`).

    Needs the symbols (:func:`load_kallsyms`) first.

    :raises DumpError: if the kernel has no BTF, or it is not in the dump, malformed, or
        (found by search) not the only one.
    """
    try:
        start, stop = prog.symbol(_BTF_START).address, prog.symbol(_BTF_STOP).address
    except LookupError:
        return _searched_btf(prog)
    if not 0 < stop - start < 1 << 30:
        raise DumpError(f"__start_BTF..__stop_BTF ({start:#x}..{stop:#x}) is not a BTF blob")
    try:
        data = _read_kernel_image(prog, start, stop - start)
    except drgn.FaultError as error:
        raise DumpError(f"the kernel's BTF ({start:#x}..{stop:#x}) is not in the dump ({error})") from None
    return load_btf(data, f"in guest memory at {start:#x}", _vmcoreinfo(prog).get("BUILD-ID"))


def _searched_btf(prog: Program) -> Btf:
    """The one BTF blob in the kernel image's read-only data, for kallsyms without __start_BTF."""
    memory = prog.cache.get(_RODATA_CACHE)
    if memory is None:
        from dfforensics.dump.kernelimage import read_only_data

        memory = read_only_data(prog, _vmcoreinfo(prog))
    blobs = [(base + offset, data[offset:offset + size]) for base, data in memory.regions
             for offset, size in find_btf_blobs(data)]
    blobs = [(address, blob) for address, blob in blobs if memory.holds(address, address + len(blob))]
    if not blobs:
        raise DumpError("the kernel has no BTF in memory (no __start_BTF/__stop_BTF in kallsyms, and no BTF header "
                        f"in its {memory.size} bytes of read-only data: built without CONFIG_DEBUG_INFO_BTF); "
                        "a vmlinux or a BTF file is needed")
    if len(blobs) > 1:
        where = ", ".join(f"{address:#x}" for address, _ in blobs)
        raise DumpError(f"{len(blobs)} BTF blobs in the kernel's read-only data ({where}) and no __start_BTF in "
                        "kallsyms: which is the kernel's is unknown; a vmlinux or a BTF file is needed")
    address, blob = blobs[0]
    return load_btf(blob, f"in guest memory at {address:#x} (found by its header)", _vmcoreinfo(prog).get("BUILD-ID"))


def use_guest_debug_info(prog: Program, btf: Btf) -> GuestDebugInfo:
    """Register BTF-backed type and object finders on a program whose symbols are loaded."""
    info = GuestDebugInfo(prog, btf)
    info.register()
    prog.cache[_GUEST_CACHE] = info
    return info


def open_dump_without_vmlinux(vmcore_path: str, btf_path: Optional[str] = None) -> tuple[Program, str]:
    """Open an uncompressed ELF or kdump vmcore with no vmlinux.

    Symbols come from the guest's kallsyms (named by VMCOREINFO, Linux 6.0+, or found by
    search, 2.6 to 6.0); types from the guest's BTF
    (CONFIG_DEBUG_INFO_BTF), or from ``btf_path``, a detached BTF of the same build
    (``pahole --btf_encode_detached``).

    :return: the program and what its debug info is, for the report:
        :data:`DEBUG_INFO_SOURCE` or "BTF from FILE and kallsyms from guest memory".
    :raises DumpError: when the dump, its kallsyms or its BTF cannot be used.
    """
    prog = Program()
    # Each with the kind open_dump gives it: what condemns the file itself (not a
    # dump, corrupt) is its row in triage, and its copy leaves the cache.
    try:
        prog.set_core_dump(vmcore_path)
    except ValueError as error:
        kind = (ErrorKind.NO_VMCOREINFO if "vmcoreinfo" in str(error).lower() or "QEMU" in str(error)
                else ErrorKind.NOT_A_DUMP)
        raise DumpError(f"VMCORE {vmcore_path}: {error}", kind) from None
    except OSError as error:
        raise DumpError(f"VMCORE {vmcore_path}: {error}") from None
    except drgn.FaultError as error:
        raise DumpError(f"VMCORE {vmcore_path}: truncated or corrupt ({error})", ErrorKind.CORRUPT_DUMP) from None
    except Exception as error:  # libdrgn reports libelf/libkdumpfile failures as bare Exception
        raise DumpError(f"VMCORE {vmcore_path}: truncated or corrupt ({error})", ErrorKind.CORRUPT_DUMP) from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise DumpError(f"VMCORE {vmcore_path}: not a Linux kernel dump (a user-space core?)",
                        ErrorKind.NOT_A_DUMP)
    searched = load_kallsyms(prog)
    set_kernel_image_range(prog)
    if btf_path is None:
        btf, how = btf_from_memory(prog), DEBUG_INFO_SOURCE
    else:
        try:
            with open(btf_path, "rb") as file:
                btf = load_btf(file.read(), btf_path, _vmcoreinfo(prog).get("BUILD-ID"))
        except OSError as error:
            raise DumpError(f"BTF {btf_path}: {error.strerror or error}") from None
        how = DETACHED_SOURCE.format(path=btf_path)
    use_guest_debug_info(prog, btf)
    if searched:
        check_searched_kallsyms(prog)
    return prog, how
