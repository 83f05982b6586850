"""The cache of decompressed inputs: a size cap with least-recently-used eviction, a way to
clear it, and a free-space check that names the cache, on real files in temporary caches."""

import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfforensics.core.errors import DumpError, ErrorKind
from dfforensics.inputs import formats


def _compressed(tmp_path: Path, name: str, size: int) -> str:
    path = tmp_path / f"{name}.xz"
    # ELF-headed, so the cache keeps it (it only keeps inputs it could use).
    path.write_bytes(lzma.compress(b"\x7fELF" + os.urandom(size - 4)))
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("DFFORENSICS_CACHE", str(directory))
    return directory


def test_entries_used_longest_ago_are_evicted_first(tmp_path, cache, monkeypatch):
    paths = [formats.decompressed(_compressed(tmp_path, f"f{i}", 1 << 20), "VMLINUX") for i in range(3)]
    # f0 last used three hours ago, f1 two hours ago: f0 is the first to go.
    for hours, path in ((3, paths[0]), (2, paths[1])):
        stamp = time.time() - hours * 3600
        os.utime(path, (stamp, stamp))
    monkeypatch.setenv("DFFORENSICS_CACHE_MAX", "2500K")
    newest = formats.decompressed(_compressed(tmp_path, "f3", 1 << 20), "VMLINUX")
    left = {entry.path for entry in formats.cache_entries(str(cache))}
    # Over the cap, the two old entries go; the one used moments ago and the new one stay.
    assert left == {paths[2], newest}


def test_entries_in_use_are_never_evicted(tmp_path, cache, monkeypatch):
    first = formats.decompressed(_compressed(tmp_path, "a", 1 << 20), "VMLINUX")
    monkeypatch.setenv("DFFORENSICS_CACHE_MAX", "1K")
    second = formats.decompressed(_compressed(tmp_path, "b", 1 << 20), "VMLINUX")
    # Both were used moments ago (a run decompresses its dump, then its vmlinux).
    assert os.path.exists(first) and os.path.exists(second)


def test_a_hit_counts_as_a_use(tmp_path, cache):
    source = _compressed(tmp_path, "x", 4096)
    path = formats.decompressed(source, "VMLINUX")
    os.utime(path, (1, 1))
    assert formats.decompressed(source, "VMLINUX") == path
    assert os.stat(path).st_mtime > time.time() - 60


def test_clear_removes_every_entry_and_the_command_says_so(tmp_path, cache):
    for name in ("p", "q"):
        formats.decompressed(_compressed(tmp_path, name, 8192), "VMLINUX")
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", "cache", "clear"],
                            capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0 and "removed 2 entries" in result.stdout
    assert formats.cache_entries(str(cache)) == []


def test_too_little_free_space_is_the_cache_s_error(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("DFFORENSICS_CACHE_MIN_FREE", "1000000T")
    with pytest.raises(DumpError) as caught:
        formats.decompressed(_compressed(tmp_path, "big", 8192), "VMLINUX")
    assert caught.value.kind is ErrorKind.CACHE and str(cache) in str(caught.value)
    assert formats.cache_entries(str(cache)) == []


def test_a_bad_cap_is_one_clear_error(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("DFFORENSICS_CACHE_MAX", "lots")
    with pytest.raises(DumpError, match="DFFORENSICS_CACHE_MAX=lots: not a size"):
        formats.decompressed(_compressed(tmp_path, "c", 8192), "VMLINUX")
    assert formats.cache_entries(str(cache)) == []  # refused before anything was written
