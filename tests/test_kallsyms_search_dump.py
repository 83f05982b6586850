"""kallsyms found by their structure in a real 5.10 dump, whose VMCOREINFO does not name
the tables (dfforensics/dump/kernelimage.py, dfforensics/inputs/kallsyms.py): every table
where the vmlinux's symbol table says, every symbol as the vmlinux has it; BTF by its
header; and the clear line when the tables are missing, doubled, or not the kernel's."""

import json
import subprocess
import sys
from pathlib import Path

import drgn
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from dfforensics.core.errors import DumpError
from dfforensics.dump import guestdebuginfo
from dfforensics.dump.kernelimage import read_only_data
from dfforensics.dump.opendump import open_dump
from dfforensics.inputs.formats import decompressed
from dumpfiles import file_offset, sparse_copy

FIXTURES = Path(__file__).parents[1] / "fixtures"
SCENARIO = FIXTURES / "cpl0-irq-df-5.10"
VMLINUX = FIXTURES / "kernels" / "linux-5.10" / "vmlinux.xz"
START_KERNEL_MAP = 0xFFFFFFFF80000000
TABLES = ("kallsyms_offsets", "kallsyms_relative_base", "kallsyms_num_syms", "kallsyms_names",
          "kallsyms_markers", "kallsyms_token_table", "kallsyms_token_index")


@pytest.fixture(scope="module")
def vmcore() -> str:
    return decompressed(str(SCENARIO / "vmcore.xz"), "VMCORE")


@pytest.fixture(scope="module")
def elf_symbols() -> dict[str, set[int]]:
    """The vmlinux's own symbol table: name -> addresses."""
    symbols: dict[str, set[int]] = {}
    with open(decompressed(str(VMLINUX), "VMLINUX"), "rb") as file:
        table = ELFFile(file).get_section_by_name(".symtab")
        assert isinstance(table, SymbolTableSection)
        for symbol in table.iter_symbols():
            symbols.setdefault(symbol.name, set()).add(symbol["st_value"])
    return symbols


@pytest.fixture(scope="module")
def bare(vmcore):
    prog = drgn.Program()
    prog.set_core_dump(vmcore)
    assert guestdebuginfo.load_kallsyms(prog) is True  # searched: VMCOREINFO names no table
    return prog


def only(addresses: set[int]) -> int:
    (address,) = addresses
    return address


def test_the_search_is_confined_to_the_read_only_data(vmcore, elf_symbols):
    prog = drgn.Program()
    prog.set_core_dump(vmcore)
    memory = read_only_data(prog, guestdebuginfo._vmcoreinfo(prog))
    start, end = only(elf_symbols["__start_rodata"]), only(elf_symbols["__end_rodata"])
    assert any(base == start and base + len(data) == end for base, data in memory.regions)
    assert memory.size < 2 * (end - start) and not memory.missing_pages
    text = only(elf_symbols["_stext"])
    assert not any(base <= text < base + len(data) for base, data in memory.regions)


def test_every_table_is_where_the_vmlinux_puts_it(bare, elf_symbols):
    tables = bare.cache["dfforensics_kallsyms"].tables
    found = {"kallsyms_offsets": tables.offsets, "kallsyms_relative_base": tables.relative_base,
             "kallsyms_num_syms": tables.num_syms_address, "kallsyms_names": tables.names,
             "kallsyms_markers": tables.markers, "kallsyms_token_table": tables.token_table,
             "kallsyms_token_index": tables.token_index}
    assert found == {name: only(elf_symbols[name]) for name in TABLES}
    assert tables.absolute_percpu  # CONFIG_KALLSYMS_ABSOLUTE_PERCPU on x86_64 SMP


def test_every_symbol_is_as_the_vmlinux_has_it(bare, elf_symbols):
    symbols = bare.cache["dfforensics_kallsyms"].symbols
    assert len(symbols) > 30000
    wrong = [(s.name, hex(s.address)) for s in symbols if s.address not in elf_symbols.get(s.name, ())]
    assert not wrong
    for name in ("_text", "init_task", "__start_BTF", "exc_double_fault", "linux_banner", "runqueues"):
        assert bare.symbol(name).address == only(elf_symbols[name]), name


def test_btf_by_its_header_is_the_blob_between_start_and_stop_btf(bare):
    by_symbol = guestdebuginfo.btf_from_memory(bare)
    by_header = guestdebuginfo._searched_btf(bare)
    assert "found by its header" in by_header.where
    assert (by_header.size, by_header.count) == (by_symbol.size, by_symbol.count) and by_header.count > 30000
    assert by_header.where.startswith(f"in guest memory at {bare.symbol('__start_BTF').address:#x}")


