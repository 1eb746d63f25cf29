"""``fleet collect`` as a process against the hardened broker (TLS + passwords + ACL), stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from broker_config.runner import MosquittoProcess, free_port
from fleet_cli.broker import render_broker
from fleet_cli.collector.store import Store, default_store_path
from fleet_cli.home import FleetHome, init_fleet
from fleet_cli.registry import Registry
from tests.fleet_cli._collect_sim import Publisher, SimDevice, unique_fleet

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _reachable(path: Path) -> None:
    """Mosquitto started as root drops to its own user before reading its files (docs/field-notes.md
    "Mosquitto")."""
    if os.geteuid() == 0:
        for p in (path, *path.parents):
            if p == Path("/"):
                break
            p.chmod(p.stat().st_mode | 0o011)


def _count(store: Path) -> int:
    with Store(store, readonly=True) as s:
        return s.count_messages()


def test_collect_process_over_tls_flushes_on_sigterm(tmp_path: Path) -> None:
    _reachable(tmp_path)
    fleet = unique_fleet("s")
    home = init_fleet(tmp_path / "home", fleet, tls_port=free_port(), plain_port=0)
    home.config_path.write_text(
        home.config_path.read_text().replace('tls_bind = ""', 'tls_bind = "127.0.0.1"')
    )
    home = FleetHome.load(home.root)
    with Registry(home.registry_db) as reg:
        reg.add_device("dev-01")
        dev = SimDevice(fleet, "dev-01", reg.claim_token("dev-01"))
        dev_password = reg.device_credentials("dev-01").password
    s = render_broker(home).settings
    broker = MosquittoProcess(s.paths.conf, s.tls_port, log=s.paths.directory / "test.log").start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet_cli", "collect", "--home", str(home.root), "--log-interval", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "collecting fleet" in line:
                ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert ready.wait(20), "".join(lines)
        pub = Publisher(
            "127.0.0.1", s.tls_port, username="dev-01", password=dev_password, tls_ca=home.ca_cert
        )
        msgs = [dev.birth(), *(dev.result() for _ in range(30))]
        pub.send(*msgs)  # queued in the collector's persistent session if it is not subscribed yet
        store = default_store_path(home.root)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not store.exists() or _count(store) < 31):
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        pub.send(*(dev.result() for _ in range(5)))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(5)
        pub.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()
        broker.stop()
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "collector stopped" in err
    assert "Traceback" not in err
    # all 31 were stored before SIGTERM; of the last 5, whatever was taken is stored, the rest stays
    # in the persistent session for the next start
    assert 31 <= _count(store) <= 36
    assert "ingest:" in err
