"""``fleet device add|list|show|credentials|revoke``: thin shells over :class:`Registry`.

Only ``credentials`` prints secrets (MQTT password, claim token). After adding or revoking, the
broker needs ``fleet broker reload`` to learn about it; each command says so.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption
from fleet_cli.registry import DeviceRecord, Registry, parse_tags
from fleet_cli.terminal import escape

app = typer.Typer(
    help="Register devices, show them, hand out their credentials, revoke them.", no_args_is_help=True
)

NameArg = Annotated[
    str, typer.Argument(help="Device id: 1-63 of a-z 0-9 _ -, starting with a letter or digit.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _registry(home: FleetHome) -> Registry:
    return Registry(home.registry_db)


def _tags(d: DeviceRecord, sep: str) -> str:
    """The tags, escaped (terminal.py): `device add` checks them, but the registry file may not have
    been written by it."""
    return escape(sep.join(f"{k}={v}" for k, v in d.tags.items()))


def _describe(d: DeviceRecord) -> list[str]:
    tags = _tags(d, ", ") or "-"
    return [
        f"device      {escape(d.name)}",
        f"status      {d.status}",
        f"tags        {tags}",
        f"public key  {d.public_key.hex() if d.public_key else '-'}",
        f"claim       {'pending (token not yet used)' if d.claim_pending else 'retired'}",
    ]


@app.command("add")
def add(
    name: NameArg,
    *,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE metadata, repeatable (site=north).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Register a device: a one-time claim token and broker credentials."""
    fleet = FleetHome.load(home)
    with _registry(fleet) as reg:
        record = reg.add_device(name, parse_tags(tag or []))
    typer.echo(f"device {record.name} added to fleet {fleet.fleet}")
    typer.echo(f"  credentials: fleet device credentials {record.name} --json")
    typer.echo("  then `fleet broker reload` (or `fleet broker render`) so the broker knows it")


@app.command("list")
def list_(*, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List the fleet's devices (no secrets)."""
    fleet = FleetHome.load(home)
    with _registry(fleet) as reg:
        devices = reg.list_devices()
    if as_json:
        typer.echo(json.dumps([d.to_json() for d in devices], indent=2))
        return
    if not devices:
        typer.echo("no devices; add one with `fleet device add NAME`")
        return
    width = max(len(escape(d.name)) for d in devices)
    for d in devices:
        key = d.public_key.hex()[:16] if d.public_key else "-"
        line = f"{escape(d.name):<{width}}  {d.status:<20}  key {key:<16}  {_tags(d, ',')}"
        typer.echo(line.rstrip())


@app.command("show")
def show(name: NameArg, *, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Show one device (no secrets)."""
    fleet = FleetHome.load(home)
    with _registry(fleet) as reg:
        record = reg.get_device(name)
    if as_json:
        typer.echo(json.dumps(record.to_json(), indent=2))
    else:
        typer.echo("\n".join(_describe(record)))


@app.command("credentials")
def credentials(name: NameArg, *, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Print the device's secrets: broker username and password, and the claim token until it is used."""
    fleet = FleetHome.load(home)
    with _registry(fleet) as reg:
        creds = reg.device_credentials(name)
    if as_json:
        typer.echo(json.dumps(creds._asdict(), indent=2))
    else:
        typer.echo(f"username     {creds.username}")
        typer.echo(f"password     {creds.password}")
        typer.echo(f"claim_token  {creds.claim_token or '(retired: the device has enrolled)'}")


@app.command("revoke")
def revoke(name: NameArg, *, home: HomeOption = None) -> None:
    """Revoke a device for good: its broker login and claim token go; its key stays for old results."""
    fleet = FleetHome.load(home)
    with _registry(fleet) as reg:
        before = reg.get_device(name)
        reg.revoke_device(name)
    if before.revoked_ms is not None:
        typer.echo(f"device {name} was already revoked")
        return
    typer.echo(f"device {name} revoked")
    typer.echo("  run `fleet broker reload` to shut it out of the broker now")
