"""makedumpfile's flattened stream is read without 'makedumpfile -R' by the user."""

import json
import random
import struct
import subprocess
import sys
from pathlib import Path

from dfforensics.inputs.formats import decompressed, reassembled

FIXTURES = Path(__file__).parents[1] / "fixtures"


def flatten(source: Path, target: Path, chunk: int = 1 << 20) -> None:
    """Write a file as a flattened stream (makedumpfile.h layout), records shuffled."""
    data = source.read_bytes()
    records = [(offset, data[offset:offset + chunk]) for offset in range(0, len(data), chunk)
               if data[offset:offset + chunk].strip(b"\0")]
    random.Random(7).shuffle(records)
    with open(target, "wb") as out:
        out.write((b"makedumpfile\0\0\0\0" + struct.pack(">qq", 1, 1)).ljust(4096, b"\0"))
        for offset, payload in records:
            out.write(struct.pack(">qq", offset, len(payload)) + payload)
        out.write(struct.pack(">qq", -1, -1))


def test_flattened_stream_is_reassembled_and_analysed(tmp_path):
    plain = Path(decompressed(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"), "VMCORE"))
    flat = tmp_path / "dump.202611250000"
    flatten(plain, flat)
    rebuilt = Path(reassembled(str(flat)))
    assert rebuilt.read_bytes().rstrip(b"\0") == plain.read_bytes().rstrip(b"\0")
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", str(flat),
                             str(FIXTURES / "kernels/linux-6.1/vmlinux.xz"), "--format", "json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "match" and report["source"]["format"] == "flattened"


def test_cut_flattened_stream_is_one_error_line(tmp_path):
    plain = Path(decompressed(str(FIXTURES / "wild-rsp-df" / "vmcore.xz"), "VMCORE"))
    flat = tmp_path / "dump.1"
    flatten(plain, flat)
    cut = tmp_path / "dump.2"
    cut.write_bytes(flat.read_bytes()[:5_000_000])
    result = subprocess.run([sys.executable, "-m", "dfforensics.cli", str(cut),
                             str(FIXTURES / "kernels/linux-6.1/vmlinux.xz")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "flattened dump cut" in result.stderr
