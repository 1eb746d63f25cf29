"""Options shared by several ``fleet`` commands (typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet_cli.home import ENV_HOME

# Every command that works on a fleet home.
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help=f"Fleet home directory (default: ${ENV_HOME}, else the per-user data dir)."),
]
# Every command that reads the collector's store.
StoreOption = Annotated[Path | None, typer.Option("--store", help="SQLite store (default: <home>/store.db).")]
