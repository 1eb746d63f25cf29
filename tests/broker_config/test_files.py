"""Written files: modes and owners for the user Mosquitto runs as, atomic replacement, reachability."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from broker_config.accounts import Account, Role
from broker_config.conf import BrokerSettings
from broker_config.errors import BrokerFileError
from broker_config.files import blocking_dir, check_reachable
from broker_config.passwd import hash_password
from broker_config.render import render, write_broker
from broker_config.tls import generate_ca
from tests.broker_config._support import reachable


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _write(directory: Path) -> None:
    acc = [Account("dev-01", Role.DEVICE, hash_password("x"))]
    r = render("demo", acc, [], BrokerSettings(directory=directory))
    write_broker(r, ca=generate_ca("demo"), sans=["localhost"])


def test_modes_and_owners(tmp_path: Path) -> None:
    d = reachable(tmp_path) / "broker"
    _write(d)
    secrets = ["mosquitto.conf", "passwd", "acl", "server.key"]
    if os.geteuid() == 0:
        broker = pwd.getpwnam("mosquitto")
        assert _mode(d) == 0o750
        assert d.stat().st_gid == broker.pw_gid
        for name in secrets:
            assert _mode(d / name) == 0o640, name
            assert (d / name).stat().st_uid == 0
            assert (d / name).stat().st_gid == broker.pw_gid
        assert (d / "data").stat().st_uid == broker.pw_uid
    else:
        assert _mode(d) == 0o700
        for name in secrets:
            assert _mode(d / name) == 0o600, name
    for name in ("ca.crt", "server.crt"):
        assert _mode(d / name) == 0o644
    assert not [p for p in d.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_server_cert_is_kept_across_renders(tmp_path: Path) -> None:
    d = reachable(tmp_path) / "broker"
    acc = [Account("dev-01", Role.DEVICE, hash_password("x"))]
    ca = generate_ca("demo")
    r = render("demo", acc, [], BrokerSettings(directory=d))
    write_broker(r, ca=ca, sans=["localhost"])
    first = (d / "server.crt").read_bytes()
    write_broker(r, ca=ca, sans=["localhost"])
    assert (d / "server.crt").read_bytes() == first
    write_broker(r, ca=ca, sans=["localhost", "broker.lan"])
    assert (d / "server.crt").read_bytes() != first


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands files to another user")
def test_unreachable_directory_is_reported(tmp_path: Path) -> None:
    locked = reachable(tmp_path) / "locked"
    locked.mkdir(mode=0o700)
    assert blocking_dir(locked / "broker", "mosquitto") == locked
    with pytest.raises(BrokerFileError, match="cannot enter"):
        check_reachable(locked / "broker", "mosquitto")
    with pytest.raises(BrokerFileError) as e:
        _write(locked / "broker")
    assert e.value.hint is not None
