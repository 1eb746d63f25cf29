"""A long outage that overflows the agent's bounded outbox (64 KiB, the minimum; ~150 results):
the oldest entries are dropped, every dropped seq is inside a device-signed gap record, the count in
the gap records equals the agent's own drop counter exactly, nothing else is lost, and the agent's
memory and outbox stay bounded while it keeps sealing 100 results/s with nowhere to send them."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel
from fleet_cli.home import init_fleet
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.faults._harness import AgentOptions, Rig, audit, rss_kib, wait_until
from tests.faults._proxy import FaultProxy
from tests.fleet_cli._collect_sim import Publisher, add_devices, collector_config, running, unique_fleet

pytestmark = [pytest.mark.faults, pytest.mark.integration]

OUTBOX_BYTES = 64 * 1024  # edge_agent.config.MIN_OUTBOX_BYTES
OUTAGE_S = 8.0


def last_drops(rig: Rig, dev: str) -> int:
    with sqlite3.connect(rig.store, timeout=5) as db:
        row = db.execute("SELECT metrics FROM devices WHERE dev = ?", (dev,)).fetchone()
    return int(json.loads(row[0])["drops"]) if row and row[0] else -1


def run_outage(
    rig: Rig, figure: Callable[[str], None], *, restart_during_outage: bool, drain_s: float = 60
) -> None:
    d = rig.devices[0]
    rig.start_broker()
    proxy = FaultProxy(("127.0.0.1", rig.port))
    rig.on_close(proxy.close)
    collector = rig.start_collector()
    rig.write_agent_config(
        d, AgentOptions(hop=10, port=proxy.port, max_bytes=OUTBOX_BYTES, heartbeat_s=1.0, backoff_max_s=0.3)
    )
    rig.start_sim(d)
    rig.start_agent(d)
    assert wait_until(lambda: collector.snapshot().stored_by_device.get(d.name, 0) >= 100, 30), rig.agent_log(
        d
    )
    assert d.proc is not None
    proxy.outage(True)
    rss0 = rss_kib(d.proc.pid)
    rss_max, outbox_max = rss0, 0
    t_end = time.monotonic() + OUTAGE_S
    restarted = False
    while time.monotonic() < t_end:
        if restart_during_outage and not restarted and time.monotonic() > t_end - OUTAGE_S / 2:
            rig.kill_agent(d)  # boot 2 starts with boot 1's backlog and must drop it
            rig.start_agent(d)
            restarted = True
            time.sleep(1.0)
            rss0 = rss_kib(d.proc.pid)
        rss_max = max(rss_max, rss_kib(d.proc.pid))
        outbox_max = max(outbox_max, d.outbox_bytes())
        time.sleep(0.25)
    proxy.outage(False)
    assert rig.drain(drain_s), d.outbox_depth()
    assert collector.wait_idle()
    a = audit(rig.store, d.name, d.state)
    drops = last_drops(rig, d.name)
    collector.stop()
    growth_mib = (rss_max - rss0) / 1024
    figure(
        f"outbox overflow ({OUTAGE_S:g} s outage at 100 results/s, outbox {OUTBOX_BYTES // 1024} KiB"
        f"{', agent SIGKILLed and restarted mid-outage' if restart_during_outage else ''}): {a.line()};"
        f" dropped by the agent {drops}, in signed gap records {a.gap_n}; outbox max {outbox_max} B;"
        f" agent RSS {rss0 / 1024:.0f} MiB, +{growth_mib:.1f} MiB during the outage"
    )
    assert a.gapped > 0  # the outage really overflowed the outbox
    assert a.lost == [], a.line()
    assert a.pending == 0
    assert a.duplicates == 0
    assert a.unexpected == 0
    assert a.forks == 0
    if restart_during_outage:
        # the drop counter is per process: the killed boot's last count died with it
        assert a.gap_n >= drops
        assert len(a.boots) == 2
    else:
        assert a.gap_n == drops  # the signed count equals the agent's own drop counter exactly
    assert outbox_max <= OUTBOX_BYTES
    assert growth_mib < 16


def test_outbox_overflow_drops_counted_and_signed(
    make_rig: Callable[..., Rig], figure: Callable[[str], None]
) -> None:
    run_outage(make_rig(devices=1), figure, restart_during_outage=False)


CROSS_BOOT_GAP_BUG = (  # fixed by a1c1b48; kept as the regression tests' reference
    "collector bug (fixed): a gap record sealed in boot b for seqs of an earlier boot"
    " ({boot: b-1, from, to}, as the"
    " agent writes it) is quarantined MALFORMED by fleet_cli.collector.intake.Intake._gap"
    " (it ignores gap.boot and"
    " requires to < the record's own seq); the quarantined seq then blocks boot b's ack head, so the agent's"
    " outbox never drains and the earlier boot's drops are never covered"
)


def test_outbox_overflow_across_a_restart(
    make_rig: Callable[..., Rig], figure: Callable[[str], None]
) -> None:
    """Boot 2 starts with boot 1's backlog and drops it (and its own birth): the gap records cover
    seqs of an earlier boot (the bug named in CROSS_BOOT_GAP_BUG, fixed in the collector)."""
    run_outage(make_rig(devices=1), figure, restart_during_outage=True, drain_s=30)


def test_repro_gap_record_for_an_earlier_boot(tmp_path: Path, mosquitto: Broker) -> None:
    """Minimal reproduction, without an agent: boot 1 seals seqs 0..5, seqs 3..5 are dropped before
    delivery, boot 2's gap record (seq 1) says so with ``boot: 1``. Expected: stored as a device gap of
    boot 1, nothing quarantined; the collector quarantines it as MALFORMED instead."""
    fleet = unique_fleet("g")
    home = init_fleet(tmp_path / "home", fleet)
    store = tmp_path / "store.db"
    with Registry(home.registry_db) as reg:
        (dev,) = add_devices(reg, fleet, ["dev-01"]).values()
        pub = Publisher(mosquitto.host, mosquitto.port)
        try:
            with running(collector_config(fleet, mosquitto.host, mosquitto.port, store), reg) as c:
                boot1 = [dev.birth(), *(dev.result() for _ in range(5))]
                birth2 = dev.birth()  # prev = msg_id of boot 1 seq 5
                body = {"boot": 1, "from": 3, "to": 5, "n": 3, "why": "outbox full"}
                gap = dev._make(Kind.GAP, Channel.GAP, {Key.GAP: body})
                pub.send(*boot1[:3], birth2, gap)
                assert c.wait_idle()
        finally:
            pub.close()
    with sqlite3.connect(store) as db:
        quarantined = db.execute("SELECT verdict, reason FROM quarantine").fetchall()
        gaps = db.execute("SELECT boot, first, last FROM gaps WHERE source = 'device'").fetchall()
    assert quarantined == []
    assert gaps == [(1, 3, 5)]
