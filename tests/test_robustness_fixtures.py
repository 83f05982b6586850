"""Bad and damaged inputs made from the real fixtures: one error line and exit 2
where nothing can be analysed, an honest (never stronger) verdict with warnings
where something can, and input files never written."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfforensics.inputs.formats import decompressed

FIXTURES = Path(__file__).parents[1] / "fixtures"
DUMP = FIXTURES / "cpl0-irq-df" / "vmcore.xz"
VMLINUX = FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"
OTHER_VMLINUX = FIXTURES / "kernels" / "linux-6.12" / "vmlinux.xz"
MODULE = FIXTURES / "kernels" / "linux-6.1" / "dftest.ko.xz"


def run(*args):
    return subprocess.run([sys.executable, "-m", "dfforensics.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def assert_one_error(result, *words):
    assert result.returncode == 2, result.stdout[:500]
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfforensics: error: "), result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def plain_dump() -> Path:
    return Path(decompressed(str(DUMP), "VMCORE"))


@pytest.mark.parametrize("length, words", [(40, ["not an ELF core"]), (300, ["truncated or corrupt"]),
                                           (3000, ["truncated or corrupt"])])
def test_dump_truncated_in_header_or_notes(plain_dump, tmp_path, length, words):
    cut = tmp_path / "vmcore"
    with open(plain_dump, "rb") as source:
        cut.write_bytes(source.read(length))
    assert_one_error(run(cut, VMLINUX), "VMCORE", *words)


def test_dump_truncated_mid_memory_says_what_is_missing_and_never_guesses(plain_dump, tmp_path):
    cut = tmp_path / "vmcore"
    with open(plain_dump, "rb") as source, open(cut, "wb") as out:
        out.write(source.read(70_000_000))
    result = run(cut, VMLINUX, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # The user stack pages survive the cut; the #DF stack does not. What
    # remains proves the frames; nothing is taken for a "no mapping".
    assert report["verdict"] in ("match", "possible")
    assert any("not in the dump" in warning for warning in report["warnings"])
    assert report["df_class"] == "cpl-corruption"


def test_vmlinux_of_another_kernel_is_an_error_not_a_wrong_answer():
    assert_one_error(run(DUMP, OTHER_VMLINUX), "does not belong", "build ID")


def test_stripped_vmlinux(tmp_path):
    objcopy = shutil.which("objcopy")
    assert objcopy, "binutils (objcopy) comes with the machine's gcc"
    stripped = tmp_path / "vmlinux"
    subprocess.run([objcopy, "--strip-debug", decompressed(str(VMLINUX), "VMLINUX"), str(stripped)],
                   check=True)
    assert_one_error(run(DUMP, stripped), "no DWARF debug info")


def test_module_given_as_vmlinux():
    assert_one_error(run(DUMP, MODULE), "not an x86_64 kernel image", "ET_REL")


def test_corrupt_compressed_dump(tmp_path):
    data = DUMP.read_bytes()
    broken = tmp_path / "vmcore.xz"
    broken.write_bytes(data[:100_000])
    assert_one_error(run(broken, VMLINUX), "corrupt xz data")


def _fingerprint(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_mode


def test_inputs_are_never_written(tmp_path):
    inputs = [DUMP, VMLINUX, FIXTURES / "cpl0-irq-df" / "console.log"]
    before = [_fingerprint(p) for p in inputs]
    assert run(DUMP, VMLINUX).returncode == 0
    assert run("log", inputs[2]).returncode == 0
    assert run("triage", FIXTURES / "cpl0-irq-df", "--debuginfo-dir", VMLINUX.parent,
               "--format", "jsonl").returncode == 0
    assert [_fingerprint(p) for p in inputs] == before


@pytest.mark.parametrize("tool, suffix", [("zstd", ".zst"), ("gzip", ".gz")])
def test_compressed_inputs_of_every_kind(tmp_path, plain_dump, tool, suffix):
    """VMCORE and VMLINUX may be .gz, .xz or .zst; each is decompressed once into the cache."""
    import gzip as gzip_module

    import zstandard

    vmlinux_plain = Path(decompressed(str(VMLINUX), "VMLINUX"))
    for source, name in ((plain_dump, "vmcore"), (vmlinux_plain, "vmlinux")):
        target = tmp_path / (name + suffix)
        with open(source, "rb") as src, open(target, "wb") as out:
            if tool == "zstd":
                zstandard.ZstdCompressor(level=1).copy_stream(src, out)
            else:
                with gzip_module.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
                    shutil.copyfileobj(src, gz)
    result = run(tmp_path / ("vmcore" + suffix), tmp_path / ("vmlinux" + suffix), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "match"
