"""``fleet stats``: JSON shape, CSV, plain-terminal plot, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_cli.app import main
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import populated_home
from tests.fleet_cli._hostile import LABELS, SHOWN, as_terminal, assert_terminal_safe, hostile_home

pytestmark = pytest.mark.integration


def test_stats_json_csv_and_plot(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = populated_home(tmp_path, mosquitto.host, mosquitto.port)
    home = str(p.home.root)
    capsys.readouterr()
    assert main(["stats", "--home", home, "--json", "--since", "10m", "--window", "1m"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {
        "since_ms",
        "until_ms",
        "window_s",
        "by",
        "totals",
        "groups",
        "consensus",
        "series",
        "freshness",
    }
    totals = {t["key"]: t for t in doc["totals"]}
    assert set(totals) == {"dev-01", "dev-02"}
    t = totals["dev-01"]
    assert t["count"] == 12
    assert t["labels"] == {"ok": 9, "fault": 3}
    assert t["label_shares"]["ok"] == 0.75
    assert t["score"]["min"] == 0.0
    assert t["score"]["max"] == pytest.approx(11 / 12, abs=1e-3)
    assert set(t["score"]) == {"n", "mean", "min", "max", "p50", "p95"}
    assert sum(s["count"] for s in doc["series"]) == 24
    assert all(c["label"] == "ok" and c["agree"] == c["devices"] == 2 for c in doc["consensus"])
    assert {f["dev"]: f["online"] for f in doc["freshness"]} == {"dev-01": "online", "dev-02": "offline"}
    assert main(["stats", "--home", home, "--json", "--by", "label"]) == 0
    assert {t["key"] for t in json.loads(capsys.readouterr().out)["totals"]} == {"ok", "fault"}
    assert main(["stats", "--home", home, "--csv", "--by", "pipe"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].startswith("key,window_start,count")
    assert main(["stats", "--home", home]) == 0
    text = capsys.readouterr().out
    assert "results over time" in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█")
    assert main(["stats", "--home", home, "--window", "soon"]) == 2
    assert main(["stats", "--home", home, "--window", "1s", "--since", "30d"]) == 2


def test_stats_shows_device_text_escaped_and_json_exact(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = hostile_home(tmp_path, mosquitto.host, mosquitto.port)
    home = str(p.home.root)
    capsys.readouterr()
    assert main(["stats", "--home", home, "--json", "--by", "label"]) == 0
    raw = capsys.readouterr().out
    assert_terminal_safe(raw)  # json.dumps escapes: exact, yet no raw control character
    assert {t["key"] for t in json.loads(raw)["totals"]} == set(LABELS)
    assert main(["stats", "--home", home, "--csv", "--by", "label"]) == 0
    assert_terminal_safe(capsys.readouterr().out, SHOWN - {"[/]\\x1b]0;pwned\\x07"})
    as_terminal(monkeypatch)
    for by in ("label", "device"):  # label keys; label shares, consensus and freshness
        assert main(["stats", "--home", home, "--by", by]) == 0  # no MarkupError
        out = capsys.readouterr().out
        assert "dev-01" in out
        assert_terminal_safe(out, SHOWN - {"[/]\\x1b]0;pwned\\x07"} if by == "label" else set())
