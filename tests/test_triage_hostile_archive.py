"""Issue 22, "done when": one triage run over an archive holding one of each
hostile input finishes within its limits, with one row per candidate file, the
right error kind for each, the archive untouched and nothing left in the cache
for what it rejected.

The archive is built here, in a temporary directory, from the builders of the
robustness tests (tests/test_robustness_inputs.py and friends) and a few of
its own: the decompression bombs are made of repeated blocks, so that a file of
a few hundred KB expands to GiBs without this test ever holding them."""

import gzip
import hashlib
import json
import lzma
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from dfforensics.inputs.formats import decompressed
from test_cli_vmcore_errors import user_core
from test_robustness_inputs import (DUMP, FLAT, KDUMP, LOG, _elf_core_with_note, aarch64, kernel_offset_f,
                                    non_utf8_release, patched_dump, wrong_release)

FIXTURES = Path(__file__).parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"

# The dump's whole time limit: far more than any real analysis here needs (a few
# seconds), far less than a bomb takes to expand (tens of seconds).
TIMEOUT = 10
MEMORY_MIB = 1536
# How long the run may take before the test calls it hung: a guard, not a target.
HANG_GUARD_S = 900


def zstd_bomb(path: Path, head: bytes, size: int) -> None:
    """A zstd frame: ``head`` then zeros up to ``size`` bytes, as RLE blocks of 128 KiB
    (4 bytes each: a 1 MB file for 32 GiB)."""
    block = 1 << 17
    with open(path, "wb") as out:
        out.write(b"\x28\xb5\x2f\xfd\x00\x38")  # no content size; a 128 KiB window
        out.write((len(head) << 3).to_bytes(3, "little") + head)  # a raw block
        count = (size - len(head)) // block
        rle = ((block << 3) | 2).to_bytes(3, "little") + b"\0"
        out.write(rle * (count - 1))
        out.write(((block << 3) | 3).to_bytes(3, "little") + b"\0")  # the last block


