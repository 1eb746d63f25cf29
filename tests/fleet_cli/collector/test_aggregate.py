"""Pure aggregation: durations, windows, percentiles, consensus, sparkline, online rule."""

from __future__ import annotations

import pytest

from fleet_cli.collector.aggregate import (
    MAX_DURATION_S,
    Aggregator,
    By,
    Point,
    device_online,
    parse_duration,
    parse_since,
    sparkline,
)


def test_durations_and_since() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    for bad in ("", "soon", "10", "-5m", "0s", f"{MAX_DURATION_S + 1}s"):
        with pytest.raises(ValueError, match=r"duration|out of range"):
            parse_duration(bad)
    assert parse_since("10m", 1_000_000) == 400_000
    assert parse_since("1970-01-01T00:00:10Z", 0) == 10_000
    with pytest.raises(ValueError, match="neither"):
        parse_since("yesterday", 0)


def test_windows_percentiles_and_consensus() -> None:
    agg = Aggregator(60, By.DEVICE)
    pts = [Point("a", "vib", "m", "ok", float(i), 1000 * i) for i in range(1, 101)]  # window 0 and 1
    pts += [Point("b", "vib", "m", "bad", 0.5, 5_000), Point("c", "vib", "m", "ok", 0.5, 6_000)]
    for p in pts:
        agg.add(p)
    totals = {t["key"]: t for t in agg.totals()}
    a = totals["a"]
    assert a["count"] == 100
    assert a["score"]["p50"] == 50.0
    assert a["score"]["p95"] == 95.0
    assert (a["score"]["min"], a["score"]["max"]) == (1.0, 100.0)
    assert [g["window_start_ms"] for g in agg.groups() if g["key"] == "a"] == [0, 60_000]
    cons = agg.consensus()
    assert cons[0] == {"window_start_ms": 0, "devices": 3, "label": "ok", "agree": 2, "share": 0.6667}
    assert cons[1]["devices"] == 1
    assert agg.series(0, 120_000) == [(0, 61), (60_000, 41), (120_000, 0)]
    by_label = Aggregator(60, By.LABEL)
    for p in pts:
        by_label.add(p)
    assert {t["key"] for t in by_label.totals()} == {"ok", "bad"}


def test_sparkline_and_online_rule() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert device_online(None, 3) == "unknown"
    assert device_online({"state": "online", "boot": 3}, 3) == "online"
    assert device_online({"state": "offline", "boot": 3}, 3) == "offline"
    # docs/protocol.md §5: a Will from an earlier boot arriving after the new birth does not count
    assert device_online({"state": "offline", "boot": 2}, 3) == "online"


@pytest.mark.parametrize(
    ("presence", "boot", "current"),
    [(p, b, c) for p in ("online", "offline") for b in (None, 2, 3) for c in (None, 3)],
)
def test_one_online_rule(presence: str, boot: int | None, current: int | None) -> None:
    """`fleet status`/`fleet stats` (a store row) and the collector's online gauge (its counters)
    answer as edge_protocol.state.online does."""
    from edge_protocol.state import Presence, State, online
    from fleet_cli.collector.stats import _Counters

    expected = online(State(Presence(presence), boot, None), current)
    assert device_online({"state": presence, "boot": boot}, current) == ("online" if expected else "offline")
    counters = _Counters(
        states={"dev-01": (presence, boot)}, boots={} if current is None else {"dev-01": current}
    )
    assert counters.online() == int(bool(expected))
