"""More bad inputs (issue 22): damaged headers and notes of real fixture dumps,
a vmlinux with corrupt DWARF, outputs that cannot be written, special files,
and a cache that cannot be trusted or written. One error line and exit 2
every time; the cache keeps only what it can vouch for."""

import gzip
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dfforensics.inputs.formats import decompressed
from dumpfiles import sparse_copy

FIXTURES = Path(__file__).parents[1] / "fixtures"
DUMP = FIXTURES / "cpl0-irq-df" / "vmcore.xz"
KDUMP = FIXTURES / "cpl0-irq-df-kdump-d31" / "vmcore.kdump"
FLAT = FIXTURES / "cpl0-irq-df-flattened" / "vmcore.flat.xz"
VMLINUX = FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"
LOG = FIXTURES / "cpl0-irq-df" / "console.log"


def run(*args, env=None, stdout=None, preexec_fn=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", *map(str, args)],
                          stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout,
                          env=env, preexec_fn=preexec_fn, stdin=subprocess.DEVNULL)


def assert_one_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfforensics: error: "), result.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def plain_dump() -> Path:
    return Path(decompressed(str(DUMP), "VMCORE"))


def patched_dump(plain: Path, target: Path, patch) -> Path:
    """A sparse copy of the dump with its first 64 KiB (ELF header, notes) patched."""
    sparse_copy(plain, target)
    with open(target, "r+b") as file:
        head = bytearray(file.read(1 << 16))
        patch(head)
        file.seek(0)
        file.write(head)
    return target


def non_utf8_release(head: bytearray) -> None:
    at = head.index(b"OSRELEASE=6.1.192") + len(b"OSRELEASE=")
    head[at:at + 7] = b"6.\xff\xfe192"


def kernel_offset_f(head: bytearray) -> None:
    value = re.search(rb"KERNELOFFSET=([0-9a-f]+)\n", head)
    head[value.start(1):value.end(1)] = b"f".ljust(len(value.group(1)), b" ")


def wrong_release(head: bytearray) -> None:
    # The BUILD-ID still names the kernel: VMLINUX matches it, the release does not.
    at = head.index(b"OSRELEASE=6.1.192") + len(b"OSRELEASE=")
    head[at:at + 7] = b"6.1.999"


def aarch64(head: bytearray) -> None:
    head[18:20] = struct.pack("<H", 183)  # e_machine EM_AARCH64


@pytest.mark.parametrize("patch, words", [
    (non_utf8_release, ["corrupt VMCOREINFO", "OSRELEASE"]),
    (kernel_offset_f, ["corrupt VMCOREINFO", "KERNELOFFSET=f"]),
    (wrong_release, ["corrupt VMCOREINFO", "OSRELEASE 6.1.999", "6.1.192"]),
    (aarch64, ["AARCH64", "x86_64"]),
])
def test_damaged_dump_is_one_error_line(plain_dump, tmp_path, patch, words):
    dump = patched_dump(plain_dump, tmp_path / "vmcore", patch)
    assert_one_error(run(dump, VMLINUX), "VMCORE", *words)


# kdump_sub_header (one 4096-byte block in): offset/size of VMCOREINFO at 32/40, of the notes at 48/56.
@pytest.mark.parametrize("field, value", [(56, 1 << 40), (48, 1 << 40), (32, 1 << 33)])
def test_kdump_header_pointing_past_the_file_is_an_error_not_sigbus(tmp_path, field, value):
    dump = tmp_path / "vmcore.kdump"
    shutil.copy(KDUMP, dump)
    with open(dump, "r+b") as file:
        file.seek(4096 + field)
        file.write(struct.pack("<Q", value))
    assert_one_error(run(dump, VMLINUX), "VMCORE", "corrupt kdump header", "past the end")


def test_vmlinux_with_corrupt_dwarf_is_one_error_line(tmp_path):
    from elftools.elf.elffile import ELFFile

    vmlinux = tmp_path / "vmlinux"
    shutil.copy(decompressed(str(VMLINUX), "VMLINUX"), vmlinux)
    with open(vmlinux, "r+b") as file:
        section = ELFFile(file).get_section_by_name(".debug_info")
        file.seek(section["sh_offset"])
        file.write(b"\xff" * (1 << 16))
    assert_one_error(run(DUMP, vmlinux), "VMLINUX", "unreadable debug info")


@pytest.mark.parametrize("args", [[DUMP, VMLINUX], ["log", LOG]])
def test_a_full_stdout_is_one_error_line(args):
    with open("/dev/full", "w") as full:
        result = run(*args, stdout=full)
    assert_one_error(result, "stdout: cannot write")


@pytest.mark.parametrize("extra, words", [
    (["-o", "{tmp}"], ["is a directory"]),
    (["-o", "/nonexistent/dir/rows.jsonl"], ["cannot write"]),
    (["--timeout", "nan"], ["--timeout"]),
    (["--timeout", "inf"], ["--timeout"]),
    (["--timeout", "-1"], ["--timeout"]),
])
def test_bad_triage_options_are_one_error_line(tmp_path, extra, words):
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    assert_one_error(run("triage", LOG, *extra), *words)


@pytest.mark.parametrize("position", ["vmcore", "vmlinux", "module"])
def test_a_fifo_is_refused_not_read(tmp_path, position):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = {"vmcore": [fifo, VMLINUX], "vmlinux": [DUMP, fifo],
            "module": [DUMP, VMLINUX, "--module-debuginfo", fifo]}[position]
    # Reading a FIFO nobody writes would block: the timeout turns that into a failure.
    assert_one_error(run(*args, timeout=120), "not a regular file")


