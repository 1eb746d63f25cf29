"""``fleet collect``: run the collector in the foreground until SIGTERM/SIGINT (see :mod:`collector`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.keys import read_private_key
from fleet_cli.collector.config import ACK_INTERVAL_S, REORDER_TIMEOUT_S, CollectorConfig
from fleet_cli.collector.log import load_log_signer
from fleet_cli.collector.service import Collector
from fleet_cli.collector.store import QUARANTINE_MAX_ROWS, default_store_path
from fleet_cli.errors import UsageError
from fleet_cli.home import FleetHome, mqtt_settings
from fleet_cli.mqtt.settings import MqttVersion
from fleet_cli.options import HomeOption, StoreOption
from fleet_cli.registry import Registry


def collect(
    *,
    home: HomeOption = None,
    store: StoreOption = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Broker user (role collector; default from fleet.toml).")
    ] = None,
    password: Annotated[
        str | None, typer.Option("--password", envvar="EDGESEAL_MQTT_PASSWORD", help="Default: registry.")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Broker host.")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Broker port (default: plain, else TLS).")
    ] = None,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="CA certificate: use TLS.")] = None,
    protocol: Annotated[MqttVersion, typer.Option("--protocol", help="MQTT version.")] = MqttVersion.AUTO,
    share: Annotated[
        str | None, typer.Option("--share", help="Shared-subscription group: collectors split the load.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")
    ] = None,
    metrics_addr: Annotated[str, typer.Option("--metrics-addr", help="Metrics bind address.")] = "127.0.0.1",
    reorder_timeout: Annotated[
        float, typer.Option("--reorder-timeout", help="Seconds before a missing seq is a GAP.")
    ] = REORDER_TIMEOUT_S,
    ack_interval: Annotated[
        float, typer.Option("--ack-interval", help="Seconds between acks per device boot.")
    ] = ACK_INTERVAL_S,
    no_verified: Annotated[
        bool, typer.Option("--no-verified", help="Do not republish verified results as JSON.")
    ] = False,
    log_interval: Annotated[
        float, typer.Option("--log-interval", help="Seconds between progress logs.")
    ] = 30.0,
    quarantine_max: Annotated[
        int,
        typer.Option(
            "--quarantine-max",
            help="Rejected messages kept with their raw bytes; beyond it the oldest rows of the devices"
            " with the most are evicted (still counted per verdict).",
        ),
    ] = QUARANTINE_MAX_ROWS,
) -> None:
    """Verify, store and acknowledge every device message until SIGTERM (then flush and exit 0)."""
    fleet_home = FleetHome.load(home)
    if share is not None:
        try:
            validate_id(share, "share group")
        except InvalidId as e:
            raise UsageError(str(e), hint=e.hint) from None
    if reorder_timeout <= 0 or ack_interval < 0:
        raise UsageError("--reorder-timeout must be positive and --ack-interval not negative")
    if quarantine_max < 1:
        raise UsageError(
            f"--quarantine-max must be at least 1 row, got {quarantine_max}",
            hint=f"the default is {QUARANTINE_MAX_ROWS:,}; evicted rows are counted, not kept",
        )
    name = user or fleet_home.config.collector_user
    mqtt = mqtt_settings(
        fleet_home, name, host=host, port=port, password=password, tls_ca=tls_ca, protocol=protocol
    )
    config = CollectorConfig(
        fleet=fleet_home.fleet,
        store_path=store or default_store_path(fleet_home.root),
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=mqtt.password,
        tls_ca=mqtt.tls_ca,
        protocol=protocol,
        client_id=name,
        share_group=share,
        reorder_timeout_s=reorder_timeout,
        ack_interval_s=ack_interval,
        publish_verified=not no_verified,
        log_interval_s=log_interval,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        quarantine_max=quarantine_max,
    )
    pkg = logging.getLogger("fleet_cli")
    if pkg.getEffectiveLevel() > logging.INFO:  # progress lines are the point of a foreground collector
        pkg.setLevel(logging.INFO)
    signer = read_private_key(fleet_home.collector_key)
    # the fleet log's key: created here the first time a collector starts (docs/log.md)
    log_signer = load_log_signer(fleet_home.root, fleet_home.fleet, create=True)
    with Registry(fleet_home.registry_db) as registry:
        collector = Collector(config, registry, signer, log_signer=log_signer)
        collector.run_forever()
    s = collector.snapshot()
    evicted = f", {s.quarantine_evicted} quarantine rows evicted" if s.quarantine_evicted else ""
    typer.echo(
        f"collector stopped: {s.accepted} accepted, {sum(s.rejected.values())} rejected,"
        f" {s.duplicates} duplicates, {s.gaps} gap seqs{evicted}",
        err=True,
    )
