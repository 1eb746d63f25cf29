"""Text from devices made safe for the operator's terminal (docs/collector.md, "Commands reading the
store").

Everything a device sends is hostile: labels, agent versions, info and metrics maps, pipe names,
reply texts, topics, and the store's copies of all of them. Printed as it is, such text can move the
cursor, clear the screen, set the window title or recolour the terminal (ESC sequences), reorder what
is shown (bidi overrides), break a rich table (``[/x]`` read as markup), or make the output unbounded.

The rule, for every command that shows such text:

* A character is shown as itself only when :meth:`str.isprintable` says so and it is not a backslash.
  Every other one (C0 and C1 controls, ESC, DEL, bidi and other format characters, line separators,
  non-ASCII spaces, unassigned code points, lone surrogates) and the backslash itself become a visible
  escape written as Python writes it: ``\\x1b``, ``\\n``, ``\\u202e``, ``\\\\``. The escaped form is
  unambiguous: a device cannot make it look like different text.
* Rich output builds :class:`rich.text.Text` objects from the escaped text, never markup strings.
* Where a cell or a line would otherwise grow with the device's text, it is cut to a bound and ends in
  an ellipsis.

``--json`` output is not passed through here: :func:`json.dumps` with its default ``ensure_ascii``
writes every control, non-ASCII and DEL character as a ``\\uXXXX`` escape, so it is exact (a reader
gets the device's text back) and holds only printable ASCII.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

# Ids are at most 63 characters (docs/protocol.md §5), so a cell of 64 never cuts an id; a label, agent
# version or metric longer than that is cut rather than widening the table without bound.
MAX_CELL_CHARS = 64
# A reason or a free-text field on a line of its own: room for a verifier's reason quoting a value.
MAX_LINE_CHARS = 400

ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"
_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: object, limit: int | None = None, *, backslash: bool = True) -> str:
    """``text`` (``str()`` of it if not a string) with every non-printable character and the backslash
    escaped, cut to at most ``limit`` characters (ending in an ellipsis) when a limit is given.

    ``backslash=False`` leaves backslashes alone, for text of our own that quotes values with
    :func:`repr` (error messages): their escapes are not doubled, at the price of being ambiguous.
    """
    s = text if isinstance(text, str) else str(text)
    pieces: list[str] = []
    size = 0
    for ch in s:
        piece = ch if ch.isprintable() and (ch != "\\" or not backslash) else _escape_char(ch)
        pieces.append(piece)
        size += len(piece)
        if limit is not None and size > limit:
            while pieces and size + len(ELLIPSIS) > limit:
                size -= len(pieces.pop())
            return "".join(pieces) + ELLIPSIS
    return "".join(pieces)


# OWASP "CSV Injection": a spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """Device text for a CSV cell: :func:`escape`, then a leading ``'`` when a spreadsheet would read the
    cell as a formula (a label ``=HYPERLINK(...)``); the quote is shown, the formula never runs."""
    shown = escape(text)
    return "'" + shown if shown.startswith(_FORMULA_LEADS) else shown


def safe_text(text: object, limit: int | None = MAX_CELL_CHARS, style: str = "") -> Text:
    """A rich :class:`~rich.text.Text` of :func:`escape`'s result: shown literally, never as markup."""
    from rich.text import Text

    return Text(escape(text, limit), style=style)
