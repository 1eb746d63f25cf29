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


# Found by review of the agent_config target's reach (a path value is expanded and looked up):
# `~user` of an unknown user made pathlib raise RuntimeError, a model name longer than the file
# system allows made exists() raise OSError (ENAMETOOLONG).
AGENT_MINIMAL = b'[device]\nid = "dev-02"\nfleet = "demo"\n\n[trust]\ndelivery = "broker-ack"\n'
AGENT_UNKNOWN_HOME = b'[device]\nid = "dev-02"\nfleet = "demo"\nstate_dir = "~nosuchuser9/x"\n'
AGENT_PIPELINE = (
    b'[device]\nid = "dev-02"\nfleet = "demo"\n\n[trust]\ndelivery = "broker-ack"\n\n'
    b'[[pipeline]]\nname = "vib"\nmodel = "%s"\nsource = { port = "/dev/ttyACM0" }\n'
    b'channels = ["ax"]\nwindow = 128\npostprocess = { kind = "raw" }\n'
)


def test_agent_toml_seed_shapes_load(tmp_path: Path) -> None:
    """The shapes below are valid but for the one value each test changes."""
    for data in (AGENT_MINIMAL, AGENT_PIPELINE % b"models/vibration_int8.tflite"):
        path = tmp_path / "agent.toml"
        path.write_bytes(data)
        load_config(path)


@pytest.mark.parametrize(
    "data",
    [
        AGENT_UNKNOWN_HOME,
        AGENT_PIPELINE % b"~nosuchuser9/m.tflite",
        AGENT_PIPELINE % (b"a" * 5000),
        AGENT_PIPELINE % (b"models/" + b"a" * 300),
    ],
    ids=["state_dir-unknown-home", "model-unknown-home", "model-path-too-long", "model-name-too-long"],
)
def test_agent_toml_paths(data: bytes) -> None:
    target("agent_config")(data)


def test_agent_toml_unknown_home_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(AGENT_UNKNOWN_HOME)
    with pytest.raises(ConfigError, match=r"device\.state_dir: .* unknown user"):
        load_config(path)


# -- fleet inspect (fleet_cli/commands/inspect.py) ----------------------------------------------------------


def test_inspect_record_nested_too_deeply() -> None:
    """Found by review of the export_record target's reach: `fleet inspect` prints a traceback."""
    target("export_record")(b'{"cose":' + b"[" * 100_000)
