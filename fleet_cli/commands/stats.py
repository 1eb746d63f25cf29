"""``fleet stats``: the aggregates over the stored results (see :mod:`aggregate`; docs/collector.md
"Commands reading the store")."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
import time
from typing import Annotated, Any

import typer

from edge_protocol.payload import Kind
from fleet_cli.collector.aggregate import (
    Aggregator,
    By,
    Point,
    device_online,
    parse_duration,
    parse_since,
    sparkline,
)
from fleet_cli.collector.store import Store, default_store_path
from fleet_cli.errors import UsageError
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption, StoreOption
from fleet_cli.terminal import MAX_CELL_CHARS, escape, safe_text, spreadsheet_safe

# More windows than this in one report is a typo in --window (1s over a week = 604,800 rows).
MAX_WINDOWS = 10_000


def compute_stats(store: Store, since_ms: int, until_ms: int, window_s: float, by: By) -> dict[str, Any]:
    """Everything ``fleet stats --json`` prints, streaming the results out of the store."""
    agg = Aggregator(window_s, by)
    if (until_ms - since_ms) / agg.window_ms > MAX_WINDOWS:
        raise UsageError(
            f"--since/--window make more than {MAX_WINDOWS} windows", hint="use a longer --window"
        )
    rows = store.iter_rows(
        "SELECT dev, pipe, model, label, score, t_received FROM messages"
        " WHERE kind = ? AND t_received >= ? AND t_received <= ? ORDER BY t_received",
        (int(Kind.RESULT), since_ms, until_ms),
    )
    for dev, pipe, model, label, score, t in rows:
        agg.add(Point(dev, pipe or "", bytes(model).hex() if model else "", label, score, t))
    states = store.states()
    freshness = []
    for d in store.devices():
        boot = d["boot"] if d["boot"] >= 0 else None
        freshness.append(
            {
                "dev": d["dev"],
                "last_seen_ms": d["last_seen_ms"],
                "age_s": round((until_ms - d["last_seen_ms"]) / 1000, 1),
                "online": device_online(states.get(d["dev"]), boot),
                "gaps": d["gaps"],
                "drops": d["drops"],
            }
        )
    return {
        "since_ms": since_ms,
        "until_ms": until_ms,
        "window_s": window_s,
        "by": by.value,
        "totals": agg.totals(),
        "groups": agg.groups(),
        "consensus": agg.consensus(),
        "series": [{"window_start_ms": w, "count": n} for w, n in agg.series(since_ms, until_ms)],
        "freshness": freshness,
    }


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def stats(
    *,
    home: HomeOption = None,
    store: StoreOption = None,
    since: Annotated[str, typer.Option("--since", help="Look back (10m, 2h, 1d) or an ISO time.")] = "1h",
    window: Annotated[str, typer.Option("--window", help="Window length (30s, 1m, 1h).")] = "1m",
    by: Annotated[By, typer.Option("--by", help="Group by.")] = By.DEVICE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the per-window groups as CSV.")] = False,
) -> None:
    """Counts, label shares, scores per window; fleet-wide consensus; freshness; a plot over time."""
    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    now_ms = time.time_ns() // 1_000_000
    try:
        since_ms = parse_since(since, now_ms)
        window_s = parse_duration(window)
    except ValueError as e:
        raise UsageError(str(e)) from None
    fleet_home = FleetHome.load(home)
    with Store(store or default_store_path(fleet_home.root), readonly=True) as st:
        report = compute_stats(st, since_ms, now_ms, window_s, by)
    report["fleet"] = fleet_home.fleet
    if as_json:
        # json.dumps escapes every control and non-ASCII character: exact and safe (see terminal.py).
        typer.echo(json.dumps(report))
        return
    if as_csv:
        # A key can be a label (--by label): escaped like any device text on a terminal, and never a
        # formula for a spreadsheet; the label counts are JSON, already escaped. --json is exact.
        w = csv.writer(sys.stdout)
        w.writerow(
            [
                "key",
                "window_start",
                "count",
                "labels",
                "score_mean",
                "score_min",
                "score_max",
                "score_p50",
                "score_p95",
            ]
        )
        for g in report["groups"]:
            s = g["score"]
            key = spreadsheet_safe(str(g["key"]))
            w.writerow(
                [key, _iso(g["window_start_ms"]), g["count"], json.dumps(g["labels"]),
                 s["mean"], s["min"], s["max"], s["p50"], s["p95"]]
            )  # fmt: skip
        return
    _print(report)


def _print(report: dict[str, Any]) -> None:
    """The rich tables: keys, labels and device names (device data) go in as escaped Text, not markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    series = [s["count"] for s in report["series"]]
    console.print(
        safe_text(
            f"fleet {report['fleet']}: {sum(series)} results since {_iso(report['since_ms'])},"
            f" window {report['window_s']:g}s, by {report['by']}",
            limit=None,
        )
    )
    console.print(f"results over time  {sparkline(series[-120:])}  (max {max(series, default=0)}/window)")
    table = Table()
    for col in (report["by"], "count", "labels", "mean", "min", "max", "p50", "p95", "over time"):
        table.add_column(col)
    per_key: dict[str, dict[int, int]] = {}
    for g in report["groups"]:
        per_key.setdefault(g["key"], {})[g["window_start_ms"]] = g["count"]
    windows = [s["window_start_ms"] for s in report["series"]][-40:]
    for t in report["totals"]:
        s = t["score"]
        shares = ", ".join(
            f"{escape(k, MAX_CELL_CHARS)} {v:.0%}" for k, v in list(t["label_shares"].items())[:3]
        )
        line = sparkline([per_key.get(t["key"], {}).get(w, 0) for w in windows])
        key = safe_text(t["key"][:16] if report["by"] == "model" else t["key"])
        table.add_row(key, str(t["count"]), Text(shares or "-"), _fmt(s["mean"]), _fmt(s["min"]),
                      _fmt(s["max"]), _fmt(s["p50"]), _fmt(s["p95"]), line)  # fmt: skip
    console.print(table)
    cons = report["consensus"][-10:]
    if cons:
        ct = Table(title="consensus (last windows)")
        for col in ("window", "devices", "label", "agree"):
            ct.add_column(col)
        for c in cons:
            ct.add_row(
                _iso(c["window_start_ms"]),
                str(c["devices"]),
                safe_text(c["label"]),
                f"{c['agree']}/{c['devices']}",
            )
        console.print(ct)
    ft = Table(title="freshness")
    for col in ("device", "online", "last seen", "gaps", "drops"):
        ft.add_column(col)
    for f in report["freshness"]:
        ft.add_row(
            safe_text(f["dev"]),
            safe_text(f["online"]),
            f"{f['age_s']:.0f}s ago",
            str(f["gaps"]),
            str(f["drops"]),
        )
    console.print(ft)
