"""The collector against a real Mosquitto: enrolment, verdicts, quarantine, duplicates, acks, restart."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edge_protocol.envelope import MAX_ENVELOPE_BYTES, open_envelope
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic, verified_topic
from fleet_cli.collector.store import Store
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import (
    Listener,
    Publisher,
    SimDevice,
    add_devices,
    collector_config,
    quarantine_reasons,
    quarantined,
    running,
    stored,
    unique_fleet,
)

pytestmark = pytest.mark.integration


def test_enrol_by_claim_store_ack_and_republish(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    devs = add_devices(registry, fleet, ["dev-01"])
    d = devs["dev-01"]
    signer = Signer.generate()
    store = tmp_path / "store.db"
    acks = Listener(mosquitto.host, mosquitto.port, device_topic(fleet, "dev-01", Channel.ACK))
    verified = Listener(mosquitto.host, mosquitto.port, verified_topic(fleet, "dev-01", "vib"))
    try:
        with running(collector_config(fleet, mosquitto.host, mosquitto.port, store), registry, signer) as c:
            msgs = [d.birth(), *(d.result(label="ok" if i % 3 else "fault", score=i / 10) for i in range(8))]
            msgs += [d.heartbeat(cpu=0.25, temp=41.0)]
            pub.send(*msgs)
            assert c.wait_idle()
            snap = c.snapshot()
            assert snap.accepted == 10
            assert snap.rejected == {}
            assert snap.labels_by_device["dev-01"] == {"fault": 3, "ok": 5}
            got = acks.wait_for(1)
            assert verified.wait_for(8)
        # the key is bound and the token retired
        assert registry.device_key("dev-01") == d.signer.public_key
        assert registry.claim_token("dev-01") is None
        assert stored(store) == [("dev-01", 1, s, k) for s, k in enumerate([0] + [1] * 8 + [2])]
        # acks are signed by the collector key and end at the last stored seq
        last = open_envelope(got[-1].payload, fleet, signer.public_key)
        assert last.kind is Kind.ACK
        assert (last.payload[Key.DEV], last.payload[Key.BOOT]) == ("dev-01", 1)
        assert max(open_envelope(m.payload, fleet, signer.public_key).seq or 0 for m in acks.got) == 9
        doc = json.loads(verified.got[0].payload)
        assert doc["verdict"] == "ACCEPTED"
        assert (doc["boot"], doc["seq"], len(doc["msg_id"])) == (1, 1, 64)
        assert doc["out"]["label"] == "fault"
        with Store(store, readonly=True) as s:
            dev = s.devices()[0]
            assert (dev["accepted"], dev["boot"], dev["last_seq"]) == (10, 1, 9)
            assert dev["metrics"] == {"cpu": 0.25, "temp": 41.0}
            assert dev["info"]["agent"] == "sim 1.0"
    finally:
        acks.close()
        verified.close()


def test_every_rejection_is_quarantined_with_its_verdict(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    devs = add_devices(registry, fleet, ["dev-a", "dev-b", "dev-gone", "dev-c"])
    a, b = devs["dev-a"], devs["dev-b"]
    registry.revoke_device("dev-gone")
    store = tmp_path / "store.db"
    with running(collector_config(fleet, mosquitto.host, mosquitto.port, store), registry) as c:
        pub.send(a.birth(), a.result(), devs["dev-c"].birth())
        assert c.wait_idle()
        good = a.result()
        # forged signature: one bit flipped in the signature
        forged = bytearray(good.cose)
        forged[-1] ^= 1
        # wrong fleet: a correct chain signed for another fleet id
        other = SimDevice("otherfleet", "dev-a", None, a.signer)
        other.boot, other.seq, other.prev = a.boot, a.seq, a.prev
        wrong_fleet = other.result()
        wrong_fleet_on_ours = (good.topic, wrong_fleet.cose)
        # unknown device
        ghost = SimDevice(fleet, "dev-ghost", bytes(32))
        # revoked device
        gone = SimDevice(fleet, "dev-gone", bytes(32))
        # bad claim: dev-b's birth with a claim made from a wrong token
        b_bad = SimDevice(fleet, "dev-b", b"\x01" * 32, b.signer)
        # topic mismatch: dev-a's result published on dev-c's topic, and on the wrong channel
        a2 = a.result()
        # malformed and oversize
        big = b"\xd2" + bytes(MAX_ENVELOPE_BYTES)
        pub.send(
            (good.topic, bytes(forged)),
            wrong_fleet_on_ours,
            ghost.birth(),
            gone.birth(),
            b_bad.birth(),
            (device_topic(fleet, "dev-c", Channel.RESULT, "vib"), a2.cose),
            (device_topic(fleet, "dev-a", Channel.HEARTBEAT), a2.cose),
            (device_topic(fleet, "dev-a", Channel.RESULT, "vib"), b"not cbor at all"),
            (device_topic(fleet, "dev-a", Channel.RESULT, "vib"), big),
        )
        assert c.wait_idle()
        snap = c.snapshot()
    verdicts = [v for v, _ in quarantined(store)]
    assert sorted(verdicts) == sorted(
        [
            "BAD_SIGNATURE",
            "BAD_SIGNATURE",  # wrong fleet: external_aad differs
            "UNKNOWN_DEVICE",
            "REVOKED",
            "CLAIM_INVALID",
            "TOPIC_MISMATCH",  # dev-a's message on dev-c's topic
            "TOPIC_MISMATCH",  # a result on the heartbeat channel
            "MALFORMED",
            "TOO_LARGE",
        ]
    )
    assert snap.accepted == 3
    assert sum(snap.rejected.values()) == 9
    # nothing of the above is stored as accepted
    assert stored(store) == [("dev-a", 1, 0, 0), ("dev-a", 1, 1, 1), ("dev-c", 1, 0, 0)]
    assert registry.device_key("dev-b") is None


def test_replay_equivocation_and_shuffled_delivery(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    devs = add_devices(registry, fleet, ["dev-01", "dev-02"])
    store = tmp_path / "store.db"
    msgs = []
    for d in devs.values():
        msgs.append(d.birth())
        msgs += [d.result(label=random.choice("ab")) for _ in range(30)]
    births = [m for m in msgs if m.kind is Kind.BIRTH]
    rest = [m for m in msgs if m.kind is not Kind.BIRTH]
    random.Random(7).shuffle(rest)
    with running(collector_config(fleet, mosquitto.host, mosquitto.port, store), registry) as c:
        pub.send(*births)
        assert c.wait_idle()
        pub.send(*rest)
        pub.send(*rest[:10])  # replays: the same bytes again
        assert c.wait_idle()
        d1 = devs["dev-01"]
        # equivocation: seq 5 of boot 1 signed again with another content
        d1.seq, d1.prev = 4, next(m.msg_id for m in msgs if m.topic.endswith("dev-01/res/vib") and m.seq == 4)
        pub.send(d1.result(label="forged"))
        assert c.wait_idle()
        snap = c.snapshot()
    assert snap.accepted == 62
    assert snap.duplicates == 10
    assert snap.rejected == {"EQUIVOCATION": 1}
    rows = stored(store)
    assert len(rows) == len(set(rows)) == 62
    assert [v for v, _ in quarantined(store)] == ["EQUIVOCATION"]


def test_prometheus_metrics(mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path) -> None:
    import urllib.request

    from broker_config.runner import free_port

    fleet = unique_fleet()
    d = add_devices(registry, fleet, ["dev-01"])["dev-01"]
    port = free_port()
    cfg = collector_config(fleet, mosquitto.host, mosquitto.port, tmp_path / "s.db", metrics_port=port)
    with running(cfg, registry) as c:
        pub.send(d.birth(), d.result(), (d.result().topic, b"junk"))
        assert c.wait_idle()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    assert 'edgeseal_collector_messages_total{verdict="ACCEPTED"} 2.0' in text
    assert 'edgeseal_collector_messages_total{verdict="MALFORMED"} 1.0' in text
    assert "edgeseal_collector_quarantine_size 1.0" in text
    assert "edgeseal_collector_batch_seconds_count" in text


def test_a_message_the_store_refuses_is_quarantined_and_the_collector_goes_on(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No single message may stop the collector (docs/reliability.md): a batch whose transaction fails
    is committed again message by message, and the one the store refuses is quarantined."""
    fleet = unique_fleet()
    a = add_devices(registry, fleet, ["dev-a"])["dev-a"]
    real_write = Store._write

    def write(self: Store, batch: Any) -> Any:  # a store that cannot take one row, whatever the cause
        if any(c.seq == 2 for c in batch.candidates):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real_write(self, batch)

    monkeypatch.setattr(Store, "_write", write)
    store = tmp_path / "store.db"
    with running(collector_config(fleet, mosquitto.host, mosquitto.port, store), registry) as c:
        pub.send(a.birth(), a.result(), a.result(), a.result())
        assert c.wait_idle()
        pub.send(a.result())  # and it goes on
        assert c.wait_idle()
        snap = c.snapshot()
        assert c.failed is None
    assert stored(store) == [("dev-a", 1, s, 0 if s == 0 else 1) for s in (0, 1, 3, 4)]
    rows = quarantine_reasons(store)
    assert len(rows) == 1
    assert rows[0][0] == "MALFORMED"
    assert "the store refused it: OverflowError" in rows[0][1]
    assert snap.internal_errors == 1
    assert snap.received == 5
    assert snap.received == snap.accepted + snap.duplicates + sum(snap.rejected.values()) + snap.states


