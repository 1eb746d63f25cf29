"""The ``fleet`` command: one Typer app, one sub-app per noun, errors printed once here.

Every command is a thin shell over importable functions. Errors from any edgeseal package are caught
in :func:`main` and printed as one line with a hint; ``-v``/``--verbose`` or ``EDGESEAL_DEBUG=1``
shows the traceback as well.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from broker_config.errors import BrokerError
from edge_protocol.errors import ProtocolError
from fleet_cli.commands import (
    broker,
    cmd,
    collect,
    demo,
    device,
    export,
    init,
    inspect,
    log,
    stats,
    status,
    user,
    watch,
)
from fleet_cli.commands import flash as flash_cmd
from fleet_cli.errors import FleetError
from fleet_cli.terminal import escape

app = typer.Typer(
    name="fleet",
    help="Operate an edgeseal fleet: devices, broker, collection and verification of signed results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("inspect")(inspect.inspect)
app.command("init")(init.init)
app.command("collect")(collect.collect)
app.command("watch")(watch.watch)
app.command("status")(status.status)
app.command("stats")(stats.stats)
app.command("export")(export.export)
app.command("cmd")(cmd.cmd)
app.command("demo")(demo.demo)
app.command("flash")(flash_cmd.flash_cmd)
app.add_typer(device.app, name="device")
app.add_typer(user.app, name="user")
app.add_typer(broker.app, name="broker")
app.add_typer(log.app, name="log")

_VERBOSE = False


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more and show tracebacks.")] = False,
) -> None:
    global _VERBOSE  # noqa: PLW0603 - the one process-wide switch, set once per invocation
    _VERBOSE = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, hint: str | None, code: int) -> int:
    # A message may quote what a device or an input file said: control characters are escaped line
    # by line (terminal.py); backslashes are left alone, as messages quote values with repr().
    def shown(text: str) -> str:
        return "\n".join(escape(line, backslash=False) for line in text.split("\n"))

    typer.echo(f"error: {shown(message)}", err=True)
    if hint:
        typer.echo(f"hint: {shown(hint)}", err=True)
    return code


def _is_bridge_error(e: BaseException) -> bool:
    """Whether ``e`` is a firmware_bridge error (the demo's simulators). firmware_bridge loads only
    when a command uses it, so ``fleet --help`` stays light; an error of it cannot exist before."""
    errors = sys.modules.get("firmware_bridge.errors")
    return errors is not None and isinstance(e, errors.BridgeError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fleet`` console script."""
    debug = os.environ.get("EDGESEAL_DEBUG") == "1"
    try:
        # standalone mode: Typer prints its own usage errors (exit 2) and turns Exit into SystemExit;
        # every other exception reaches the clauses below.
        app(args=argv, prog_name="fleet")
    except FleetError as e:
        if debug or _VERBOSE:
            raise
        return _fail(str(e), e.hint, e.exit_code)
    except (BrokerError, ProtocolError) as e:
        if debug or _VERBOSE:
            raise
        return _fail(str(e), getattr(e, "hint", None), 1)
    except Exception as e:
        if debug or _VERBOSE or not _is_bridge_error(e):
            raise
        return _fail(str(e), getattr(e, "hint", None), 1)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        if e.code is None:
            return 0
        return e.code if isinstance(e.code, int) else _fail(str(e.code), None, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
