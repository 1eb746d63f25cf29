"""``fleet watch``: print verified results live from ``P/_fleet/verified/{dev}/{pipe}`` (a collector
republishes them there). Connects as a viewer user (role viewer reads ``P/_fleet/#``)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import queue
import threading
from typing import Annotated, Any

import typer

from broker_config.accounts import Role
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.topics import FLEET_SEGMENT, fleet_prefix
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import FleetHome, mqtt_settings
from fleet_cli.mqtt.connection import Connection
from fleet_cli.mqtt.settings import MqttSettings, MqttVersion, Received
from fleet_cli.options import HomeOption
from fleet_cli.registry import Registry
from fleet_cli.terminal import MAX_CELL_CHARS, escape


def verified_filter(fleet: str, dev: str | None = None, pipe: str | None = None) -> str:
    return f"{fleet_prefix(fleet)}/{FLEET_SEGMENT}/verified/{dev or '+'}/{pipe or '+'}"


def _clock(t: object) -> str:
    """``HH:MM:SS.mmm`` (UTC) of a time in ms; a placeholder when the value is not a usable time."""
    if isinstance(t, int | float) and not isinstance(t, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    return "--:--:--.---"


def format_result(doc: dict[str, Any]) -> str:
    """One line per result. Every value is the device's (through the collector): each is escaped and
    cut (terminal.py), so no control character or escape sequence reaches the terminal."""
    when = _clock(doc.get("t_received") or doc.get("t") or 0)
    dev, pipe, boot, seq = (escape(doc.get(k), MAX_CELL_CHARS) for k in ("dev", "pipe", "boot", "seq"))
    msg_id, model = (escape(str(doc.get(k, ""))[:12]) for k in ("msg_id", "model"))
    out = doc.get("out")
    out = out if isinstance(out, dict) else {}
    label = escape(out.get("label", "-"), MAX_CELL_CHARS)
    score = out.get("score")
    score_s = f"{score:.3f}" if isinstance(score, int | float) else "-"
    return f"{when}  {dev}/{pipe}  boot {boot} seq {seq}  {label} {score_s}  msg {msg_id}  model {model}"


def _default_viewer(home: FleetHome) -> str:
    """fleet.toml's ``[users] viewer`` (``fleet init`` creates it), else any active viewer account."""
    with Registry(home.registry_db) as reg:
        viewers = [u.name for u in reg.list_users() if u.role is Role.VIEWER and u.revoked_ms is None]
    if not viewers:
        raise FleetError(
            "no viewer user to watch with",
            hint="add one: `fleet user add watcher --role viewer` and `fleet broker reload`; or pass --user",
        )
    return home.config.viewer_user if home.config.viewer_user in viewers else viewers[0]


def watch_results(
    settings: MqttSettings,
    fleet: str,
    *,
    dev: str | None = None,
    pipe: str | None = None,
    count: int | None = None,
    timeout_s: float | None = None,
    emit: Any = None,
) -> int:
    """Receive verified results and call ``emit(doc)`` for each; returns how many were shown."""
    q: queue.Queue[Received] = queue.Queue()
    link = Connection(
        settings, subscriptions=[verified_filter(fleet, dev, pipe)], qos=0, on_message=q.put
    ).connect()
    shown = 0
    stop = threading.Event()
    try:
        while not stop.is_set() and (count is None or shown < count):
            try:
                m = q.get(timeout=timeout_s if timeout_s is not None else 0.5)
            except queue.Empty:
                if timeout_s is not None:
                    break
                continue
            try:
                doc = json.loads(m.payload)
            except ValueError:
                continue
            if isinstance(doc, dict):
                emit(doc)
                shown += 1
    finally:
        link.close()
    return shown


def watch(
    *,
    home: HomeOption = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    pipe: Annotated[str | None, typer.Option("--pipe", help="Only this pipeline.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    user: Annotated[str | None, typer.Option("--user", help="Broker user (role viewer).")] = None,
    password: Annotated[str | None, typer.Option("--password", envvar="EDGESEAL_MQTT_PASSWORD")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Broker host.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Broker port.")] = None,
    protocol: Annotated[MqttVersion, typer.Option("--protocol", help="MQTT version.")] = MqttVersion.AUTO,
    count: Annotated[int | None, typer.Option("--count", help="Exit after this many results.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Exit after this many seconds without a result.")
    ] = None,
) -> None:
    """Print verified results live, as a collector republishes them."""
    for value, what in ((device, "device id"), (pipe, "pipeline id")):
        if value is not None:
            try:
                validate_id(value, what)
            except InvalidId as e:
                raise UsageError(str(e), hint=e.hint) from None
    fleet_home = FleetHome.load(home)
    name = user or _default_viewer(fleet_home)
    settings = mqtt_settings(fleet_home, name, host=host, port=port, password=password, protocol=protocol)

    def emit(doc: dict[str, Any]) -> None:
        # json.dumps escapes every control and non-ASCII character: exact and safe (see terminal.py).
        typer.echo(json.dumps(doc) if as_json else format_result(doc))

    with contextlib.suppress(KeyboardInterrupt):
        watch_results(
            settings, fleet_home.fleet, dev=device, pipe=pipe, count=count, timeout_s=timeout, emit=emit
        )
