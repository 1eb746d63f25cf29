"""``fleet status --json``: the shape and the values a collector stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_cli.app import main
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import populated_home
from tests.fleet_cli._hostile import AGENT, METRIC, as_terminal, assert_terminal_safe, hostile_home

pytestmark = pytest.mark.integration


def test_status_json(mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = populated_home(tmp_path, mosquitto.host, mosquitto.port)
    capsys.readouterr()
    assert main(["status", "--home", str(p.home.root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["fleet"] == p.home.fleet
    by = {d["dev"]: d for d in doc["devices"]}
    assert set(by) == {"dev-01", "dev-02"}
    d1, d2 = by["dev-01"], by["dev-02"]
    assert (d1["online"], d2["online"]) == ("online", "offline")
    assert (d1["boot"], d1["last_seq"], d1["accepted"], d1["rejected"], d1["gaps"], d1["drops"]) == (
        1,
        13,
        14,
        0,
        0,
        0,
    )
    assert d1["models"] == ["11" * 32]
    assert d1["agent_version"] == "sim 0.0"
    assert d2["metrics"] == {"cpu": 0.5}
    assert d1["registry"] == "enrolled"
    assert isinstance(d1["last_seen_ms"], int)


def test_status_without_store_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_cli.home import init_fleet

    home = init_fleet(tmp_path / "home", "nostore")
    assert main(["status", "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no store at")
    assert "Traceback" not in err


def test_status_shows_device_text_escaped_and_json_exact(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = hostile_home(tmp_path, mosquitto.host, mosquitto.port)
    capsys.readouterr()
    assert main(["status", "--home", str(p.home.root), "--json"]) == 0
    raw = capsys.readouterr().out
    assert_terminal_safe(raw)  # json.dumps escapes: exact, yet no raw control character
    (d,) = json.loads(raw)["devices"]
    assert d["agent_version"] == AGENT
    assert set(d["metrics"]) == {METRIC}
    as_terminal(monkeypatch)
    assert main(["status", "--home", str(p.home.root)]) == 0  # the rich table: no MarkupError
    out = capsys.readouterr().out
    assert "dev-01" in out
    assert_terminal_safe(out, {"[/]\\x1b]0;pwned\\x07", "\\x1b]0;pwned\\x07cpu=0.5"})