def test_a_failing_store_stops_the_collector_without_acking(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that refuses everything (disk full, I/O error) is not one bad message: the collector stops
    and PUBACKs nothing, so the broker keeps every message for the next start."""
    fleet = unique_fleet()
    a = add_devices(registry, fleet, ["dev-a"])["dev-a"]
    store = tmp_path / "store.db"
    cfg = collector_config(fleet, mosquitto.host, mosquitto.port, store)
    msgs = [a.birth(), a.result(), a.result()]

    def broken(self: Store, batch: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as m:
        m.setattr(Store, "_write", broken)
        with running(cfg, registry) as c:
            pub.send(*msgs)
            deadline = time.monotonic() + 10
            while c.failed is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.failed is not None
    with running(cfg, registry) as c:  # the store works again: the broker still had all three
        assert c.wait_idle()
        deadline = time.monotonic() + 10
        while c.snapshot().accepted < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stored(store) == [("dev-a", 1, 0, 0), ("dev-a", 1, 1, 1), ("dev-a", 1, 2, 1)]


def test_a_message_that_breaks_the_verifier_is_quarantined_and_the_collector_goes_on(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever exception judging one message raises (a bug the fuzzers have not found yet), that
    message is quarantined with the error as its reason and counted; the next one is judged as usual."""
    from edge_protocol.chain import ChainVerifier

    fleet = unique_fleet()
    a = add_devices(registry, fleet, ["dev-a"])["dev-a"]
    real_observe = ChainVerifier.observe

    def observe(self: ChainVerifier, link: Any, now: float, gap: Any = None) -> Any:
        if link.seq == 2:
            raise RecursionError("maximum recursion depth exceeded")
        return real_observe(self, link, now, gap)

    monkeypatch.setattr(ChainVerifier, "observe", observe)
    store = tmp_path / "store.db"
    with running(
        collector_config(fleet, mosquitto.host, mosquitto.port, store, metrics_port=0), registry
    ) as c:
        pub.send(a.birth(), a.result(), a.result(), a.result())
        assert c.wait_idle()
        snap = c.snapshot()
        assert c.failed is None
    assert stored(store) == [("dev-a", 1, 0, 0), ("dev-a", 1, 1, 1), ("dev-a", 1, 3, 1)]
    (reason,) = [r for v, r in quarantine_reasons(store) if v == "MALFORMED"]
    assert reason.startswith("internal error while verifying it: RecursionError")
    assert snap.internal_errors == 1
    assert snap.received == snap.accepted + snap.duplicates + sum(snap.rejected.values()) + snap.states == 4
