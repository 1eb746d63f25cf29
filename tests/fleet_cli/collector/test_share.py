"""Restart safety, device gap records and timeout gaps, two collectors on one shared subscription."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge_protocol.envelope import open_envelope
from edge_protocol.keys import Signer
from edge_protocol.topics import Channel, device_topic
from fleet_cli.collector.store import Store
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import (
    Listener,
    Publisher,
    add_devices,
    collector_config,
    running,
    stored,
    unique_fleet,
)

pytestmark = pytest.mark.integration


def rows(path: Path) -> list[tuple[str, int, int]]:
    return [(dev, boot, seq) for dev, boot, seq, _ in stored(path)]


def test_restart_continues_chain_and_backlog_waits_in_the_session(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    d = add_devices(registry, fleet, ["dev-01"])["dev-01"]
    store = tmp_path / "store.db"
    cfg = collector_config(fleet, mosquitto.host, mosquitto.port, store)
    with running(cfg, registry) as c:
        pub.send(d.birth(), *(d.result() for _ in range(5)))
        assert c.wait_idle()
    # collector down: the persistent session queues these at the broker
    backlog = [d.result() for _ in range(5)]
    pub.send(*backlog)
    with running(cfg, registry) as c:
        assert c.wait_idle()
        pub.send(backlog[2])  # a resend after the restart is still a duplicate (recall into the store)
        d.seq, d.prev = 6, backlog[1].msg_id
        equivocation = d.result()  # seq 7 again, with other content
        d.seq, d.prev = 10, backlog[0].msg_id
        fork = d.result()  # seq 11 whose prev is not seq 10's msg_id
        pub.send(equivocation, fork)
        assert c.wait_idle()
        snap = c.snapshot()
    assert snap.accepted == 5
    assert snap.duplicates == 1
    assert snap.rejected == {"EQUIVOCATION": 1, "FORK": 1}
    assert rows(store) == [("dev-01", 1, s) for s in range(11)]


def test_gap_record_and_timeout_gap(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    d = add_devices(registry, fleet, ["dev-01"])["dev-01"]
    store = tmp_path / "store.db"
    signer = Signer.generate()
    acks = Listener(mosquitto.host, mosquitto.port, device_topic(fleet, "dev-01", Channel.ACK))
    cfg = collector_config(fleet, mosquitto.host, mosquitto.port, store, reorder_timeout_s=0.5)
    try:
        with running(cfg, registry, signer) as c:
            first = [d.birth(), d.result(), d.result()]  # seqs 0-2
            d.result(), d.result()  # seqs 3-4: dropped by the device's full outbox
            rec = d.gap(3, 4)  # seq 5 says so
            lost = d.result()  # seq 6: never arrives
            last = d.result()  # seq 7
            pub.send(*first, rec, last)
            assert c.wait_idle()
            time.sleep(1.6)  # reorder timeout (0.5 s) + expiry tick (1 s)
            assert c.wait_idle()
            snap = c.snapshot()
            del lost
        assert snap.gaps == 1
        with Store(store, readonly=True) as s:
            gaps = [(g["first"], g["last"], g["source"]) for g in s.gaps()]
            (device,) = s.devices()
            drops = (device["drops"], device["gaps"])
        assert gaps == [(3, 4, "device"), (6, 6, "timeout")]
        assert drops == (2, 1)
        # acks cover the dropped seqs (3-4) but never the missing one (6)
        acked = [open_envelope(m.payload, fleet, signer.public_key).seq for m in acks.wait_for(1)]
        assert max(s for s in acked if s is not None) == 5
    finally:
        acks.close()


def test_two_collectors_share_one_subscription(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    devs = add_devices(registry, fleet, [f"dev-{i}" for i in range(4)])
    store = tmp_path / "store.db"
    base = collector_config(fleet, mosquitto.host, mosquitto.port, store, share_group="g1")
    births, rest = [], []
    for d in devs.values():
        births.append(d.birth())
        rest += [d.result(label=random.choice("xyz")) for _ in range(50)]
    random.Random(3).shuffle(rest)
    with (
        running(replace(base, client_id=f"{fleet}-a"), registry) as a,
        running(replace(base, client_id=f"{fleet}-b"), registry) as b,
    ):
        pub.send(*births)
        assert a.wait_idle()
        assert b.wait_idle()
        pub.send(*rest)
        pub.send(*rest[:20])  # redeliveries, landing on either collector
        assert a.wait_idle()
        assert b.wait_idle()
        sa, sb = a.snapshot(), b.snapshot()
    assert sa.accepted > 0
    assert sb.accepted > 0  # both took a share
    assert sa.accepted + sb.accepted == 204
    assert sa.duplicates + sb.duplicates == 20
    assert sa.rejected == sb.rejected == {}
    got = rows(store)
    assert len(got) == len(set(got)) == 204
