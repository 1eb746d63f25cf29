"""Shared fixtures: a private Mosquitto broker for the session (tests/_mosquitto.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_config.runner import MosquittoProcess, free_port
from tests._mosquitto import Broker, plain_config


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private Mosquitto on a free loopback port, started once per session and stopped after."""
    directory = tmp_path_factory.mktemp("mosquitto")
    # Mosquitto started as root drops to the 'mosquitto' user; it must be able to reach its files.
    for p in (directory, *directory.parents):
        if p == Path("/"):
            break
        if os.geteuid() == 0:
            p.chmod(p.stat().st_mode | 0o055)
    port = free_port()
    proc = MosquittoProcess(plain_config(directory, port), port)
    proc.start()
    try:
        yield Broker("127.0.0.1", port, proc)
    finally:
        proc.stop()
