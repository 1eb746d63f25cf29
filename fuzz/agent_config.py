"""Fuzz target: the agent's TOML configuration (:func:`edge_agent.config.load_config`).

``load_config`` reads a path, so the input is written to ``agent.toml`` in a private temporary
directory and loaded from there (a relative ``model`` is looked up beside it, then among the shipped
models). Only :class:`edge_agent.errors.ConfigError` is documented.
"""

from __future__ import annotations

import contextlib

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from fuzz import scratch_dir

_DIR = scratch_dir("agent_config")
_PATH = _DIR / "agent.toml"


def one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(_PATH)