def xz_bomb(path: Path, head: bytes, size: int) -> None:
    """Concatenated xz streams of 64 MiB of zeros (10 KB each), the first starting with ``head``."""
    stream = 64 << 20
    zeros = lzma.compress(b"\0" * stream, preset=0)
    with open(path, "wb") as out:
        out.write(lzma.compress(head + b"\0" * (stream - len(head)), preset=0))
        for _ in range(size // stream - 1):
            out.write(zeros)


def kdump_pointing_past_the_end(path: Path, field: int, value: int) -> None:
    # kdump_sub_header, one block in: VMCOREINFO offset/size at 32/40, the notes' at 48/56.
    shutil.copy(KDUMP, path)
    with open(path, "r+b") as file:
        file.seek(4096 + field)
        file.write(struct.pack("<Q", value))


#: Each candidate, by its path in the archive: (the row's status, error kind).
EXPECTED = {
    "bombs/zstd/vmcore.zst": ("error", "timeout"),
    "bombs/xz/vmcore.xz": ("error", "timeout"),
    "bombs/notes/vmcore": ("error", "corrupt-dump"),
    "cut/header/vmcore": ("error", "not-a-dump"),
    "cut/notes/vmcore": ("error", "corrupt-dump"),
    "cut/memory/vmcore": ("ok", None),
    "cut/xz/vmcore.xz": ("error", "corrupt-dump"),
    "mutated/osrelease/vmcore": ("error", "corrupt-dump"),
    "mutated/kerneloffset/vmcore": ("error", "corrupt-dump"),
    "mutated/release/vmcore": ("error", "corrupt-dump"),
    "mutated/aarch64/vmcore": ("error", "not-a-dump"),
    "kdump/notes-size/vmcore": ("error", "corrupt-dump"),
    "kdump/notes-offset/vmcore": ("error", "corrupt-dump"),
    "kdump/vmcoreinfo-size/vmcore": ("error", "corrupt-dump"),
    "kdump/compressed/vmcore.zst": ("error", "corrupt-dump"),
    "special/fifo/vmcore": ("error", "input"),
    "special/empty/vmcore": ("error", "not-a-dump"),
    "special/loop/vmcore": ("error", "input"),
    "special/zero/vmcore": ("error", "input"),
    "special/dangling/vmcore": ("error", "input"),
    "special/outside/console.log": ("ok", None),
    "garbage/c5/dmesg.txt": ("error", "input"),
    "garbage/text/vmcore.gz": ("error", "not-a-dump"),
    "garbage/user-core/vmcore.gz": ("error", "not-a-dump"),
    "garbage/pathological/console.log": ("ok", None),
    "incomplete/vmcore-incomplete": ("error", "incomplete"),
    "copy/a/vmcore.flat.xz": ("ok", None),
    "copy/b/vmcore.flat.xz": ("duplicate", "duplicate"),
}


def build_archive(root: Path, outside: Path) -> None:
    plain = Path(decompressed(str(DUMP), "VMCORE"))
    with open(plain, "rb") as source:
        head = source.read(4096)  # an ELF core's header: the bombs pass the content check
    for relative in EXPECTED:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)

    zstd_bomb(root / "bombs/zstd/vmcore.zst", head, 32 << 30)
    xz_bomb(root / "bombs/xz/vmcore.xz", head, 8 << 30)
    _elf_core_with_note(root / "bombs/notes/vmcore", 16 << 30)  # PT_NOTE of 16 GiB, sparse

    with open(plain, "rb") as source:
        (root / "cut/header/vmcore").write_bytes(source.read(40))
        source.seek(0)
        (root / "cut/notes/vmcore").write_bytes(source.read(3000))
        source.seek(0)
        (root / "cut/memory/vmcore").write_bytes(source.read(70_000_000))
    whole = DUMP.read_bytes()
    (root / "cut/xz/vmcore.xz").write_bytes(whole[:len(whole) // 2])

    for name, patch in (("osrelease", non_utf8_release), ("kerneloffset", kernel_offset_f),
                        ("release", wrong_release), ("aarch64", aarch64)):
        patched_dump(plain, root / "mutated" / name / "vmcore", patch)

    for name, field, value in (("notes-size", 56, 1 << 40), ("notes-offset", 48, 1 << 40),
                               ("vmcoreinfo-size", 32, 1 << 33)):
        kdump_pointing_past_the_end(root / "kdump" / name / "vmcore", field, value)
    # Compressed: refused by the worker that decompressed it, whose copy must not stay.
    kdump_pointing_past_the_end(root / "kdump/compressed/vmcore", 56, 1 << 40)
    (root / "kdump/compressed/vmcore.zst").write_bytes(
        zstandard.ZstdCompressor().compress((root / "kdump/compressed/vmcore").read_bytes()))
    (root / "kdump/compressed/vmcore").unlink()

    os.mkfifo(root / "special/fifo/vmcore")
    (root / "special/empty/vmcore").write_bytes(b"")
    os.symlink("vmcore", root / "special/loop/vmcore")
    os.symlink("/dev/zero", root / "special/zero/vmcore")
    os.symlink("nothing-here", root / "special/dangling/vmcore")
    outside.mkdir()
    shutil.copy(LOG, outside / "console.log")
    os.symlink(outside / "console.log", root / "special/outside/console.log")

    (root / "garbage/c5/dmesg.txt").write_bytes(b"\xc5" * 200_000)
    (root / "garbage/text/vmcore.gz").write_bytes(gzip.compress(b"not a dump\n" * 1000))
    (root / "garbage/user-core/vmcore.gz").write_bytes(gzip.compress(user_core()))
    (root / "garbage/pathological/console.log").write_text(
        "[    1.000000] Linux version 6.1.192\n"
        "[    1.000000] CPU: 0 PID: 1 Comm: x Tainted: " + " " * 200_000 + "x\n"
        "[    1.000000] BUG: stack guard page was hit at 0000 (stack is " + "." * 200_000 + "\n"
        "[    1.000000] Call Trace:" + " " * 200_000 + "\n")

    shutil.copy(KDUMP, root / "incomplete/vmcore-incomplete")
    shutil.copy(FLAT, root / "copy/a/vmcore.flat.xz")
    shutil.copy(FLAT, root / "copy/b/vmcore.flat.xz")


def fingerprints(root: Path) -> dict[str, tuple]:
    """What each entry of the archive is (without following symlinks or opening special files)."""
    prints = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
            content = digest.hexdigest()
        else:
            content = None
        prints[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return prints


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    top = tmp_path_factory.mktemp("hostile")
    archive, outside, cache = top / "archive", top / "outside", top / "cache"
    build_archive(archive, outside)
    before = fingerprints(archive)
    out = top / "rows.jsonl"
    env = {**os.environ, "DFFORENSICS_CACHE": str(cache)}
    result = subprocess.run(
        [sys.executable, "-m", "dfforensics.cli", "triage", str(archive), "--debuginfo-dir", str(KERNELS),
         "--format", "jsonl", "-o", str(out), "--timeout", str(TIMEOUT), "--memory-limit", str(MEMORY_MIB),
         "--jobs", "2"],
        capture_output=True, text=True, timeout=HANG_GUARD_S, env=env, stdin=subprocess.DEVNULL)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return {"result": result, "rows": rows, "archive": archive, "before": before,
            "after": fingerprints(archive), "cache": cache}


def by_path(run) -> dict[str, dict]:
    return {str(Path(row["path"]).relative_to(run["archive"])): row for row in run["rows"]}


def test_the_run_completes_with_exit_status_0(run):
    result = run["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_every_candidate_has_exactly_one_row_with_its_error_kind(run):
    paths = [str(Path(row["path"]).relative_to(run["archive"])) for row in run["rows"]]
    assert sorted(paths) == sorted(EXPECTED), "missing or repeated rows"
    got = {path: (row["status"], row["error_kind"]) for path, row in by_path(run).items()}
    wrong = {path: (got[path], EXPECTED[path], by_path(run)[path]["error"]) for path in EXPECTED
             if got[path] != EXPECTED[path]}
    assert not wrong, wrong


def test_a_bomb_is_stopped_at_its_time_limit_and_its_row_counts_the_time(run):
    # Before, the parent decompressed the bomb outside the limit, and the row said 0.09 s.
    for path in ("bombs/zstd/vmcore.zst", "bombs/xz/vmcore.xz"):
        row = by_path(run)[path]
        assert row["error"] == f"decompressing and reading the dump did not finish within {TIMEOUT} s", row
        assert TIMEOUT <= row["seconds"], row


def test_the_errors_say_what_is_wrong(run):
    rows = by_path(run)
    expected_words = {
        "special/fifo/vmcore": "not a regular file",
        "special/zero/vmcore": "not a regular file",
        "special/loop/vmcore": "symbolic links",
        "special/dangling/vmcore": "dangling symlink",
        "special/empty/vmcore": "empty file",
        "garbage/c5/dmesg.txt": "binary data",
        "garbage/user-core/vmcore.gz": "not a Linux kernel dump",
        "kdump/notes-size/vmcore": "past the end",
        # The user's file, not its decompressed copy in the cache.
        "kdump/compressed/vmcore.zst": "kdump/compressed/vmcore.zst: corrupt kdump header",
        "mutated/osrelease/vmcore": "OSRELEASE",
        "mutated/kerneloffset/vmcore": "KERNELOFFSET=f",
        "mutated/release/vmcore": "OSRELEASE 6.1.999 is not the release of the kernel in its memory",
        "mutated/aarch64/vmcore": "AARCH64",
    }
    for path, words in expected_words.items():
        assert words in rows[path]["error"], rows[path]


def test_a_symlink_leaving_the_archive_says_so(run):
    row = by_path(run)["special/outside/console.log"]
    assert "outside" in row["note"] and str(run["archive"]) in row["note"], row


def test_the_archive_is_unchanged(run):
    assert run["after"] == run["before"]


def test_nothing_is_left_in_the_cache_for_rejected_inputs(run):
    left = sorted(os.listdir(run["cache"]))
    assert not [name for name in left if name.startswith(".partial-")], left
    entries = [name.split("-", 1)[1] for name in left if not name.endswith(".size")]
    # What stays is what was used: the debug vmlinux files (each read once, as banner
    # candidates), and the one flattened dump analysed, decompressed then reassembled
    # once. No bomb, no rejected dump.
    vmlinux = len(list(KERNELS.rglob("vmlinux*")))
    assert sorted(entries) == sorted(["vmlinux"] * vmlinux + ["vmcore.flat", "reassembled"]), left


def test_ctrl_c_in_the_middle_of_a_bomb_ends_the_run_and_leaves_no_partial_copy(tmp_path):
    from procs import descendants, pids_running, wait_for

    archive, cache = tmp_path / "archive", tmp_path / "cache"
    archive.mkdir()
    with open(decompressed(str(DUMP), "VMCORE"), "rb") as source:
        zstd_bomb(archive / "vmcore.zst", source.read(4096), 32 << 30)
    process = subprocess.Popen(
        [sys.executable, "-m", "dfforensics.cli", "triage", str(archive), "--format", "jsonl",
         "-o", str(tmp_path / "rows.jsonl"), "--timeout", "600", "--jobs", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "DFFORENSICS_CACHE": str(cache)})
    try:
        # Interrupted while the bomb is being written into the cache.
        assert wait_for(lambda: cache.exists() and any(name.startswith(".partial-") for name in os.listdir(cache)),
                        seconds=300)
        workers = set(pids_running(b"dfforensics.batch.worker")) & descendants(process.pid)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "dfforensics: error: interrupted"
    assert workers and not wait_for(lambda: workers & set(pids_running(b"dfforensics.batch.worker")),
                                    seconds=1.0), "workers left running"
    assert [name for name in os.listdir(cache) if not name.endswith(("vmlinux", "vmlinux.size"))] == []


def test_only_candidates_get_items_and_a_dumps_own_log_is_not_one_apart(tmp_path):
    from dfforensics.batch.discover import iter_discover

    (tmp_path / "README").write_text("what this archive is\n")
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"not a dump\n"))
    (tmp_path / "vmcore.md5").write_text("d41d8cd98f00b204e9800998ecf8427e  vmcore\n")
    shutil.copy(KDUMP, tmp_path / "vmcore")
    (tmp_path / "vmcore-dmesg.txt").write_bytes(b"\xc5" * 10_000)  # the dump's, garbage or not
    (tmp_path / "console").write_bytes(b"")
    items = {Path(item.path).name: item for item in iter_discover([str(tmp_path)])}
    assert sorted(items) == ["console", "vmcore"]
    assert items["vmcore"].log == str(tmp_path / "vmcore-dmesg.txt")
    assert (items["console"].kind, items["console"].problem_kind.value) == ("not-a-log", "input")
    assert items["console"].problem.endswith("empty file")
