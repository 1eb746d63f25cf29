"""``fleet user add|list|credentials|revoke``: broker accounts for collectors, operators and viewers.

A user name shares the broker's username space with device names, so the registry refuses a user
named like a device and the other way round. Every process that connects needs a user of its own:
with ``use_username_as_clientid`` a second login with the same name disconnects the first.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from broker_config.accounts import USER_ROLES
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption
from fleet_cli.registry import Registry

app = typer.Typer(
    help="Broker accounts for collectors, operators and viewers (dashboards).", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help="User name: 1-63 of a-z 0-9 _ -, not a device's name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_ROLES = "|".join(r.value for r in USER_ROLES)


@app.command("add")
def add(
    name: NameArg,
    *,
    role: Annotated[str, typer.Option("--role", help=f"One of {_ROLES}.")],
    home: HomeOption = None,
) -> None:
    """Add a collector (one per host), operator or viewer (dashboard, Home Assistant) account."""
    fleet = FleetHome.load(home)
    with Registry(fleet.registry_db) as reg:
        record = reg.add_user(name, role)
    typer.echo(f"user {record.name} ({record.role}) added to fleet {fleet.fleet}")
    typer.echo(f"  credentials: fleet user credentials {record.name} --json; then `fleet broker reload`")


@app.command("list")
def list_(*, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List users and their roles (no secrets)."""
    fleet = FleetHome.load(home)
    with Registry(fleet.registry_db) as reg:
        users = reg.list_users()
    if as_json:
        typer.echo(json.dumps([u.to_json() for u in users], indent=2))
        return
    for u in users:
        typer.echo(f"{u.name}  {u.role}{'  revoked' if u.revoked_ms is not None else ''}")


@app.command("credentials")
def credentials(name: NameArg, *, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Print the user's broker username and password."""
    fleet = FleetHome.load(home)
    with Registry(fleet.registry_db) as reg:
        creds = reg.user_credentials(name)
    if as_json:
        typer.echo(json.dumps(creds._asdict(), indent=2))
    else:
        typer.echo(f"username  {creds.username}")
        typer.echo(f"password  {creds.password}")


@app.command("revoke")
def revoke(name: NameArg, *, home: HomeOption = None) -> None:
    """Remove a user's broker login for good."""
    fleet = FleetHome.load(home)
    with Registry(fleet.registry_db) as reg:
        reg.revoke_user(name)
    typer.echo(f"user {name} revoked; run `fleet broker reload` to apply it")
