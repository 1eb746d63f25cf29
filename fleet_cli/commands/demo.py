"""``fleet demo``: the command, its live table and its summary (the orchestration is in demo.py)."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from fleet_cli.demo.run import Demo, DemoOptions
from fleet_cli.demo.view import CollectorView
from fleet_cli.terminal import MAX_CELL_CHARS, escape, safe_text

# The attack is injected once the fleet is warm, a third of the way in (at least 4 s after start).
ATTACK_AT_FRACTION = 1 / 3
MIN_ATTACK_AT_S = 4.0
REFRESH_S = 0.25
# After the run, how long the collector may take to see the last messages before the summary.
DRAIN_S = 2.0


@dataclass
class DeviceRow:
    name: str
    note: str
    agent_running: bool
    accepted: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    last_label: str = ""
    gaps: int = 0
    rejected: int = 0


@dataclass
class DemoSnapshot:
    elapsed_s: float
    broker: str
    totals: CollectorView  # fleet-wide counters from the collector
    devices: list[DeviceRow]
    attacks: list[dict[str, Any]]


def take_snapshot(demo: Demo) -> DemoSnapshot:
    from fleet_cli.demo.view import collector_view

    view = collector_view(demo.collector, demo.store_path)
    alive = demo.agents_alive()
    rows = []
    for s in demo.scripts:
        d = view.devices.get(s.name, {})
        rows.append(
            DeviceRow(
                name=s.name,
                note=s.note,
                agent_running=alive.get(s.name, False),
                accepted=int(d.get("accepted", 0)),
                labels=dict(d.get("labels", {})),
                last_label=str(d.get("last_label", "")),
                gaps=int(d.get("gaps", 0)),
                rejected=int(d.get("rejected", 0)),
            )
        )
    attacks = []
    for a in demo.attacks:
        observed = view.verdict_of_attack(a)
        attacks.append(
            {"at_s": round(a.at_s, 1), "what": a.what, "device": a.device, "expected": a.expected,
             "observed": observed, "caught": observed == a.expected}
        )  # fmt: skip
    return DemoSnapshot(
        elapsed_s=time.monotonic() - demo.started_at if demo.started_at else 0.0,
        broker=demo.broker_kind,
        totals=view,
        devices=rows,
        attacks=attacks,
    )


def summary(snap: DemoSnapshot, duration_s: float) -> dict[str, Any]:
    """The ``--json`` object: the figures a user or a script checks after a run."""
    return {
        "broker": snap.broker,
        "duration_s": round(snap.elapsed_s, 1),
        "planned_duration_s": duration_s,
        "accepted": snap.totals.accepted,
        "rejected": snap.totals.rejected,
        "duplicates": snap.totals.duplicates,
        "gaps": snap.totals.gaps,
        "results_per_s": round(snap.totals.rate, 1),
        "latency_ms": {
            "p50": None if snap.totals.latency_p50_ms is None else round(snap.totals.latency_p50_ms, 1),
            "p95": None if snap.totals.latency_p95_ms is None else round(snap.totals.latency_p95_ms, 1),
        },
        "devices": {
            r.name: {"accepted": r.accepted, "labels": r.labels, "gaps": r.gaps, "scenario": r.note}
            for r in snap.devices
        },
        "attacks": snap.attacks,
        # every stored message is a leaf of the fleet log, its root signed in checkpoints (docs/log.md)
        "log": {"tree_size": snap.totals.log_size, "checkpoint_size": snap.totals.checkpoint_size},
    }


def _render(snap: DemoSnapshot, events: list[str], duration_s: float) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        ("edgeseal demo", "bold"),
        f"  broker: {snap.broker}   t = {snap.elapsed_s:5.1f} / {duration_s:g} s   ",
        (f"{snap.totals.rate:6.1f} results/s", "cyan"),
        f"   latency p50 {_ms(snap.totals.latency_p50_ms)}  p95 {_ms(snap.totals.latency_p95_ms)}",
    )
    table = Table(expand=True, title="devices (every result verified on arrival)", title_justify="left")
    for col in ("device", "agent", "accepted", "last label", "labels", "gaps", "scenario"):
        table.add_column(col, no_wrap=col in ("device", "agent", "accepted", "gaps"))
    for r in snap.devices:
        # Labels are the devices' text (from the collector's store): escaped Text, never markup.
        colour = {"normal": "green", "imbalance": "yellow", "bearing": "red"}.get(r.last_label, "white")
        labels = "  ".join(
            f"{escape(k, MAX_CELL_CHARS)} {v}" for k, v in sorted(r.labels.items(), key=lambda kv: -kv[1])
        )
        table.add_row(
            r.name,
            "[green]running[/]" if r.agent_running else "[red]stopped[/]",
            str(r.accepted),
            safe_text(r.last_label or "-", style=colour),
            Text(labels),
            str(r.gaps),
            r.note,
        )
    verdicts = Table.grid(padding=(0, 2))
    verdicts.add_row("[green]ACCEPTED[/]", str(snap.totals.accepted))
    verdicts.add_row("DUPLICATE (replays, redeliveries)", str(snap.totals.duplicates))
    for v, n in sorted(snap.totals.rejected.items()):
        verdicts.add_row(safe_text(v, style="red"), str(n))
    verdicts.add_row("gaps reported", str(snap.totals.gaps))
    signed = "-" if snap.totals.checkpoint_size is None else f"{snap.totals.checkpoint_size:,}"
    verdicts.add_row("fleet log leaves / last signed checkpoint", f"{snap.totals.log_size:,} / {signed}")
    attacks = Table.grid(padding=(0, 2))
    if not snap.attacks:
        attacks.add_row("[dim]the attacker strikes a third of the way in[/]")
    for a in snap.attacks:
        mark = (
            "[green]caught[/]"
            if a["caught"]
            else ("[yellow]pending[/]" if a["observed"] is None else "[red]!![/]")
        )
        attacks.add_row(f"t={a['at_s']:.0f}s", a["what"], safe_text(f"→ {a['observed'] or '…'}"), mark)
    log = Text("\n".join(events[-4:]), style="dim")
    return Group(
        head,
        table,
        Panel(verdicts, title="verdicts", expand=False),
        Panel(attacks, title="attacks injected (a compromised broker account)", expand=False),
        log,
    )


def _ms(v: float | None) -> str:
    return "  -  " if v is None else f"{v:5.1f} ms"


class _Stop(Exception):
    pass


def demo(
    *,
    devices: Annotated[int, typer.Option("--devices", "-n", help="Number of virtual devices.")] = 3,
    duration: Annotated[float, typer.Option("--duration", "-d", help="Seconds to run.")] = 30.0,
    broker: Annotated[
        str, typer.Option("--broker", help="auto (Mosquitto if installed), mosquitto or embedded (amqtt).")
    ] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="No live table; print one JSON summary at the end.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated machines.")] = 1,
    no_attack: Annotated[
        bool, typer.Option("--no-attack", help="Do not inject forged and replayed messages.")
    ] = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the working directory (logs, stores, keys).")
    ] = False,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Where to build the demo fleet (default: a new temp dir)."),
    ] = None,
) -> None:
    """Run a whole verifiable fleet on this machine: broker, virtual sensors, agents, collector.

    Each virtual device streams a 3-axis accelerometer over a pseudo-terminal to a real edge-agent
    process, which classifies windows with the shipped TFLite model and publishes signed results.
    The collector verifies every one (signature, chain, claim), stores it and acks it. A third of the
    way in, an attacker with broker write access injects a tampered, a forged and a replayed result:
    watch them being rejected. Ctrl-C stops everything cleanly.
    """
    options = DemoOptions(
        devices=devices, duration_s=duration, broker=broker, seed=seed, attack=not no_attack, keep=keep,
        workdir=workdir,
    )  # fmt: skip
    events: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    old = signal.signal(signal.SIGTERM, on_signal)
    interrupted = False
    snap: DemoSnapshot | None = None
    demo_ = Demo(options, on_event=events.append)
    try:
        with demo_:
            if not as_json:
                typer.echo("setting up: fleet keys, broker, virtual devices, agents, collector …", err=True)
            demo_.setup()
            attack_at = max(MIN_ATTACK_AT_S, duration * ATTACK_AT_FRACTION)
            attacked = not options.attack
            live = None
            if not as_json:
                from rich.live import Live

                live = Live(
                    _render(take_snapshot(demo_), events, duration), refresh_per_second=4, screen=False
                )
                live.start()
            try:
                while True:
                    elapsed = time.monotonic() - demo_.started_at
                    if not attacked and elapsed >= attack_at:
                        demo_.attack()
                        attacked = bool(demo_.attacks)
                    if elapsed >= duration:
                        break
                    if live is not None:
                        live.update(_render(take_snapshot(demo_), events, duration))
                    time.sleep(REFRESH_S)
            except (KeyboardInterrupt, _Stop):
                interrupted = True
            time.sleep(0 if interrupted else DRAIN_S)
            snap = take_snapshot(demo_)
            if live is not None:
                live.update(_render(snap, events, duration))
                live.stop()
                if not live.console.is_terminal:
                    live.console.line()  # piped, the last frame ends without a newline
                live.console.file.flush()  # before stderr: keeps the lines in order when both are piped
            if not as_json:
                typer.echo("stopping agents, collector, sensors and broker …", err=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old)
    if snap is None:
        raise typer.Exit(130 if interrupted else 1)
    result = summary(snap, duration)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print_summary(result)
    if interrupted:
        raise typer.Exit(130)


def _print_summary(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.text import Text

    c = Console()
    rej = ", ".join(f"{k} {v}" for k, v in sorted(result["rejected"].items())) or "none"
    c.print(
        Text.assemble(
            "\n",
            ("summary", "bold"),
            escape(
                f"  {result['accepted']} results accepted in {result['duration_s']} s "
                f"({result['results_per_s']}/s), rejected: {rej}, duplicates {result['duplicates']}, "
                f"gaps {result['gaps']}, latency p50 {result['latency_ms']['p50']} ms"
                f" p95 {result['latency_ms']['p95']} ms"
            ),
        )
    )
    for a in result["attacks"]:
        status = ("caught", "green") if a["caught"] else ("NOT caught", "red")
        c.print(Text.assemble(escape(f"  attack: {a['what']} → {a['observed']} "), status))
    sys.stdout.flush()
