"""Test support for the collector tests: an in-test device that builds correct signed chains (and can
be made to misbehave), a registry with devices, a publisher and a running collector.

Device messages are made with :func:`edge_protocol.envelope.seal` only: the collector's tests do not
depend on edge_agent.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_protocol.envelope import seal
from edge_protocol.keys import Signer, claim_tag
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic
from fleet_cli.collector.config import CollectorConfig
from fleet_cli.collector.service import Collector
from fleet_cli.collector.store import Store
from fleet_cli.mqtt.connection import Connection
from fleet_cli.mqtt.settings import MqttSettings, Received
from fleet_cli.registry import Registry

ZERO = bytes(32)
_fleet_ids = itertools.count()


def unique_fleet(prefix: str = "t") -> str:
    """A fleet id of its own per test: the session broker is shared, topics must not overlap."""
    return f"{prefix}{secrets.token_hex(3)}{next(_fleet_ids)}"


@dataclass(frozen=True)
class Msg:
    topic: str
    cose: bytes
    boot: int
    seq: int
    msg_id: bytes
    kind: Kind


class SimDevice:
    """A device's signing side: boot counter, seq, prev chain, as docs/protocol.md §6 fixes them."""

    def __init__(self, fleet: str, dev: str, claim_token: bytes | None, signer: Signer | None = None) -> None:
        self.fleet = fleet
        self.dev = dev
        self.claim_token = claim_token
        self.signer = signer or Signer.generate()
        self.boot = 0
        self.seq = -1
        self.prev = ZERO
        self.t = 1_760_000_000_000

    def _make(self, kind: Kind, channel: Channel, extra: dict[int, Any], pipe: str | None = None) -> Msg:
        self.seq += 1
        self.t += 10
        payload: dict[int, Any] = {
            Key.V: 1,
            Key.DEV: self.dev,
            Key.BOOT: self.boot,
            Key.SEQ: self.seq,
            Key.PREV: self.prev,
            Key.T: self.t,
            Key.KIND: int(kind),
            **extra,
        }
        sealed = seal(payload, self.signer, self.fleet)
        self.prev = sealed.msg_id
        return Msg(
            device_topic(self.fleet, self.dev, channel, pipe),
            sealed.cose,
            self.boot,
            self.seq,
            sealed.msg_id,
            kind,
        )

    def birth(self, *, claim: bool = True, info: dict[str, Any] | None = None) -> Msg:
        self.boot += 1
        self.seq = -1
        extra: dict[int, Any] = {Key.KEY: self.signer.public_key}
        if claim and self.claim_token is not None:
            extra[Key.CLAIM] = claim_tag(self.claim_token, self.signer.public_key, self.dev)
        extra[Key.INFO] = info if info is not None else {"agent": "sim 1.0", "pipelines": {"vib": "00" * 32}}
        return self._make(Kind.BIRTH, Channel.BIRTH, extra)

    def result(self, pipe: str = "vib", label: str = "ok", score: float = 0.9) -> Msg:
        extra: dict[int, Any] = {
            Key.PIPE: pipe,
            Key.MODEL: b"\x11" * 32,
            Key.INPUT: secrets.token_bytes(32),
            Key.OUT: {"label": label, "score": score},
            Key.LAT: 1200,
        }
        return self._make(Kind.RESULT, Channel.RESULT, extra, pipe)

    def heartbeat(self, **metrics: float) -> Msg:
        return self._make(Kind.HEARTBEAT, Channel.HEARTBEAT, {Key.METRICS: metrics or {"cpu": 0.5}})

    def gap(self, lo: int, hi: int, why: str = "outbox full") -> Msg:
        return self._make(
            Kind.GAP, Channel.GAP, {Key.GAP: {"from": lo, "to": hi, "n": hi - lo + 1, "why": why}}
        )

    def reply(self, cmd_id: bytes, reply: dict[str, Any]) -> Msg:
        return self._make(Kind.REPLY, Channel.REPLY, {Key.ID: cmd_id, Key.REPLY: reply})


