"""
What a console log's bytes must look like
-----------------------------------------

One test of "is this text?", shared by ``dfforensics log`` and triage's
discovery and workers, so that what one refuses as binary the others do too.
"""

from typing import Final

__all__ = ("looks_binary",)

_SAMPLE: Final = 65536


def looks_binary(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes) is binary rather than a console log:
    a NUL, more than 1 % control characters, or more than 10 % bytes that are no
    UTF-8 (kernel messages are ASCII with a little UTF-8; 200 KB of 0xC5 is not text)."""
    sample = data[:_SAMPLE]
    if b"\0" in sample:
        return True
    control = sum(1 for byte in sample if byte < 32 and byte not in b"\t\n\r\f\v\x1b")
    if control > len(sample) // 100:
        return True
    text = sample.decode("utf-8", errors="replace")
    # The sample's end may cut one character in two: that one replacement is no sign.
    return text.count("\ufffd") - 1 > len(text) // 10
