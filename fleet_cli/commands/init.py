"""``fleet init``: create a fleet home (keys, CA, registry, fleet.toml). The logic is in :mod:`home`."""

from __future__ import annotations

from typing import Annotated

import typer

from broker_config.conf import DEFAULT_PLAIN_PORT, DEFAULT_TLS_PORT
from fleet_cli.home import DEFAULT_FLEET, DEFAULT_SANS, FleetHome, init_fleet
from fleet_cli.options import HomeOption


def init(
    *,
    fleet: Annotated[str, typer.Option("--fleet", help="Fleet id: 1-63 of a-z 0-9 _ -.")] = DEFAULT_FLEET,
    home: HomeOption = None,
    broker_host: Annotated[
        str, typer.Option("--broker-host", help="Host name devices use to reach the broker.")
    ] = "localhost",
    san: Annotated[
        list[str] | None,
        typer.Option("--san", help="Extra name/address for the broker certificate (repeatable)."),
    ] = None,
    tls_port: Annotated[int, typer.Option("--tls-port", help="Broker TLS port.")] = DEFAULT_TLS_PORT,
    plain_port: Annotated[
        int, typer.Option("--plain-port", help="Plain listener on 127.0.0.1; 0 = none.")
    ] = DEFAULT_PLAIN_PORT,
) -> None:
    """Create a fleet: operator key, collector key, broker CA, registry and fleet.toml."""
    root = FleetHome.resolve(home)
    created = init_fleet(
        root,
        fleet,
        broker_host=broker_host,
        sans=(*DEFAULT_SANS, *(san or ())),
        tls_port=tls_port,
        plain_port=plain_port,
    )
    c = created.config
    typer.echo(f"fleet {created.fleet} created in {created.root}")
    typer.echo(f"  operator key   {created.operator_key} (0600)")
    typer.echo(f"  collector key  {created.collector_key} (0600)")
    typer.echo(f"  broker CA      {created.ca_cert}")
    users = ", ".join((c.collector_user, c.operator_user, c.viewer_user))
    typer.echo(f"  registry       {created.registry_db}  (users: {users})")
    typer.echo(f"  config         {created.config_path}")
    typer.echo(f"  broker dir     {created.broker_dir}")
    typer.echo("next: `fleet device add NAME`, then `fleet broker start`")