def add_devices(registry: Registry, fleet: str, names: list[str]) -> dict[str, SimDevice]:
    out = {}
    for n in names:
        registry.add_device(n)
        out[n] = SimDevice(fleet, n, registry.claim_token(n))
    return out


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK."""

    def __init__(self, host: str, port: int, **kw: Any) -> None:
        self.link = Connection(
            MqttSettings(host=host, port=port, client_id=f"pub-{secrets.token_hex(4)}", **kw)
        ).connect()

    def send(self, *msgs: Msg | tuple[str, bytes], qos: int = 1) -> None:
        infos = []
        for m in msgs:
            topic, body = (m.topic, m.cose) if isinstance(m, Msg) else m
            infos.append(self.link.client.publish(topic, body, qos=qos))
        for info in infos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.link.close()


class Listener:
    """Subscribes and keeps everything it receives."""

    def __init__(self, host: str, port: int, *filters: str) -> None:
        self.got: list[Received] = []
        self.cond = threading.Condition()
        self.link = Connection(
            MqttSettings(host=host, port=port, client_id=f"lst-{secrets.token_hex(4)}"),
            subscriptions=filters,
            on_message=self._on,
        ).connect()

    def _on(self, m: Received) -> None:
        with self.cond:
            self.got.append(m)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.got) < n and time.monotonic() < deadline:
                self.cond.wait(0.1)
            return list(self.got)

    def close(self) -> None:
        self.link.close()


def collector_config(fleet: str, host: str, port: int, store: Path, **kw: Any) -> CollectorConfig:
    base = CollectorConfig(
        fleet=fleet,
        store_path=store,
        host=host,
        port=port,
        client_id=f"col-{fleet}",
        reorder_timeout_s=2.0,
        agg_interval_s=1.0,
    )
    return replace(base, **kw)


@contextmanager
def running(
    config: CollectorConfig, registry: Registry, signer: Signer | None = None, **kw: Any
) -> Iterator[Collector]:
    c = Collector(config, registry, signer or Signer.generate(), **kw)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@dataclass(frozen=True)
class Populated:
    home: Any  # FleetHome
    devices: dict[str, SimDevice]
    store: Path


def populated_home(tmp: Path, broker_host: str, broker_port: int, n_results: int = 12) -> Populated:
    """A fleet home whose store holds two devices' births, results and a heartbeat (via a real collector)."""
    from fleet_cli.collector.store import default_store_path
    from fleet_cli.home import init_fleet

    fleet = unique_fleet("h")
    home = init_fleet(tmp / "home", fleet)
    store = default_store_path(home.root)
    with Registry(home.registry_db) as reg:
        devs = add_devices(reg, fleet, ["dev-01", "dev-02"])
        pub = Publisher(broker_host, broker_port)
        try:
            with running(collector_config(fleet, broker_host, broker_port, store), reg) as c:
                msgs = []
                for i, d in enumerate(devs.values()):
                    msgs.append(d.birth(info={"agent": f"sim {i}.0"}))
                    msgs += [
                        d.result(label="ok" if k % 4 else "fault", score=k / n_results)
                        for k in range(n_results)
                    ]
                    msgs.append(d.heartbeat(cpu=0.5))
                pub.send(*msgs)
                pub.send(
                    (device_topic(fleet, "dev-01", Channel.STATE), b'{"state":"online","boot":1,"t":1}'),
                    (device_topic(fleet, "dev-02", Channel.STATE), b'{"state":"offline","boot":1,"t":1}'),
                )
                assert c.wait_idle()
        finally:
            pub.close()
    return Populated(home, devs, store)


# ---- reading a store through Store (as fleet status / export do), never raw SQL -------------------


def stored(path: Path) -> list[tuple[str, int, int, int]]:
    """(dev, boot, seq, kind) of every stored message, in that order."""
    with Store(path, readonly=True) as s:
        return [(m.dev, m.boot, m.seq, m.kind) for m in s.messages()]


def quarantined(path: Path) -> list[tuple[str, str]]:
    """(verdict, topic) of every quarantined message, oldest first."""
    with Store(path, readonly=True) as s:
        return [(q["verdict"], q["topic"]) for q in reversed(s.quarantine(limit=1_000_000))]


def quarantine_reasons(path: Path) -> list[tuple[str, str]]:
    """(verdict, reason) of every quarantined message, oldest first."""
    with Store(path, readonly=True) as s:
        return [(q["verdict"], q["reason"]) for q in reversed(s.quarantine(limit=1_000_000))]
