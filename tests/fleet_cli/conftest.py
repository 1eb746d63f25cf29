"""Fixtures shared by the collector tests: a fresh registry and a publisher on the session broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import Publisher


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as reg:
        yield reg


@pytest.fixture
def pub(mosquitto: Broker) -> Iterator[Publisher]:
    p = Publisher(mosquitto.host, mosquitto.port)
    yield p
    p.close()
