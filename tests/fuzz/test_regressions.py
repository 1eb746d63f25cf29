"""Every crash the fuzz targets found, replayed through the same ``one_input`` (docs/fuzzing.md).

Each input is the one the fuzzer (or a review of what it found) reported, as a bytes literal; the test
passes when the target handles it as its parser documents. A crash in a file another engineer owns
stays here as ``xfail(strict=True)`` until that file is fixed, so the fix turns it into a pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from fleet_cli.errors import UsageError
from fleet_cli.home import CONFIG_NAME, FleetHome


def target(name: str) -> Callable[[bytes], None]:
    one_input: Callable[[bytes], None] = importlib.import_module(f"fuzz.{name}").one_input
    return one_input


# -- fleet.toml (fleet_cli/home.py) -------------------------------------------------------------------


def test_fleet_toml_not_utf8() -> None:
    """Found by fuzz/fleet_config.py: UnicodeDecodeError escaped FleetHome.load."""
    target("fleet_config")(b'flee\xec:t = "demo"\n')


def test_fleet_toml_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_bytes(b'fleet = "d\xecmo"\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        FleetHome.load(tmp_path)


# Found by review of the fleet_config crash (tomllib raises more than TOMLDecodeError): nesting beyond
# the recursion limit is a RecursionError, an integer of more than 4300 digits int's ValueError.
DEEP_ARRAY = b"a = " + b"[" * 600
LONG_INT = b"version = " + b"1" * 4301 + b"\n"
DEEP_TABLE = b"a = " + b"{b = " * 600


@pytest.mark.parametrize("data", [DEEP_ARRAY, DEEP_TABLE, LONG_INT], ids=["array", "table", "int"])
def test_fleet_toml_beyond_tomllib(data: bytes) -> None:
    target("fleet_config")(data)


# -- agent.toml (edge_agent/config.py) ----------------------------------------------------------------


@pytest.mark.parametrize("data", [DEEP_ARRAY, DEEP_TABLE, LONG_INT], ids=["array", "table", "int"])
def test_agent_toml_beyond_tomllib(data: bytes) -> None:
    target("agent_config")(data)


def test_agent_toml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(DEEP_ARRAY)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)
