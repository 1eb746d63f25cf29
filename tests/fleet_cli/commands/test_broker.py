"""`fleet broker render|start|reload|check|stop` against a real Mosquitto on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker_config.runner import running_pid, wait_listening
from fleet_cli.app import main
from fleet_cli.home import FleetHome
from fleet_cli.registry import Registry
from tests.broker_config._support import Peer, Refused, make_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path) -> FleetHome:
    return make_fleet(tmp_path, "cmd")


def test_render_writes_files_with_port_overrides(
    home: FleetHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "elsewhere"
    assert (
        main(
            [
                "broker",
                "render",
                "--out",
                str(out),
                "--tls-port",
                "18999",
                "--plain-port",
                "0",
                "--home",
                str(home.root),
            ]
        )
        == 0
    )
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 18999 127.0.0.1" in conf
    assert "No plain listener" in conf
    assert f"password_file {out}/passwd" in conf
    for name in ("passwd", "acl", "ca.crt", "server.crt", "server.key"):
        assert (out / name).is_file()
    assert "rendered the broker of fleet cmd" in capsys.readouterr().out


def test_bad_port_is_a_usage_error(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "render", "--tls-port", "70000", "--home", str(home.root)]) == 2
    assert "tls_port must be a TCP port" in capsys.readouterr().err


def test_start_reload_revoke_stop(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home.root)]
    s = home.broker_settings()
    with Registry(home.registry_db) as reg:
        reg.add_device("dev-01")
        pw1 = reg.device_credentials("dev-01").password
    assert main(["broker", "start", *h]) == 0
    try:
        pid = running_pid(s.paths.pid_file, s.paths.conf)
        assert pid is not None
        assert main(["broker", "start", *h]) == 1  # already running
        Peer(s.tls_port, "dev-01", pw1, ca=home.ca_cert).connect().close()
        # A device added after start is unknown until reload ...
        with Registry(home.registry_db) as reg:
            reg.add_device("dev-02")
            pw2 = reg.device_credentials("dev-02").password
        with pytest.raises(Refused):
            Peer(s.tls_port, "dev-02", pw2, ca=home.ca_cert).connect()
        assert main(["broker", "reload", *h]) == 0
        Peer(s.tls_port, "dev-02", pw2, ca=home.ca_cert).connect().close()
        # ... and a revoked one is shut out by the next reload.
        assert main(["device", "revoke", "dev-01", *h]) == 0
        assert main(["broker", "reload", *h]) == 0
        with pytest.raises(Refused):
            Peer(s.tls_port, "dev-01", pw1, ca=home.ca_cert).connect()
        # check runs beside the running broker on temporary ports.
        capsys.readouterr()
        assert main(["broker", "check", *h]) == 0
        out = capsys.readouterr().out
        assert "temporary ports" in out
        assert "anonymous CONNECT refused: yes" in out
        assert "broker check: OK" in out
    finally:
        assert main(["broker", "stop", *h]) == 0
    assert running_pid(s.paths.pid_file, s.paths.conf) is None
    assert not wait_listening("127.0.0.1", s.tls_port, 0.2)
    assert main(["broker", "reload", *h]) == 1
    assert "no broker" in capsys.readouterr().err


def test_check_on_configured_ports(home: FleetHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "check", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert "the configured ports" in out
    assert "broker check: OK" in out
    assert not list(home.broker_dir.glob("check-*"))


def test_missing_mosquitto_gives_install_hint(
    home: FleetHome, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("broker_config.runner._EXTRA_DIRS", ())
    assert main(["broker", "start", "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert "error: mosquitto is not installed" in err
    assert "hint: install it" in err


def test_foreground_runs_until_terminated(home: FleetHome) -> None:
    s = home.broker_settings()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet_cli", "broker", "start", "--foreground", "--home", str(home.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_listening("127.0.0.1", s.tls_port, 10)
        assert running_pid(s.paths.pid_file, s.paths.conf) == proc.pid  # exec keeps the pid
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
