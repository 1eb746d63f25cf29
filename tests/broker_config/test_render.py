"""The pure rendering core: golden files, the ACL per role, limits, and what is refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker_config import conf
from broker_config.accounts import Account, Role
from broker_config.acl import render_acl, rules_for
from broker_config.conf import BrokerSettings, listeners
from broker_config.errors import BrokerConfigError
from broker_config.passwd import hash_password
from broker_config.render import render

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("EDGESEAL_UPDATE_GOLDEN") == "1"
BROKER_DIR = Path("/var/lib/edgeseal/golden/broker")


def _account(name: str, role: Role, *, revoked: bool = False) -> Account:
    # Deterministic: the salt comes from the name, the password is fixed.
    salt = hashlib.sha256(name.encode()).digest()[:12]
    return Account(name, role, hash_password(f"pw-{name}", salt=salt), revoked=revoked)


DEVICES = [
    _account("dev-01", Role.DEVICE),
    _account("dev-02", Role.DEVICE),
    _account("retired-dev", Role.DEVICE, revoked=True),
]
USERS = [
    _account("collector", Role.COLLECTOR),
    _account("operator", Role.OPERATOR),
    _account("dash", Role.VIEWER),
]


@pytest.mark.parametrize(
    ("case", "settings"),
    [
        ("default", BrokerSettings(directory=BROKER_DIR)),
        (
            "no-plain",
            BrokerSettings(directory=BROKER_DIR, tls_port=18883, plain_port=0, tls_bind="192.0.2.7"),
        ),
    ],
)
def test_golden_files(case: str, settings: BrokerSettings) -> None:
    rendered = render("golden", DEVICES, USERS, settings)
    for name, text in (("mosquitto.conf", rendered.conf), ("passwd", rendered.passwd), ("acl", rendered.acl)):
        path = GOLDEN / case / name
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert text == path.read_text(), f"{path} differs; EDGESEAL_UPDATE_GOLDEN=1 rewrites it after review"


def test_rendering_is_deterministic_and_order_independent() -> None:
    s = BrokerSettings(directory=BROKER_DIR)
    a = render("golden", DEVICES, USERS, s)
    b = render("golden", list(reversed(DEVICES)), list(reversed(USERS)), s)
    assert (a.conf, a.passwd, a.acl) == (b.conf, b.passwd, b.acl)


def test_revoked_accounts_get_no_password_and_no_rule() -> None:
    r = render("golden", DEVICES, USERS, BrokerSettings(directory=BROKER_DIR))
    assert "retired-dev" not in r.passwd
    assert "retired-dev" not in r.acl
    assert [line.split(":")[0] for line in r.passwd.splitlines()] == sorted(
        ["dev-01", "dev-02", "collector", "operator", "dash"]
    )


def test_device_rules_cover_only_its_own_topics() -> None:
    rules = {str(r) for r in rules_for("f", _account("dev-01", Role.DEVICE))}
    p = "edgeseal/v1/f/dev-01"
    assert rules == {
        *(f"topic write {p}/{t}" for t in ("birth", "res/+", "hb", "gap", "reply", "state")),
        f"topic read {p}/cmd",
        f"topic read {p}/ack",
    }


def test_acl_has_no_patterns_and_denies_anonymous() -> None:
    text = render_acl("golden", [*DEVICES, *USERS])
    assert "pattern" not in text.replace("no patterns", "")
    assert "%u" not in text
    assert "%c" not in text
    first_rule = next(line for line in text.splitlines() if line and not line.startswith("#"))
    assert first_rule == "topic deny #"


def test_conf_has_the_hardening_options() -> None:
    text = render("golden", [], [], BrokerSettings(directory=BROKER_DIR)).conf
    lines = set(text.splitlines())
    for option in (
        "per_listener_settings false",
        "allow_anonymous false",
        "use_username_as_clientid true",
        "set_tcp_nodelay true",
        "persistence true",
        "check_retain_source true",
        f"max_packet_size {conf.MAX_PACKET_SIZE}",
        f"max_queued_messages {conf.MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {conf.MAX_QUEUED_BYTES}",
        f"max_inflight_messages {conf.MAX_INFLIGHT_MESSAGES}",
        f"max_keepalive {conf.MAX_KEEPALIVE_S}",
        f"max_connections {conf.MAX_CONNECTIONS_TLS}",
        f"listener {conf.DEFAULT_PLAIN_PORT} 127.0.0.1",
    ):
        assert option in lines, option
    # use_username_as_clientid is a listener option; set globally it would open 1883.
    assert text.index("use_username_as_clientid") > text.index(f"listener {conf.DEFAULT_TLS_PORT}")
    assert "message_size_limit" not in lines


def test_limits_fit_the_protocol() -> None:
    topic = "edgeseal/v1/" + "/".join(["a" * 63, "b" * 63, "res", "c" * 63])
    worst_publish = 5 + 2 + len(topic) + 2 + conf.MAX_ENVELOPE_BYTES
    assert worst_publish < conf.MAX_PACKET_SIZE
    assert conf.MAX_QUEUED_MESSAGES >= 100_000  # a collector's backlog: the ingest benchmark queues 50,000
    assert conf.MAX_QUEUED_BYTES >= 50_000 * 1024
    assert conf.DEFAULT_TLS_PORT != 1883
    assert conf.DEFAULT_PLAIN_PORT != 1883


def test_listeners_are_parsed_back() -> None:
    r = render("golden", [], [], BrokerSettings(directory=BROKER_DIR, tls_port=9000, plain_port=9001))
    assert listeners(r.conf) == [conf.Listener(9000, ""), conf.Listener(9001, "127.0.0.1")]
    r0 = render("golden", [], [], BrokerSettings(directory=BROKER_DIR, tls_port=9000, plain_port=0))
    assert listeners(r0.conf) == [conf.Listener(9000, "")]


@pytest.mark.parametrize("name", ["dev+1", "dev#1", "dev/1", "+", "#", "", "Dev", "a b", "x" * 64, "a\x00b"])
def test_bad_usernames_are_refused(name: str) -> None:
    with pytest.raises(BrokerConfigError):
        _account(name, Role.DEVICE)


def test_inconsistent_inputs_are_refused() -> None:
    s = BrokerSettings(directory=BROKER_DIR)
    with pytest.raises(BrokerConfigError):
        render("golden", [_account("x", Role.COLLECTOR)], [], s)
    with pytest.raises(BrokerConfigError):
        render("golden", [], [_account("x", Role.DEVICE)], s)
    with pytest.raises(BrokerConfigError):
        render("golden", [_account("x", Role.DEVICE)], [_account("x", Role.VIEWER)], s)
    with pytest.raises(BrokerConfigError):
        render("Bad/Fleet", [], [], s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tls_port": 0},
        {"tls_port": 65536},
        {"plain_port": -1},
        {"tls_port": 9000, "plain_port": 9000},
        {"tls_bind": "example.com"},
        {"run_as": "Bad User"},
        {"directory": Path("relative/dir")},
        {"directory": Path("/tmp/has space")},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"directory": BROKER_DIR, **kwargs}
    with pytest.raises(BrokerConfigError):
        BrokerSettings(**args)  # type: ignore[arg-type]
