"""``fleet broker render|start|stop|reload|check``: the fleet's hardened Mosquitto (fleet_cli/broker.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet_cli.broker import (
    check_broker,
    reload_broker,
    render_broker,
    rendered_listeners,
    start_broker,
    stop_broker,
)
from fleet_cli.errors import FleetError
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption

app = typer.Typer(help="Render, run, reload and check the fleet's Mosquitto broker.", no_args_is_help=True)


@app.command("render")
def render_cmd(
    *,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of the fleet's broker dir.")
    ] = None,
    tls_port: Annotated[
        int | None, typer.Option("--tls-port", help="TLS port (default: fleet.toml).")
    ] = None,
    plain_port: Annotated[
        int | None, typer.Option("--plain-port", help="Plain loopback port, 0 = none (default: fleet.toml).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Write mosquitto.conf, the password file, the ACL and the TLS files."""
    fleet = FleetHome.load(home)
    rendered = render_broker(fleet, out=out, tls_port=tls_port, plain_port=plain_port)
    s = rendered.settings
    typer.echo(f"rendered the broker of fleet {fleet.fleet} in {s.directory}")
    typer.echo(
        f"  TLS listener {s.tls_bind or '*'}:{s.tls_port}; plain listener "
        + (f"127.0.0.1:{s.plain_port}" if s.plain_port else "none")
    )
    typer.echo(f"  run: mosquitto -c {s.paths.conf}   (or `fleet broker start`)")


@app.command("start")
def start_cmd(
    *,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run in this terminal / under systemd instead of detaching.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Run Mosquitto with the rendered config (rendering it first if needed)."""
    fleet = FleetHome.load(home)
    pid = start_broker(fleet, foreground=foreground)
    paths = fleet.broker_settings().paths
    found = rendered_listeners(fleet) or []
    where = ", ".join(f"{lst.bind or '*'}:{lst.port}" for lst in found)
    typer.echo(f"broker started (pid {pid}) listening on {where}; log: {paths.log_file}")


@app.command("stop")
def stop_cmd(*, home: HomeOption = None) -> None:
    """Stop the broker started by `fleet broker start`."""
    fleet = FleetHome.load(home)
    pid = stop_broker(fleet)
    typer.echo(f"broker stopped (pid {pid})" if pid is not None else "no broker was running")


@app.command("reload")
def reload_cmd(*, home: HomeOption = None) -> None:
    """Re-render from the registry and make the running broker re-read it (SIGHUP)."""
    fleet = FleetHome.load(home)
    rendered, pid = reload_broker(fleet)
    typer.echo(f"broker reloaded (pid {pid}): {rendered.passwd.count(chr(10))} accounts")
    b = fleet.config.broker
    if (rendered.settings.tls_port, rendered.settings.plain_port) != (b.tls_port, b.plain_port):
        typer.echo(
            "note: fleet.toml names other ports than the running broker; `fleet broker stop` and "
            "`fleet broker render` + `start` to move it"
        )


@app.command("check")
def check_cmd(
    *,
    temporary_ports: Annotated[
        bool,
        typer.Option("--temporary-ports", help="Test on free ports even if the configured ones are free."),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Test-start the rendered broker and check TLS and authentication; exit 1 on failure."""
    fleet = FleetHome.load(home)
    report = check_broker(fleet, temporary_ports=temporary_ports)
    ports = "temporary ports" if report.temporary_ports else "the configured ports"
    typer.echo(f"mosquitto {report.version or '?'} started with the rendered config on {ports}")
    typer.echo(
        f"  TLS {report.tls_version}: certificate from the fleet CA valid for {report.tls_name!r}, "
        f"expires {report.cert_expires:%Y-%m-%d}"
    )
    typer.echo(f"  anonymous CONNECT refused: {'yes' if report.anonymous_refused else 'NO'}")
    typer.echo(
        f"  accounts: {report.devices} devices ({report.revoked_devices} revoked, not rendered), "
        f"{report.users} users"
    )
    if not report.ok:
        raise FleetError("broker check failed: an anonymous client was let in")
    typer.echo("broker check: OK")
