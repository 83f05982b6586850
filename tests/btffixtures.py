"""Detached BTF made by pahole from the committed fixture kernels, in a temporary directory.

The fixture kernels were built without CONFIG_DEBUG_INFO_BTF, so their dumps hold no BTF:
the no-vmlinux tests read a detached BTF that pahole encodes from the same vmlinux (the
bytes the kernel's own build would have put between __start_BTF and __stop_BTF, as
pahole 1.24 encodes them: types and per-CPU variables). Import ``fixture_btf`` into a
test module to use it.
"""

import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import drgn
import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
KERNELS = {"6.1": "cpl0-irq-df", "6.12": "cpl0-irq-df-6.12"}


@dataclass
class FixtureBtf:
    kernel: str
    vmlinux: str
    btf_path: str
    btf_bytes: bytes
    vmcore: str  # an uncompressed dump of this kernel
    dwarf_prog: drgn.Program  # the dump opened with its vmlinux, as dfforensics does


def _decompress(source: Path, target: Path) -> None:
    with lzma.open(source) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def make_fixture_btf(kernel: str, directory: Path) -> FixtureBtf:
    if not shutil.which("pahole"):
        pytest.skip("pahole (dwarves) is needed to encode BTF from the fixture vmlinux")
    from dfforensics.dump.opendump import open_dump

    vmlinux = directory / "vmlinux"
    _decompress(FIXTURES / f"kernels/linux-{kernel}/vmlinux.xz", vmlinux)
    btf_path = directory / "vmlinux.btf"
    # --btf_gen_all: every kind this pahole (1.24) knows (FLOAT, ENUM64, tags), as the
    # kernel's scripts/pahole-flags.sh asks of it.
    subprocess.run(["pahole", "--btf_gen_all", f"--btf_encode_detached={btf_path}", str(vmlinux)],
                   check=True, capture_output=True, timeout=300)
    vmcore = directory / "vmcore"
    _decompress(FIXTURES / KERNELS[kernel] / "vmcore.xz", vmcore)
    opened = open_dump(str(vmcore), str(vmlinux))
    return FixtureBtf(kernel, str(vmlinux), str(btf_path), btf_path.read_bytes(), str(vmcore),
                      opened.prog)


@pytest.fixture(scope="session", params=sorted(KERNELS))
def fixture_btf(request, tmp_path_factory) -> FixtureBtf:
    return make_fixture_btf(request.param, tmp_path_factory.mktemp(f"btf-{request.param}"))


@pytest.fixture(scope="session")
def detached_btf(tmp_path_factory):
    """A function: kernel ("6.1", "6.12") -> (vmlinux path, detached BTF path), made once."""
    made: dict[str, tuple[str, str]] = {}

    def get(kernel: str) -> tuple[str, str]:
        if kernel not in made:
            if not shutil.which("pahole"):
                pytest.skip("pahole (dwarves) is needed to encode BTF from the fixture vmlinux")
            directory = tmp_path_factory.mktemp(f"detached-{kernel}")
            vmlinux = directory / "vmlinux"
            _decompress(FIXTURES / f"kernels/linux-{kernel}/vmlinux.xz", vmlinux)
            btf_path = directory / "vmlinux.btf"
            subprocess.run(["pahole", "--btf_gen_all", f"--btf_encode_detached={btf_path}", str(vmlinux)],
                           check=True, capture_output=True, timeout=300)
            made[kernel] = (str(vmlinux), str(btf_path))
        return made[kernel]

    return get
