"""Every real console log in tests/data/logs/ is classified as its header says.

Like syzkaller's pkg/report testdata: a new real log is a new file, not new
test code. Each file starts with `KEY: value` lines (SOURCE, VERDICT, DF_CLASS,
RIP, RSP, optional ARGS), an empty line, then the log verbatim.
"""

import shlex
from pathlib import Path

import pytest

from dfforensics.logs.analysis import analyze_log_text

LOGS = sorted((Path(__file__).parent / "data" / "logs").glob("*.log"))


def _load(path: Path) -> tuple[dict[str, str], str]:
    head, _, body = path.read_text(errors="replace").partition("\n\n")
    meta = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    return meta, body


def _environment(meta: dict[str, str]):
    args = shlex.split(meta.get("ARGS", ""))
    return args[args.index("--environment") + 1] if "--environment" in args else None


def test_corpus_is_large_and_covers_every_class():
    metas = [_load(path)[0] for path in LOGS]
    assert len(metas) >= 25
    assert all(m["SOURCE"].startswith("http") for m in metas)
    classes = {m["DF_CLASS"] for m in metas}
    assert classes >= {"cpl-corruption", "kernel-stack-overflow", "wild-rsp", "syscall-entry-window",
                       "bare-metal", "kernel-address-space", "other", "none"}


@pytest.mark.parametrize("path", LOGS, ids=[p.name for p in LOGS])
def test_log_is_classified_as_a_kernel_engineer_would(path):
    meta, body = _load(path)
    report = analyze_log_text(body, str(path), _environment(meta))
    expected_class = None if meta["DF_CLASS"] == "none" else meta["DF_CLASS"]
    assert (report.verdict.value, report.df_class.value if report.df_class else None) == (
        meta["VERDICT"], expected_class), report.summary
    # A log can never prove the signature.
    assert report.verdict.value != "match"


@pytest.mark.parametrize("path", LOGS, ids=[p.name for p in LOGS])
def test_registers_are_read_as_printed(path):
    meta, body = _load(path)
    report = analyze_log_text(body, str(path), _environment(meta))
    if meta["VERDICT"] == "no-double-fault" or meta.get("RSP", "none").split()[0] == "none":
        return
    # The #DF the report's verdict came from (a fragment never outvotes a whole report).
    chosen = next(df for df in report.double_faults if df.summary == report.summary)
    assert chosen.regs.rsp == int(meta["RSP"].split()[0], 16)
    rip = meta["RIP"].split()[0]
    if rip.startswith("0x"):
        assert chosen.regs.rip == int(rip, 16)
    elif rip != "none":
        assert chosen.regs.rip_symbol is not None
        assert chosen.regs.rip_symbol.split()[0] == rip.split()[0]
