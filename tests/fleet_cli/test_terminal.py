"""Device text made safe for a terminal: what is escaped, how, the bound, and that it can be read back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_cli.terminal import ELLIPSIS, MAX_CELL_CHARS, escape, safe_text, spreadsheet_safe


def _unescape(shown: str) -> str:
    """What an operator reads back from an escaped text (the escapes are Python's)."""
    return shown.encode("latin-1", "backslashreplace").decode("unicode_escape")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("[/x]", "[/x]"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("n\x00l\x7f", "n\\x00l\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("a\tb\r\nc", "a\\tb\\r\\nc"),
        ("\u202eevil\u202c", "\\u202eevil\\u202c"),
        ("\u2066x\u2069\u200b\ufeff", "\\u2066x\\u2069\\u200b\\ufeff"),
        ("\u2028\u00a0", "\\u2028\\xa0"),
        ("\U000e0041\ud800", "\\U000e0041\\ud800"),  # a tag character, a lone surrogate
        ("back\\slash \\x1b", "back\\\\slash \\\\x1b"),  # unambiguous: not an escaped ESC
        ("dev-01 é 中 \u0301", "dev-01 é 中 \u0301"),
    ],
)
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown
    assert _unescape(shown) == text


def test_non_strings_and_the_bound() -> None:
    assert escape(None) == "None"
    assert escape(12) == "12"
    assert escape("x" * MAX_CELL_CHARS, MAX_CELL_CHARS) == "x" * MAX_CELL_CHARS
    assert escape("x" * 10_000, MAX_CELL_CHARS) == "x" * (MAX_CELL_CHARS - 1) + ELLIPSIS
    cut = escape("\x1b" * 100, 10)
    assert cut == "\\x1b\\x1b" + ELLIPSIS, "an escape is never cut in half"


def test_backslash_false_keeps_repr_quoting() -> None:
    assert escape("invalid id '\\x1b'\x1b", backslash=False) == "invalid id '\\x1b'\\x1b"


def test_safe_text_is_never_markup() -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200, record=True, force_terminal=False)
    table = Table()
    table.add_column("label")
    for text in ("[/x]", "[/]", "[bold red]hidden", "\x1b]0;pwned\x07"):
        table.add_row(safe_text(text, style="red"))
    console.print(table)
    out = console.export_text()
    assert "[/x]" in out
    assert "[/]" in out
    assert "[bold red]hidden" in out
    assert "\\x1b]0;pwned\\x07" in out
    assert "\x1b" not in out


@settings(max_examples=500, deadline=None)
@given(st.text(), st.one_of(st.none(), st.integers(min_value=1, max_value=100)))
def test_escaped_text_is_printable_bounded_and_reads_back(text: str, limit: int | None) -> None:
    shown = escape(text, limit)
    assert shown.isprintable()
    if limit is None:
        assert _unescape(shown) == text
    else:
        assert len(shown) <= limit
        if not shown.endswith(ELLIPSIS):
            assert _unescape(shown) == text


def test_cli_errors_escape_what_they_quote(capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_cli.app import _fail

    assert _fail("device said \x1b]0;pwned\x07 'a\\x1b'", "try\x1b[2J\nagain", 1) == 1
    err = capsys.readouterr().err
    assert err == "error: device said \\x1b]0;pwned\\x07 'a\\x1b'\nhint: try\\x1b[2J\nagain\n"


@pytest.mark.parametrize(
    ("label", "cell"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "\\t=1"),  # escaped first: a tab is shown as \t, which no spreadsheet evaluates
        ("normal", "normal"),
        ("", ""),
    ],
)
def test_spreadsheet_cells_never_start_a_formula(label: str, cell: str) -> None:
    assert spreadsheet_safe(label) == cell
