"""The renderings a triager reads and pastes: the first screen, collapsed frames, wrapping,
and markdown that a real GitHub-flavoured Markdown parser reads as the tables it claims."""

import dataclasses
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from dfforensics.core.frames import scan_frames, words_to_bytes
from dfforensics.core.model import AnnotatedWord, DfClass, DfSource, DoubleFault, Registers, Report, Verdict
from dfforensics.core.render import render_markdown, render_table
from dfforensics.logs.analysis import analyze_log_text

FIXTURES = Path(__file__).parents[1] / "fixtures"
SEED = Path(__file__).parent / "data" / "kvm-svm-cpl-double-fault-report.txt"


@pytest.fixture(scope="module")
def example():
    """The 6.1 example dump's report with its vmlinux (the README's example with DWARF)."""
    from dfforensics.dump.analysis import analyze_vmcore_files

    return analyze_vmcore_files(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"),
                                str(FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"))


def _trail(count: int) -> list:
    """Frames the CPU pushed 0x300 bytes apart at one RIP, as a long CPL-0 trail leaves them."""
    frames = []
    for index in range(count):
        base = 0x7FFD00000000 + index * 0x300
        (frame,) = scan_frames(words_to_bytes([0xFFFFFFFFFFFFFFFF, 0x100017EC, 0x33, 0x202, base + 48, 0x2B]),
                               base)
        frames.append(dataclasses.replace(frame, rip_symbol="/victim+0x17ec"))
    return frames


def _report(**fields) -> Report:
    regs = Registers(rip=0x100017D8, cs=0x33, rflags=0x246, rsp=0x7FFC1C749008, ss=0x2B, cr2=0x7FFC1C748FF8)
    df = DoubleFault(Verdict.MATCH, DfClass.CPL_CORRUPTION, "proven", regs, cpu=0, pid=34, comm="victim",
                     sources=[DfSource.LOG], header="PANIC: double fault, error_code: 0x0",
                     call_trace=["<UNK>", "exc_double_fault", "a|b"])
    base = dict(source={"kind": "vmcore", "path": "x", "dump_level": None}, verdict=Verdict.MATCH,
                df_class=DfClass.CPL_CORRUPTION, summary="proven <here>", double_faults=[df],
                warnings=["a warning with <angle> brackets"])
    base.update(fields)
    return Report(**base)


def test_the_first_screen_puts_verdict_evidence_registers_frames_then_the_stack(example):
    text = render_table(example)
    lines = text.splitlines()
    assert lines[0].startswith("verdict: match (cpl-corruption)")
    order = [text.index(marker) for marker in
             ("== Evidence ==", "== Double fault #1", "== Frames", "== Annotated stack ==", "== Context ==")]
    assert order == sorted(order)
    # Evidence starts on the first screen, not at line 117 as before.
    assert text[:text.index("== Evidence ==")].count("\n") < 5


def test_no_python_value_leaks_into_a_table(example):
    text = render_table(example)
    assert not re.search(r"\b(None|True|False)\b", text)
    context = text[text.index("== Context =="):]
    assert "((" not in context and "))" not in context
    assert "dump level" not in context  # unknown values are left out, not printed as None


def test_a_long_run_of_alike_frames_collapses_to_one_row():
    text = render_table(_report(frames=_trail(81)))
    section = text[text.index("== Frames (81) =="):].split("\n== ")[0]
    assert "+80 more like this one" in section
    assert len(section.splitlines()) < 8


def test_short_runs_are_shown_whole():
    text = render_table(_report(frames=_trail(2)))
    assert "more like this one" not in text


def test_gaps_in_the_annotated_stack_are_marked():
    words = [AnnotatedWord(0x1000, 0, ""), AnnotatedWord(0x1008, 0, ""), AnnotatedWord(0x1400, 0, "x")]
    text = render_table(_report(annotated_words=words))
    assert "(0x3f0 bytes not shown)" in text


def test_free_text_wraps_to_the_width_and_files_keep_whole_lines(example):
    narrow = render_table(example, width=100)
    evidence = narrow[narrow.index("== Evidence =="):narrow.index("== Double fault")]
    assert max(len(line) for line in evidence.splitlines()) <= 100
    whole = render_table(example)
    assert max(len(line) for line in whole.splitlines()) > 100


def _tables(markdown: str):
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    tables, current = [], None
    for token in tokens:
        if token.type == "table_open":
            current = {"head": 0, "rows": [], "inline": []}
        elif current is not None and token.type == "thead_open":
            current["head"] += 1
        elif current is not None and token.type == "tr_open":
            current["rows"].append([])
        elif current is not None and token.type == "inline":
            current["rows"][-1].append(token.content)
            current["inline"].append(token)
        elif token.type == "table_close":
            tables.append(current)
            current = None
    return tokens, tables


def test_markdown_is_valid_gfm_with_a_header_on_every_table(example):
    for report in (example, _report(frames=_trail(3)), analyze_log_text(SEED.read_text(), "seed")):
        markdown = render_markdown(report)
        tokens, tables = _tables(markdown)
        assert tables, "the markdown holds tables"
        assert all(table["head"] == 1 for table in tables)
        # Every row has the header's number of cells, and no cell breaks its line.
        for table in tables:
            widths = {len(row) for row in table["rows"]}
            assert len(widths) == 1, table["rows"][:3]
            for inline in table["inline"]:
                assert not any(child.type in ("softbreak", "hardbreak") for child in inline.children or [])
        # Nothing after a table is swallowed into it: the call trace is a paragraph of its own.
        cells = [cell for table in tables for row in table["rows"] for cell in row]
        assert not any(cell.startswith("call trace") for cell in cells)


def test_markdown_keeps_angle_brackets_and_pipes_as_text():
    markdown = render_markdown(_report())
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    assert "&lt;UNK&gt;" in html and "<UNK>" not in html
    assert "a|b" in html.replace("\\|", "|")
    assert "&lt;angle&gt;" in html


def test_evidence_never_contradicts_the_register_table_on_the_seed():
    report = analyze_log_text(SEED.read_text(), "seed")
    checks = {e.check: e for e in report.evidence}
    text = render_table(report)
    if "= first push slot below RSP" in text:
        assert checks["cr2-at-first-push-slot"].status.value != "fail"


def test_a_proven_match_shows_no_failing_check(example):
    assert example.verdict is Verdict.MATCH
    failing = [e.check for e in example.evidence if e.status.value == "fail"]
    assert failing == [], failing
