"""Make device-supplied strings safe to log or print.

A microcontroller controls the bytes of HELLO, LOG and ERROR payloads and of every text line. Before
any of them reaches a log or a terminal, control characters (ANSI escapes, carriage returns that
overwrite a log line, NULs) are replaced and the length is capped, so a broken or hostile device cannot
forge log lines or flood the log.
"""

from __future__ import annotations

# A log line stays readable on an 80-column terminal with a little context around it; 200 characters
# keep a whole HELLO or a typical firmware LOG message while stopping a device from flooding the log.
MAX_LOGGED_TEXT = 200

_REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


def printable(text: str | bytes, limit: int = MAX_LOGGED_TEXT) -> str:
    """``text`` with non-printable characters replaced by U+FFFD and cut to ``limit`` characters.

    Bytes are decoded as UTF-8 with invalid sequences replaced. A cut string ends in an ellipsis.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    clean = "".join(ch if ch.isprintable() else _REPLACEMENT for ch in text)
    return clean + "\N{HORIZONTAL ELLIPSIS}" if cut else clean
