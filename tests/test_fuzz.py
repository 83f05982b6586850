"""Fuzzing: the pure parts with hypothesis, and a bounded mutation fuzzer over
the ELF header and notes of a real fixture vmcore. No crash but the clean error."""

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfforensics.logs.analysis import analyze_log_text
from dfforensics.core.model import RegionKind, Registers, RspRegion
from dfforensics.core.observation import Medium, Observation
from dfforensics.inputs.formats import decompressed, parse_vmcoreinfo
from dfforensics.core.render import render
from dfforensics.logs.textdump import parse_word_dumps
from dfforensics.core.verdict import decide

FIXTURES = Path(__file__).parents[1] / "fixtures"
SEED_LINES = (Path(__file__).parent / "data/logs/3.16-kvm-svm-cpl-fio.log").read_text().splitlines()
LOG_PIECES = st.sampled_from(SEED_LINES + [
    "traps: PANIC: double fault, error_code: 0x0", "Oops: double fault: 0000 [#1] SMP",
    "BUG: TASK stack guard page was hit at ffffc90000003f58 (stack is ffffc90000004000..ffffc90000008000)",
    "RIP: 0033:0x40166c", "RSP: 002b:", "RSP: 0018:0000000000001000 EFLAGS: 00010086", "CR2:",
    "eip = c1001234, esp = ", "PANIC: double fault, gdt at", "4,1499,1276,-;RSP: 0018:",
    "7f6cb95567c8: 00007f6cfa817ae1 0000000000000033", "ffffffffffffff7e", "Call Trace:", "<#DF>",
    "Hardware name: QEMU Standard PC", "CPU: 0 PID: 1 Comm: x Not tainted 6.1.0 #1",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(LOG_PIECES, st.text(max_size=80)), max_size=60))
def test_log_parser_and_renderings_never_crash(lines):
    text = "\n".join(lines)
    report = analyze_log_text(text)
    for fmt in ("table", "json", "markdown"):
        assert render(report, fmt)
    assert report.verdict.value != "match"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_word_dump_parser_never_crashes(text):
    for run in parse_word_dumps(text):
        assert run.start % 8 == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_vmcoreinfo_parser_never_crashes(data):
    info = parse_vmcoreinfo(data)
    assert info.release is None or isinstance(info.release, str)
    assert info.build_id is None or re.fullmatch("[0-9a-f]+", info.build_id)


WORDS = st.one_of(st.none(), st.integers(0, 2**64 - 1),
                  st.sampled_from([0, 0x10, 0x18, 0x2B, 0x33, 0x1000, 0x7FFC00001008,
                                   0xFFFFC90000010000, 0xFFFFFFFF81000000]))


@settings(max_examples=500, deadline=None)
@given(rip=WORDS, cs=WORDS, rsp=WORDS, ss=WORDS, cr2=WORDS,
       source=st.sampled_from(["log", "memory"]), bits=st.sampled_from([32, 64]),
       environment=st.sampled_from(["guest", "bare-metal", "unknown"]),
       region=st.sampled_from([None, "user-stack", "user-unmapped", "user-range", "kernel-guard-page"]),
       guard=st.booleans(), symbol=st.sampled_from([None, "entry_SYSCALL_64+0x3/0x29", "foo+0x1/0x2"]))
def test_verdict_rules_are_total_and_explain_themselves(rip, cs, rsp, ss, cr2, source, bits,
                                                       environment, region, guard, symbol):
    obs = Observation(medium=Medium(source), regs=Registers(rip=rip, cs=cs, rsp=rsp, ss=ss, cr2=cr2,
                                                    rip_symbol=symbol),
                      arch_bits=bits, environment=environment, guard_page_hit=guard,
                      rsp_region=RspRegion(RegionKind(region), region) if region else None)
    decision = decide(obs)
    assert decision.summary and decision.evidence
    if source == "log":
        assert decision.verdict.value != "match"


def test_mutated_vmcore_headers_and_notes_end_cleanly(tmp_path):
    """Flip bytes in the first 8 KiB (ELF header, program headers, notes) of a real dump."""
    original = Path(decompressed(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"), "VMCORE"))
    vmlinux = FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"
    head_size = 8192
    with open(original, "rb") as file:
        head = file.read(head_size)
    rng = random.Random(int(os.environ.get("DFFORENSICS_FUZZ_SEED", "20261125")))
    budget = float(os.environ.get("DFFORENSICS_FUZZ_SECONDS", "60"))
    mutant = tmp_path / "vmcore"
    # One copy of the dump; only its head is rewritten for each mutant.
    with open(original, "rb") as source, open(mutant, "wb") as out:
        while chunk := source.read(1 << 24):
            out.write(chunk)
    deadline = time.monotonic() + budget
    runs = outcomes_ok = 0
    while time.monotonic() < deadline:
        data = bytearray(head)
        for _ in range(rng.choice((1, 2, 4, 16))):
            data[rng.randrange(head_size)] = rng.randrange(256)
        with open(mutant, "r+b") as out:
            out.write(data)
        result = subprocess.run([sys.executable, "-m", "dfforensics.cli", str(mutant), str(vmlinux),
                                 "--format", "json"], capture_output=True, text=True, timeout=120)
        runs += 1
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        if result.returncode == 0:
            outcomes_ok += 1
        else:
            assert result.returncode == 2
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("dfforensics: error: "), result.stderr
    print(f"mutation fuzzer: {runs} mutants, {outcomes_ok} analysed, {runs - outcomes_ok} clean errors")
    assert runs >= 5


@pytest.mark.parametrize("text", [
    "[    1.0] CPU: 0 PID: 1 Comm: x Tainted: " + " " * 200_000 + "x\n",
    "BUG: stack guard page was hit at 0000 (stack is " + "." * 200_000 + "\n",
    "Call Trace:" + " " * 200_000 + "x\n",
    "RIP: 0010:" + "0" * 200_000 + "\n",
    "> " * 100_000 + "PANIC: double fault, error_code: 0x0\n",
], ids=["tainted-spaces", "guard-page-dots", "call-trace-spaces", "rip-digits", "deep-quotes"])
def test_pathological_lines_end_in_a_report(text):
    # Once quadratic (issue 22 item 7: 20-40 s at 50 kB); bench/log_scaling.py measures that
    # doubling these inputs at most doubles the work. Here: they end, with an answer.
    report = analyze_log_text(text)
    assert report.summary and report.verdict.value in ("possible", "no-match", "no-double-fault")
