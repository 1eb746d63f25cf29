"""The boot counter on disk, and what the agent tells an operator when it is damaged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.errors import IdentityError
from edge_agent.identity import BOOT_FILE, MAX_BOOT, REENROL_HINT, next_boot, read_boot
from fleet_cli.app import main

INSTALL_SH = Path(__file__).parents[2] / "fleet_cli" / "flash" / "templates" / "install.sh.tmpl"


def test_boot_counter(tmp_path: Path) -> None:
    assert read_boot(tmp_path) == 0
    assert next_boot(tmp_path) == 1
    assert next_boot(tmp_path, at_least=7) == 7
    assert read_boot(tmp_path) == 7


@pytest.mark.parametrize("text", [b"seven\n", b"1" * 33, str(MAX_BOOT + 1).encode(), b"-1", b""])
def test_a_damaged_boot_counter_stops_with_the_reenrol_hint(tmp_path: Path, text: bytes) -> None:
    (tmp_path / BOOT_FILE).write_bytes(text)
    with pytest.raises(IdentityError, match="is damaged") as e:
        next_boot(tmp_path)
    assert e.value.hint is not None
    assert REENROL_HINT in e.value.hint


def test_the_reenrol_hint_names_commands_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    """Every `fleet …` in the hint is a command, with every option it names; the same for install.sh."""
    quoted = re.findall(r"`([^`]+)`", REENROL_HINT)
    fleet = [q.split() for q in quoted if q.startswith("fleet ")]
    assert [w[:3] for w in fleet] == [
        ["fleet", "device", "revoke"],
        ["fleet", "device", "add"],
        ["fleet", "broker", "reload"],
        ["fleet", "flash", "NEW"],
    ]
    for words in fleet:
        path = [w for w in words[1:] if w.islower() and not w.startswith("-")]
        options = [w for w in words if w.startswith("--")]
        capsys.readouterr()
        assert main([*path, "--help"]) == 0, words
        shown = capsys.readouterr().out
        assert all(o in shown for o in options), (words, shown)
    script = INSTALL_SH.read_text()
    for q in quoted:
        if q.startswith("install.sh"):
            assert all(f"{o})" in script for o in q.split()[1:]), q  # a case branch of its option parser