def test_garbage_module_debug_info_is_one_error_line_not_ignored(tmp_path):
    garbage = tmp_path / "dftest.ko"
    garbage.write_bytes(b"\x13\x37" * 50_000)
    assert_one_error(run(DUMP, VMLINUX, "--module-debuginfo", garbage), "module debug info",
                     str(garbage), "not an ELF file")


def cache_env(cache: Path) -> dict:
    return {**os.environ, "DFFORENSICS_CACHE": str(cache)}


def test_a_flattened_dump_with_an_unwritable_cache_names_the_cache(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = run(FLAT, VMLINUX, env=cache_env(blocker / "cache"))
    assert_one_error(result, "cache", str(blocker / "cache"), "DFFORENSICS_CACHE")


def test_a_flattened_dump_with_a_full_cache_names_the_cache(tmp_path):
    flat = tmp_path / "vmcore.flat"
    shutil.copy(decompressed(str(FLAT), "VMCORE"), flat)  # uncompressed: only reassembly writes

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    cache = tmp_path / "cache"
    result = run(flat, VMLINUX, env=cache_env(cache), preexec_fn=small_disk)
    assert_one_error(result, "cache", str(cache), "File too large")
    assert [p.name for p in cache.iterdir()] == []


def test_rejected_inputs_leave_nothing_in_the_cache(tmp_path):
    from test_cli_vmcore_errors import user_core

    cache = tmp_path / "cache"
    text = tmp_path / "notes.gz"
    text.write_bytes(gzip.compress(b"not a dump\n" * 1000))
    core = tmp_path / "core.gz"
    core.write_bytes(gzip.compress(user_core()))
    assert_one_error(run(text, VMLINUX, env=cache_env(cache)), "not an ELF core")
    assert_one_error(run(core, VMLINUX, env=cache_env(cache)), "not a Linux kernel dump")
    assert sorted(p.name for p in cache.iterdir() if "vmlinux" not in p.name) == []


def small_elf_gz(tmp_path: Path) -> Path:
    source = tmp_path / "vmlinux.gz"
    source.write_bytes(gzip.compress(b"\x7fELF" + os.urandom(200_000)))
    return source


def test_a_symlink_in_the_cache_is_discarded_and_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("DFFORENSICS_CACHE", str(tmp_path / "cache"))
    source = small_elf_gz(tmp_path)
    first = Path(decompressed(str(source), "VMLINUX"))
    expected = first.read_bytes()
    first.unlink()
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"\x7fELF somebody else's file")
    first.symlink_to(decoy)
    again = Path(decompressed(str(source), "VMLINUX"))
    assert not again.is_symlink() and again.read_bytes() == expected
    assert decoy.read_bytes() == b"\x7fELF somebody else's file"


def test_a_truncated_cache_entry_is_discarded_and_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("DFFORENSICS_CACHE", str(tmp_path / "cache"))
    source = small_elf_gz(tmp_path)
    first = Path(decompressed(str(source), "VMLINUX"))
    expected = first.read_bytes()
    os.truncate(first, 1000)
    assert Path(decompressed(str(source), "VMLINUX")).read_bytes() == expected


def test_more_jobs_than_dumps_starts_no_more_servers_than_dumps(tmp_path):
    from dfforensics.batch.jobs import Job
    from dfforensics.batch.triage import _Workers

    log = tmp_path / "console.log"
    shutil.copy(LOG, log)
    job = Job(str(log), log.stat().st_size, log.stat().st_mtime, "log")
    pool = _Workers(jobs=1000)
    try:
        pool.start()
        rows = [pool.run(job, 600, None) for _ in range(3)]
        started = [slot for slot in pool.slots if slot.server is not None]
    finally:
        pool.close()
    assert [row.status for row in rows] == ["ok"] * 3
    assert 1 <= len(started) <= len(os.sched_getaffinity(0))


def test_more_jobs_than_cpus_is_a_warning_and_the_run_goes_on(tmp_path):
    jobs = len(os.sched_getaffinity(0)) + 7
    result = run("triage", LOG, "--jobs", str(jobs), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert f"warning: --jobs {jobs} is more than" in result.stderr


def _elf_core_with_note(path, note_size: int, note: bytes = b"") -> None:
    """An x86_64 ELF core whose one PT_NOTE claims ``note_size`` bytes (sparse beyond ``note``)."""
    import struct

    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 4, 62, 1, 0, 64, 0, 0,
                         64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 120, 0, 0, note_size, note_size, 4)
    with open(path, "wb") as out:
        out.write(header + phdr + note)
        out.truncate(120 + note_size)


def test_a_note_bomb_costs_nothing_to_read(tmp_path):
    # A corrupt first note size made pyelftools walk 16 GiB of a sparse file 12 bytes at a
    # time in triage's parent, for hours (issue 22 item 1).
    from dfforensics.inputs.elffacts import read_elf_vmcoreinfo

    bomb = tmp_path / "vmcore"
    _elf_core_with_note(bomb, 16 << 30)
    assert read_elf_vmcoreinfo(str(bomb)) is None


def test_a_note_whose_size_runs_past_its_segment_ends_the_walk(tmp_path):
    import struct

    from dfforensics.inputs.elffacts import read_elf_vmcoreinfo

    good = struct.pack("<III", 11, 18, 0) + b"VMCOREINFO\0\0" + b"OSRELEASE=6.1.192\n\0\0"
    bad = struct.pack("<III", 4, 0xFFFFFFF0, 0) + b"BAD\0"
    path = tmp_path / "vmcore"
    _elf_core_with_note(path, len(bad + good), bad + good)
    assert read_elf_vmcoreinfo(str(path)) is None
    _elf_core_with_note(path, len(good + bad), good + bad)
    assert read_elf_vmcoreinfo(str(path)) == b"OSRELEASE=6.1.192\n"
