"""sd_notify: READY, WATCHDOG pings while healthy, STOPPING; silence when a needed thread has died."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from edge_agent.watchdog import Notifier
from tests._mosquitto import Broker
from tests.edge_agent.test_agent_mqtt import Rig


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    return s, path


def _read_all(s: socket.socket, until: str, limit: int = 200) -> list[str]:
    got: list[str] = []
    for _ in range(limit):
        got.append(s.recv(4096).decode())
        if until in got[-1]:
            break
    return got


def test_notifier_is_a_noop_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert not n.ready("x")


def test_notifier_watchdog_interval_and_pid(tmp_path: Path) -> None:
    s, path = _listener(tmp_path)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.watchdog_interval_s == 15.0
        assert n.ready("up")
        assert s.recv(4096) == b"READY=1\nSTATUS=up"
        assert (
            Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}).watchdog_interval_s
            is None
        )
        n.close()
    finally:
        s.close()


@pytest.mark.integration
def test_agent_notifies_and_pings_only_while_healthy(
    tmp_path: Path, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = _listener(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    (tmp_path / "r").mkdir()
    rig = Rig(tmp_path / "r", mosquitto)
    try:
        agent: Any = rig.start()
        got = _read_all(s, "WATCHDOG=1")
        assert got[0].startswith("READY=1")
        assert sum("WATCHDOG=1" in g for g in _read_all(s, "never", limit=3)) == 3
        # a dead MQTT session thread: the pings stop, so systemd would restart the agent
        agent.session.stop(flush_s=0, timeout_s=3)
        assert not agent.healthy()
        s.settimeout(0.5)
        leftovers: list[bytes] = []
        try:
            while True:
                leftovers.append(s.recv(4096))
        except TimeoutError:
            pass
        assert len(leftovers) <= 2  # at most pings already on their way
        rig.stop()
        s.settimeout(5)
        assert b"STOPPING=1" in s.recv(4096)
    finally:
        rig.close()
        s.close()
