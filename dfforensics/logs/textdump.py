"""
Stack words quoted in text
--------------------------

Bug reports quote stack memory as the crash utility's ``rd``/``rd -s`` or gdb's
``x/gx`` print it, often with the reporter's notes typed in between and lines
wrapped by a mail client (the seed report does all of that). This module turns
such text back into address-contiguous runs of words for the frame scanner.
Pure: no drgn.
"""

import re
from dataclasses import dataclass
from typing import Final, Iterable, Optional

__all__ = ("WordRun", "parse_word_dumps")

# "7f6cb9556768: 0000..." (crash) or "0x7f6cb9556768 <sym+8>:\t0x0000..." (gdb).
_ADDRESS_LINE_RE: Final = re.compile(
    r"^\s*(?:crash>\s*)?(?:0x)?(?P<address>[0-9a-fA-F]{6,16})(?:\s+<[^>]*>)?:\s+(?P<rest>.*)$"
)
_WORD_RE: Final = re.compile(r"^(?:0x)?([0-9a-fA-F]{16})$")
# rd -s prints kernel words as symbols ("dump_stack+71" or "dump_stack+0x47").
_SYMBOL_WORD_RE: Final = re.compile(r"^[A-Za-z_][\w.]*(?:\+(?:0x)?[0-9a-fA-F]+)?$")


@dataclass
class WordRun:
    """Contiguous stack words quoted in text. ``None`` marks a word shown as a symbol."""

    start: int
    words: list[Optional[int]]
    #: 1-based line of the text where the run starts.
    line: int

    @property
    def end(self) -> int:
        return self.start + 8 * len(self.words)


def _tokens_to_words(tokens: Iterable[str]) -> tuple[list[Optional[int]], bool]:
    """Read words until the first token that is neither hex nor a symbol.

    Returns the words and whether the line ended in free text (a note).
    """
    words: list[Optional[int]] = []
    for token in tokens:
        match = _WORD_RE.match(token)
        if match:
            words.append(int(match.group(1), 16))
        elif _SYMBOL_WORD_RE.match(token) and "+" in token:
            words.append(None)
        else:
            return words, True
    return words, False


def parse_word_dumps(text: str) -> list[WordRun]:
    """Find the runs of 64-bit stack words quoted in a text.

    A line ``ADDRESS: WORD WORD ...`` starts or extends a run; a following line
    of bare 16-digit words (a wrapped line) continues it at the next address.
    Notes typed after the words are skipped. Only 16-digit words count, so
    prose numbers are not taken for memory.
    """
    runs: list[WordRun] = []
    current: Optional[WordRun] = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _ADDRESS_LINE_RE.match(line)
        if match:
            address = int(match.group("address"), 16)
            words, _ = _tokens_to_words(match.group("rest").split())
            if not words or address % 8:
                current = None
                continue
            if current is None or current.end != address:
                current = WordRun(address, [], number)
                runs.append(current)
            current.words.extend(words)
            continue
        if current is None:
            continue
        tokens = line.split()
        words, _ = _tokens_to_words(tokens)
        if words:
            current.words.extend(words)
        elif tokens and not tokens[0].startswith(("~", "(")):
            # Prose breaks the run; a note such as "~0x.. = 0x81" does not.
            current = None
    return runs
