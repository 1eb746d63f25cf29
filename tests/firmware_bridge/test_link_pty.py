"""SensorLink over real pseudo-terminals: the simulator, unplug and replug, an independent encoder."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_bridge.frames import FrameType
from firmware_bridge.link import EventKind, SensorLink
from firmware_bridge.samples import Sample
from firmware_bridge.sim.simulator import Simulator
from tests.firmware_bridge._support import raw_pty, unwire, wire

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    simulator = Simulator(profile="vibration", hz=500, seed=11, link=tmp_path / "ttyVIB")
    simulator.start()
    yield simulator
    simulator.stop()


def collect(link: SensorLink, n: int, timeout_s: float = 10.0) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout_s
    while len(samples) < n and time.monotonic() < deadline:
        samples += link.read_samples(0.2)
    return samples


def test_simulator_to_link(sim: Simulator) -> None:
    with SensorLink(sim.path) as link:
        samples = collect(link, 200)
        assert len(samples) >= 200
        assert link.hello is not None
        assert link.hello.firmware == "edgeseal-sim"
        assert link.hello.channels == ("ax", "ay", "az")
        assert link.hello.hz == 500
        steps = {(b.t_us - a.t_us) % 2**32 for a, b in itertools.pairwise(samples)}
        assert steps == {2000}
        link.send_config({"cond": "imbalance", "hz": "250"})
        deadline = time.monotonic() + 5
        logs: list[str] = []
        while time.monotonic() < deadline and "config hz=250" not in logs:
            link.read_samples(0.1)
            logs += [e.detail for e in link.drain_events() if e.kind == EventKind.LOG]
        assert "cond=imbalance" in logs
        assert "config hz=250" in logs
        later = collect(link, 20)
        assert {(b.t_us - a.t_us) % 2**32 for a, b in itertools.pairwise(later)} == {4000}
        stats = link.stats()
        assert stats["crc_errors"] == stats["cobs_errors"] == 0
        assert stats["lost"] == 0
        assert stats["configs_sent"] >= 1


def test_link_survives_unplug_and_replug(sim: Simulator) -> None:
    with SensorLink(sim.path, reopen_backoff_max_s=0.2) as link:
        link.send_config({"cond": "bearing"})
        assert len(collect(link, 50)) >= 50
        sim.unplug(0.6)
        t0 = time.monotonic()
        while link.connected and time.monotonic() - t0 < 5:
            link.read_samples(0.1)  # never raises while the port is gone
        assert not link.connected
        while not link.connected and time.monotonic() - t0 < 10:
            link.read_samples(0.1)  # returns while the port is gone, never raises
        assert link.connected
        after = collect(link, 50)
        assert len(after) >= 50
        stats = link.stats()
        assert stats["outages"] == 1
        assert stats["reconnects"] == 1
        assert stats["outage_ms"] >= 500
        assert stats["pings_sent"] >= 2  # PING on open and again after the reopen
        assert stats["configs_sent"] >= 2  # CONFIG re-sent to the replugged board
        assert link.hello is not None
        assert link.hello.extra["cond"] == "bearing"


def test_link_survives_periodic_disconnect_faults(tmp_path: Path) -> None:
    from firmware_bridge.sim.faults import FaultConfig

    faults = FaultConfig(disconnect_every_s=0.4, disconnect_for_s=0.2)
    with (
        Simulator(hz=500, seed=12, link=tmp_path / "ttyF", faults=faults) as sim,
        SensorLink(sim.path, reopen_backoff_max_s=0.1) as link,
    ):
        samples = collect(link, 10**9, timeout_s=2.0)
        assert len(samples) > 300
        assert link.stats()["outages"] >= 2
        assert link.stats()["reconnects"] >= 2


def test_independent_encoder_with_noise_over_a_raw_pty() -> None:
    master, path = raw_pty()
    try:
        with SensorLink(path, channels=["a", "b"]) as link:
            import struct

            stream = wire(FrameType.HELLO, 0, b"fw=ext;ver=9;ch=a,b;hz=50")
            for seq in range(1, 41):
                frame = wire(FrameType.SAMPLE, seq, struct.pack("<Iff", seq * 20_000, seq, -seq))
                if seq % 10 == 5:
                    frame = frame[:3] + bytes([frame[3] ^ 0x10]) + frame[4:]  # a bit error: CRC fails
                if seq % 10 == 7:
                    frame = b"\x13\x37noise" + frame  # noise glued to the front costs that frame
                stream += frame
            os.write(master, stream)
            samples = collect(link, 32, timeout_s=5)
            assert [s.t_us // 20_000 for s in samples] == [s for s in range(1, 41) if s % 10 not in (5, 7)]
            assert samples[0].values == (1.0, -1.0)
            stats = link.stats()
            assert stats["lost"] == 8
            assert stats["crc_errors"] + stats["cobs_errors"] == 8
            # what the link sent: a PING, readable by the independent decoder
            sent = unwire(os.read(master, 4096))
            assert sent[0] == (FrameType.PING, 0, b"")
    finally:
        os.close(master)


def test_raw_pty_master_closing_is_an_outage() -> None:
    master, path = raw_pty()
    link = SensorLink(path, reopen_backoff_max_s=0.1)
    link.open()
    try:
        os.write(master, wire(FrameType.HELLO, 0, b"fw=x;ver=1;ch=a;hz=1"))
        deadline = time.monotonic() + 5
        while link.hello is None and time.monotonic() < deadline:
            link.read_samples(0.1)
        os.close(master)
        master = -1
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            assert link.read_samples(0.05) == []
        assert link.stats()["outages"] == 1
        assert not link.connected
    finally:
        link.close()
        if master >= 0:
            os.close(master)
