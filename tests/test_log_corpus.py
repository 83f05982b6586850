"""Every real console log in tests/data/logs/ is classified as its header says.

Like syzkaller's pkg/report testdata: a new real log is a new file, not new
test code. The format is tests/data/logs/README.md's: exactly the header keys
it lists, in order, one empty line, then the log verbatim. The loader is
strict so that a header cannot drift from its log: KERNEL and ENV are checked
against what the parser reads from the log itself.
"""

import re
import shlex
from pathlib import Path

import pytest

from dfforensics.core.model import DfClass, Verdict
from dfforensics.logs.analysis import analyze_log_text
from dfforensics.logs.consolelog import normalize_lines

LOGS = sorted((Path(__file__).parent / "data" / "logs").glob("*.log"))

# The README's keys, in its order; ARGS is the only optional one.
KEYS = ("SOURCE", "TITLE", "KERNEL", "ENV", "VERDICT", "DF_CLASS", "RIP", "RSP", "ARGS", "WHY")
OPTIONAL_KEYS = frozenset({"ARGS"})
# A log alone is never better than `possible`: `match` is not a corpus verdict.
VERDICTS = frozenset({Verdict.POSSIBLE.value, Verdict.NO_MATCH.value, Verdict.NO_DOUBLE_FAULT.value})
DF_CLASSES = frozenset({c.value for c in DfClass} | {"none"})
ENVIRONMENTS = frozenset({"guest", "bare-metal", "unknown"})
SOURCE_RE = re.compile(r"https?://\S+|github:[\w.-]+/[\w.-]+ \S+")
# A user-mode register block as the kernel prints it (the CPL-3 state of a syscall,
# an interrupt from user mode): what makes a look-alike look like the signature.
USER_BLOCK_RE = re.compile(r"^(?:RIP: 0033:|RSP: 002b:)")


class CorpusFormatError(AssertionError):
    pass


def _load(path: Path) -> tuple[dict[str, str], str]:
    """Return (header, body), raising CorpusFormatError for anything the README does not allow."""
    text = path.read_text(errors="replace")
    head, sep, body = text.partition("\n\n")
    if not sep or not body.strip():
        raise CorpusFormatError(f"{path.name}: no empty line followed by a log body")
    if body.startswith("\n"):
        raise CorpusFormatError(f"{path.name}: more than one empty line after the header")
    meta: dict[str, str] = {}
    for line in head.split("\n"):
        key, colon, value = line.partition(": ")
        if not colon or key not in KEYS:
            raise CorpusFormatError(f"{path.name}: header line {line[:60]!r} is not a README key")
        if key in meta:
            raise CorpusFormatError(f"{path.name}: {key} given twice")
        if not value.strip() or value != value.strip():
            raise CorpusFormatError(f"{path.name}: {key} is empty or padded")
        meta[key] = value
    expected = [key for key in KEYS if key not in OPTIONAL_KEYS or key in meta]
    if list(meta) != expected:
        raise CorpusFormatError(f"{path.name}: keys {list(meta)} are not the README's {expected}")
    if meta["VERDICT"] not in VERDICTS:
        raise CorpusFormatError(f"{path.name}: VERDICT {meta['VERDICT']!r} is not one of {sorted(VERDICTS)}")
    if meta["DF_CLASS"] not in DF_CLASSES:
        raise CorpusFormatError(f"{path.name}: DF_CLASS {meta['DF_CLASS']!r} is not a class")
    if not SOURCE_RE.fullmatch(meta["SOURCE"]):
        raise CorpusFormatError(
            f"{path.name}: SOURCE {meta['SOURCE']!r} is neither a URL nor github:owner/repo path")
    return meta, body


def _environment(meta: dict[str, str]):
    args = shlex.split(meta.get("ARGS", ""))
    return args[args.index("--environment") + 1] if "--environment" in args else None


def _analyze(path: Path):
    meta, body = _load(path)
    return meta, body, analyze_log_text(body, str(path), _environment(meta))


def _has_user_block(body: str) -> bool:
    return any(USER_BLOCK_RE.match(line) for line in normalize_lines(body))


def test_corpus_is_large_and_covers_every_class():
    loaded = [_load(path) for path in LOGS]
    metas = [meta for meta, _ in loaded]
    assert len(metas) >= 60
    classes = {m["DF_CLASS"] for m in metas}
    assert classes >= {"cpl-corruption", "kernel-stack-overflow", "wild-rsp", "syscall-entry-window",
                       "bare-metal", "kernel-address-space", "other", "none"}
    assert {m["VERDICT"] for m in metas} == VERDICTS
    # Look-alikes are counted from the logs, not from a header: a user-mode block
    # printed somewhere, and an answer that is not the signature's.
    look_alikes = [m for m, body in loaded if _has_user_block(body) and m["VERDICT"] != "possible"]
    assert len(look_alikes) >= 10