def test_drgn_helpers_agree_with_dwarf(vmcore):
    from drgn.helpers.linux.pid import for_each_task

    prog, how = guestdebuginfo.open_dump_without_vmlinux(vmcore)
    full = open_dump(str(SCENARIO / "vmcore.xz"), str(VMLINUX)).prog
    listed = lambda p: [(int(t.pid), t.comm.string_()) for t in for_each_task(p)]
    assert listed(prog) == listed(full) and len(listed(prog)) > 10
    assert prog["init_task"].comm.string_() == b"swapper/0"


# -- damaged copies of the dump: one clear line, exit 2 --------------------------------------


def damaged(vmcore: str, tmp_path: Path, writes: list[tuple[int, bytes]]) -> Path:
    """A copy of the dump with bytes written at kernel-image addresses (phys_base 0)."""
    dump = tmp_path / "vmcore"
    sparse_copy(Path(vmcore), dump)
    with open(dump, "r+b") as out:
        for address, data in writes:
            out.seek(file_offset(dump, address - START_KERNEL_MAP))
            out.write(data)
    return dump


def run(dump: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", str(dump), "--format", "json"],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("dfforensics: error: ") and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_tables_that_are_not_there_give_no_symbol(vmcore, tmp_path, elf_symbols):
    index = only(elf_symbols["kallsyms_token_index"])
    one_line(run(damaged(vmcore, tmp_path, [(index, bytes(512))])),
             "no kallsyms tables in the kernel's read-only data", "5.10.223")


def test_two_copies_of_the_tables_are_ambiguous(vmcore, tmp_path, elf_symbols):
    # A byte-for-byte copy of all seven tables inside .BTF (also read-only data).
    start = only(elf_symbols["kallsyms_offsets"])
    end = only(elf_symbols["kallsyms_token_index"]) + 512
    copy_at = (only(elf_symbols["__start_BTF"]) + 0x1000) & ~0xFFF
    assert copy_at + (end - start) < only(elf_symbols["__stop_BTF"])
    with open(vmcore, "rb") as file:
        file.seek(file_offset(Path(vmcore), start - START_KERNEL_MAP))
        tables = file.read(end - start)
    one_line(run(damaged(vmcore, tmp_path, [(copy_at, tables)])), "2 sets of kallsyms tables")


def test_tables_another_kernel_would_have_are_refused(vmcore, tmp_path, elf_symbols):
    # The banner no longer names this release: the tables found are not taken.
    banner = only(elf_symbols["linux_banner"])
    one_line(run(damaged(vmcore, tmp_path, [(banner, b"Linux version 4.19.0 ")])),
             "do not give the banner of kernel 5.10.223")


def test_an_init_task_that_is_not_the_idle_task_is_refused(vmcore, tmp_path):
    full = open_dump(str(SCENARIO / "vmcore.xz"), str(VMLINUX)).prog
    comm = full["init_task"].comm.address_  # the offset from DWARF, never by hand
    one_line(run(damaged(vmcore, tmp_path, [(comm, b"impostor\0")])), "disagree with the dump", "impostor")


def test_the_command_alone_gives_the_verdict_on_5_10():
    result = run(SCENARIO / "vmcore.xz")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["verdict"], report["df_class"]) == ("match", "cpl-corruption")
    assert report["source"]["debug_info"] == "BTF and kallsyms from guest memory"


@pytest.mark.parametrize("scenario, found", [("cpl0-irq-df-7.2", True), ("cpl0-irq-df", False)])
def test_btf_by_its_header_on_kernels_whose_vmcoreinfo_names_kallsyms(scenario, found):
    # 7.2 keeps BTF in memory: its header finds the blob __start_BTF begins; 6.1 has none.
    prog = drgn.Program()
    prog.set_core_dump(decompressed(str(FIXTURES / scenario / "vmcore.xz"), "VMCORE"))
    assert guestdebuginfo.load_kallsyms(prog) is False  # named by VMCOREINFO: not searched
    if found:
        by_header = guestdebuginfo._searched_btf(prog)
        assert by_header.where.startswith(f"in guest memory at {prog.symbol('__start_BTF').address:#x}")
        assert by_header.size == prog.symbol("__stop_BTF").address - prog.symbol("__start_BTF").address
    else:
        with pytest.raises(DumpError, match="no BTF header in its .* bytes of read-only data"):
            guestdebuginfo._searched_btf(prog)
