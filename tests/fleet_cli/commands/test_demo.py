"""``fleet demo``'s live table and summary with hostile labels and verdict names: escaped, no markup."""

from __future__ import annotations

import pytest

from fleet_cli.commands.demo import DemoSnapshot, DeviceRow, _print_summary, _render, summary
from fleet_cli.demo.view import CollectorView
from tests.fleet_cli._hostile import CLEAR, TITLE, assert_terminal_safe

LABEL = "[/x]" + TITLE


def _snapshot() -> DemoSnapshot:
    totals = CollectorView(3, {"[/]" + CLEAR: 1}, 0, 1.0, 0, None, None, {}, None)  # type: ignore[arg-type]
    row = DeviceRow("dev-01", "steady", True, 3, {LABEL: 2, "[/]": 1}, LABEL)
    attack = {"at_s": 1.0, "what": "replay", "device": "dev-01", "expected": "DUPLICATE"}
    attack |= {"observed": "[/]" + CLEAR, "caught": False}
    return DemoSnapshot(2.0, "mosquitto", totals, [row], [attack])


def test_live_table_and_summary_escape_device_text(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    console = Console(width=300, record=True, force_terminal=False)
    console.print(_render(_snapshot(), ["started"], 30.0))  # no MarkupError
    out = console.export_text()
    assert_terminal_safe(out, {"[/x]\\x1b]0;pwned\\x07", "[/]\\x1b[2J", "[/] 1"})
    _print_summary(summary(_snapshot(), 30.0))
    assert_terminal_safe(capsys.readouterr().out, {"[/]\\x1b[2J"})