@pytest.mark.parametrize("path", LOGS, ids=[p.name for p in LOGS])
def test_header_is_strict(path):
    _load(path)


def test_the_loader_rejects_what_the_readme_does_not_allow(tmp_path):
    good = LOGS[0].read_text(errors="replace")
    head, _, body = good.partition("\n\n")
    cases = {
        "missing-key": head.replace("\nTITLE: ", "\nXTITLE: ", 1),
        "swapped": "\n".join([head.split("\n")[1], head.split("\n")[0], *head.split("\n")[2:]]),
        "bad-verdict": re.sub(r"^VERDICT: .*$", "VERDICT: match", head, flags=re.M),
        "bad-class": re.sub(r"^DF_CLASS: .*$", "DF_CLASS: hypervisor", head, flags=re.M),
        "empty": re.sub(r"^WHY: .*$", "WHY: ", head, flags=re.M),
    }
    for name, bad_head in cases.items():
        path = tmp_path / f"{name}.log"
        path.write_text(bad_head + "\n\n" + body)
        with pytest.raises(CorpusFormatError):
            _load(path)
    two_blank = tmp_path / "two-blank.log"
    two_blank.write_text(head + "\n\n\n" + body)
    with pytest.raises(CorpusFormatError):
        _load(two_blank)


@pytest.mark.parametrize("path", LOGS, ids=[p.name for p in LOGS])
def test_kernel_and_env_agree_with_the_log(path):
    meta, body, report = _analyze(path)
    kernel = meta["KERNEL"].split()[0]
    if report.kernel.release is not None:
        assert kernel == report.kernel.release, f"the log prints {report.kernel.release}"
    else:
        # The log prints no release the parser reads: the header says why, and
        # does not name a release the log prints (the parser would have missed it).
        assert "(" in meta["KERNEL"], "KERNEL must say why the log gives no release"
        assert not re.search(rf"(?<![\w.]){re.escape(kernel)}(?![\w.])", body), \
            f"the log prints {kernel} but the parser read no release"
    env = meta["ENV"].split()[0]
    assert env in ENVIRONMENTS
    assert env == report.kernel.environment, f"the analysis reports {report.kernel.environment}"
    if _environment(meta) is not None:
        # ARGS only says what the log cannot: it never overrides a log that tells.
        assert analyze_log_text(body, str(path)).kernel.environment == "unknown"


@pytest.mark.parametrize("path", LOGS, ids=[p.name for p in LOGS])
def test_log_is_classified_as_a_kernel_engineer_would(path):
    meta, _, report = _analyze(path)
    expected_class = None if meta["DF_CLASS"] == "none" else meta["DF_CLASS"]
    assert (report.verdict.value, report.df_class.value if report.df_class else None) == (
        meta["VERDICT"], expected_class), report.summary
    # A log can never prove the signature.
    assert report.verdict.value != "match"


@pytest.mark.parametrize("path", LOGS, ids=[p.name for p in LOGS])
def test_registers_are_read_as_printed(path):
    meta, _, report = _analyze(path)
    if meta["VERDICT"] == "no-double-fault" or meta["RSP"].split()[0] == "none":
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


def _readme_tables() -> str:
    """The README's Files and Counts tables, as `python -m tests.test_log_corpus` prints them."""
    rows = ["| file | era / kernel | verdict | df_class | env | user block | source |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    counts: dict[tuple[str, str], int] = {}
    look_alikes = 0
    for path in LOGS:
        meta, body = _load(path)
        user_block = _has_user_block(body)
        look_alikes += user_block and meta["VERDICT"] != "possible"
        counts[meta["VERDICT"], meta["DF_CLASS"]] = counts.get((meta["VERDICT"], meta["DF_CLASS"]), 0) + 1
        rows.append(f"| `{path.name}` | {meta['KERNEL']} | {meta['VERDICT']} | {meta['DF_CLASS']} | "
                    f"{meta['ENV']} | {'yes' if user_block else 'no'} | {meta['SOURCE']} |")
    rows += ["", "## Counts", "", "| verdict | df_class | files |", "| --- | --- | --- |"]
    rows += [f"| {verdict} | {df_class} | {n} |" for (verdict, df_class), n in sorted(counts.items())]
    rows += ["", f"Total: {len(LOGS)} files; {look_alikes} look-alikes (a user-mode register block "
             "printed, an answer other than `possible`)."]
    return "\n".join(rows) + "\n"


def test_readme_tables_are_regenerated():
    readme = (LOGS[0].parent / "README.md").read_text()
    assert _readme_tables() in readme, "regenerate with: python -m tests.test_log_corpus"


if __name__ == "__main__":
    print(_readme_tables(), end="")
