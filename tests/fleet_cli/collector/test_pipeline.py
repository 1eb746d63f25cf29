"""The collector's verify pipeline: worker process vs in-thread verification, a dying worker, and the
chain verifier's memory bound over a long run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from edge_protocol.chain import ChainVerifier
from fleet_cli.collector.intake import Intake, RegistryDirectory
from fleet_cli.collector.store import Batch, Candidate, Store
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import (
    Publisher,
    SimDevice,
    add_devices,
    collector_config,
    quarantined,
    running,
    stored,
    unique_fleet,
)

pytestmark = pytest.mark.integration


def _verdicts(path: Path) -> list[str]:
    return sorted(v for v, _ in quarantined(path))


def _mixed(fleet: str, devs: dict[str, SimDevice]) -> tuple[list[object], list[object]]:
    a, b = devs["dev-a"], devs["dev-b"]
    first = [a.birth(), b.birth()]
    good = [a.result(), b.result(), a.heartbeat(), b.result()]
    forged = bytearray(a.result().cose)
    forged[-1] ^= 1
    other = SimDevice(fleet, "dev-a", None)  # right topic, unknown key
    other.boot = 1
    wrong_key = other.result()
    a_on_b = a.result()
    bad = [
        (good[0].topic, bytes(forged)),
        (wrong_key.topic, wrong_key.cose),
        (b.result().topic, a_on_b.cose),  # a's message on b's topic
        (a_on_b.topic, b"junk"),
        good[1],  # a replay
    ]
    return list(first), [*good, *bad]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_same_verdicts_with_and_without_verify_workers(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path, workers: int
) -> None:
    fleet = unique_fleet()
    devs = add_devices(registry, fleet, ["dev-a", "dev-b"])
    store = tmp_path / "store.db"
    first, rest = _mixed(fleet, devs)
    with running(
        collector_config(fleet, mosquitto.host, mosquitto.port, store, verify_workers=workers), registry
    ) as c:
        pub.send(*first)  # type: ignore[arg-type]
        assert c.wait_idle()
        pub.send(*rest)  # type: ignore[arg-type]
        assert c.wait_idle()
        snap = c.snapshot()
    assert snap.accepted == 6
    assert snap.duplicates == 1
    assert _verdicts(store) == ["BAD_SIGNATURE", "MALFORMED", "TOPIC_MISMATCH", "UNKNOWN_KEY"]


def test_a_dying_verify_worker_loses_nothing(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    d = add_devices(registry, fleet, ["dev-01"])["dev-01"]
    store = tmp_path / "store.db"
    with running(collector_config(fleet, mosquitto.host, mosquitto.port, store), registry) as c:
        pub.send(d.birth(), *(d.result() for _ in range(20)))
        assert c.wait_idle()
        assert c._pool is not None
        for proc in c._pool._procs:  # the worker process dies (OOM killer, a bug)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        time.sleep(0.2)
        pub.send(*(d.result() for _ in range(30)))  # verified in the collector's thread from now on
        assert c.wait_idle()
        snap = c.snapshot()
        assert snap.error is None
    assert snap.accepted == 51
    seqs = [seq for _, _, seq, _ in stored(store)]
    assert (len(seqs), max(seqs)) == (51, 50)


def test_chain_memory_stays_bounded(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    d = add_devices(registry, fleet, ["dev-01"])["dev-01"]
    store = tmp_path / "store.db"
    keep = 8
    cfg = collector_config(fleet, mosquitto.host, mosquitto.port, store, chain_keep_recent=keep)
    with running(cfg, registry) as c:
        msgs = [d.birth(), *(d.result() for _ in range(400))]
        pub.send(*msgs)
        assert c.wait_idle()
        assert 0 < c.chain_entries() <= 2 * keep + 16  # ChainVerifier prunes at 2 * keep + 16
        # an old message sent again is still a duplicate (recalled from the store) ...
        pub.send(msgs[5])
        # ... and an old seq signed again differently is still an equivocation
        d.seq, d.prev = 9, msgs[9].msg_id
        pub.send(d.result(label="forged"))
        assert c.wait_idle()
        snap = c.snapshot()
    assert snap.accepted == 401
    assert snap.duplicates == 1
    assert snap.rejected == {"EQUIVOCATION": 1}


def test_intake_memory_bounded_without_broker(tmp_path: Path) -> None:
    """Thousands of messages through Intake + Store: the chain verifier's entries stay bounded."""
    fleet = unique_fleet()
    keep = 16
    with Registry(tmp_path / "r.db") as reg, Store(tmp_path / "s.db") as store:
        devs = add_devices(reg, fleet, ["dev-01", "dev-02"])
        chain = ChainVerifier(60.0, recall=store.recall, keep_recent=keep)
        intake = Intake(fleet, RegistryDirectory(reg), chain)
        for d in devs.values():
            m = d.birth()
            out = intake.judge(m.topic, m.cose, 0, 0.0)
            assert isinstance(out, Candidate)
            store.commit(Batch(candidates=[out]))
        peak = 0
        for _ in range(15):
            batch = Batch()
            for _ in range(100):
                for d in devs.values():
                    m = d.result()
                    out = intake.judge(m.topic, m.cose, 0, 0.0)
                    assert isinstance(out, Candidate)
                    batch.candidates.append(out)
            store.commit(batch)
            peak = max(peak, sum(len(chain.snapshot(dev)) for dev in devs))
        assert store.count_messages() == 2 + 2 * 1500
        assert peak <= 2 * (2 * keep + 16)
