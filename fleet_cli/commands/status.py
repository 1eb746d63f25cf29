"""``fleet status``: per device online state, last seen, boot, seq, counters, models, agent, heartbeat;
and the quarantine: per verdict, rows kept and rows evicted by the bound (``fleet collect
--quarantine-max``), so that every rejected message is accounted for.

Reads the collector's store (and the registry for devices that never sent anything); works while a
collector runs (SQLite WAL readers do not block the writer).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_cli.collector.aggregate import device_online
from fleet_cli.collector.store import QuarantineCount, Store, default_store_path
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption, StoreOption
from fleet_cli.registry import Registry
from fleet_cli.terminal import MAX_CELL_CHARS, escape, safe_text


def device_status(store: Store, registry: Registry | None) -> list[dict[str, Any]]:
    """One record per device: what ``fleet status --json`` prints."""
    devices = {d["dev"]: d for d in store.devices()}
    states = store.states()
    models = store.models()
    quarantine_by_dev = store.quarantine_by_device()
    registered: dict[str, str] = {}
    if registry is not None:
        registered = {r.name: r.status for r in registry.list_devices()}
    out = []
    for dev in sorted({*devices, *registered, *states}):
        d = devices.get(dev, {})
        info = d.get("info") or {}
        boot = d.get("boot") if d.get("boot", -1) >= 0 else None
        out.append(
            {
                "dev": dev,
                "registry": registered.get(dev),
                "online": device_online(states.get(dev), boot),
                "state": states.get(dev),
                "last_seen_ms": d.get("last_seen_ms"),
                "boot": boot,
                "last_seq": d.get("last_seq") if boot is not None else None,
                "accepted": d.get("accepted", 0),
                "rejected": d.get("rejected", quarantine_by_dev.get(dev, 0)),
                "duplicates": d.get("duplicates", 0),
                "gaps": d.get("gaps", 0),
                "drops": d.get("drops", 0),
                "models": models.get(dev, []),
                "agent_version": info.get("agent") or info.get("agent_version") or info.get("version"),
                "info": info or None,
                "metrics": d.get("metrics"),
                "metrics_ms": d.get("metrics_ms"),
            }
        )
    return out


def quarantine_status(store: Store) -> dict[str, Any]:
    """What ``fleet status --json`` prints under ``quarantine``: totals and per verdict."""
    tally = store.quarantine_tally()
    totals = QuarantineCount.sum(tally.values())
    return {
        "kept": totals.kept,
        "evicted": totals.evicted,
        "by_verdict": {v: {"kept": c.kept, "evicted": c.evicted} for v, c in tally.items()},
    }


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    s = max(0, (now_ms - ms) / 1000)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _metrics_text(m: dict[str, Any] | None) -> str:
    """The first five metrics, each escaped and cut on its own (keys and values are the device's)."""
    if not m or not isinstance(m, dict):
        return "-"
    parts = []
    for k, v in list(m.items())[:5]:
        parts.append(escape(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}", MAX_CELL_CHARS))
    return " ".join(parts)


def status(
    *,
    home: HomeOption = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show every device: online, last seen, boot/seq, accepted/rejected/gaps/drops, models, agent."""
    fleet_home = FleetHome.load(home)
    path: Path = store or default_store_path(fleet_home.root)
    with Store(path, readonly=True) as st, Registry(fleet_home.registry_db) as reg:
        rows = device_status(st, reg)
        quarantine = quarantine_status(st)
    if as_json or not sys.stdout.isatty():
        # json.dumps escapes every control and non-ASCII character: exact and safe (see terminal.py).
        doc = {"fleet": fleet_home.fleet, "devices": rows, "quarantine": quarantine}
        typer.echo(json.dumps(doc, indent=None if as_json else 2))
        return
    _print(fleet_home.fleet, rows, quarantine)


def _print(fleet: str, rows: list[dict[str, Any]], quarantine: dict[str, Any]) -> None:
    """The rich table: every value from the store (device data) goes in as escaped Text, not markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    now = time.time_ns() // 1_000_000
    table = Table(title=safe_text(f"fleet {fleet}"))
    for col in ("device", "online", "last seen", "boot", "seq", "acc", "rej", "dup", "gaps", "drops"):
        table.add_column(
            col, justify="right" if col in ("boot", "seq", "acc", "rej", "dup", "gaps", "drops") else "left"
        )
    table.add_column("model")
    table.add_column("agent")
    table.add_column("heartbeat")
    colour = {"online": "green", "offline": "red", "unknown": "yellow"}
    for r in rows:
        table.add_row(
            safe_text(r["dev"]),
            safe_text(r["online"], style=colour.get(r["online"], "")),
            _ago(r["last_seen_ms"], now),
            *(
                safe_text("-" if r[k] is None else r[k])
                for k in ("boot", "last_seq", "accepted", "rejected", "duplicates", "gaps", "drops")
            ),
            safe_text(", ".join(str(m)[:12] for m in r["models"][:2]) or "-"),
            safe_text(r["agent_version"] or "-"),
            Text(_metrics_text(r["metrics"])),
        )
    console = Console()
    console.print(table)
    if quarantine["by_verdict"]:
        kept, evicted = quarantine["kept"], quarantine["evicted"]
        line = Text(
            f"quarantine: {kept + evicted} rejected messages, {kept} kept with their bytes,"
            f" {evicted} evicted by the bound (counted only): "
        )
        line.append_text(
            safe_text(
                ", ".join(
                    f"{v} {c['kept'] + c['evicted']}" + (f" ({c['evicted']} evicted)" if c["evicted"] else "")
                    for v, c in quarantine["by_verdict"].items()
                ),
                limit=None,
            )
        )
        console.print(line)
