"""Fuzz target: the fleet home's ``fleet.toml`` (:meth:`fleet_cli.home.FleetHome.load`).

``FleetHome.load`` reads ``fleet.toml`` from a directory, so the input is written there, in a private
temporary directory. Only :class:`fleet_cli.errors.FleetError` is documented (``UsageError`` for a
bad value, naming the key).
"""

from __future__ import annotations

import contextlib

from fleet_cli.errors import FleetError
from fleet_cli.home import CONFIG_NAME, FleetHome
from fuzz import scratch_dir

_DIR = scratch_dir("fleet_config")
_PATH = _DIR / CONFIG_NAME


def one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    with contextlib.suppress(FleetError):
        FleetHome.load(_DIR)
