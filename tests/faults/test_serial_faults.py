"""Serial faults under a running agent: bit error rate 1e-4, bursts of garbage, and unplug/replug of
the (virtual) USB serial port, with the real SensorLink, the shipped model and real MQTT.

The simulator is tapped so the test knows every genuine SAMPLE payload it made, and the agent's
sample source is wrapped so the test sees every sample the agent took. Checked: no corrupt frame was
ever taken (every sample is byte-identical to a genuine one), every stored result's ``src`` is the
BLAKE3 of 128 consecutive samples the agent took, the agent keeps running and producing results
through the faults, and nothing it sealed is lost."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import blake3
import pytest

from edge_agent.agent import Agent, open_link
from edge_agent.config import PipelineConfig, load_config
from edge_protocol.envelope import decode_unverified
from edge_protocol.payload import Key
from firmware_bridge.frames import FrameType
from firmware_bridge.samples import Sample
from firmware_bridge.sim.faults import FaultConfig
from firmware_bridge.sim.simulator import Simulator
from tests.faults._harness import WINDOW, AgentOptions, Rig, audit, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

RUN_S = 12.0
FAULTS = FaultConfig(ber=1e-4, garbage_every_s=0.5, disconnect_every_s=3.0, disconnect_for_s=1.0)


class TappedSimulator(Simulator):
    """Remembers every genuine SAMPLE payload before the line corrupts it."""

    genuine: set[bytes]

    def _queue_frame(self, frame_type: FrameType, payload: bytes) -> None:
        if frame_type == FrameType.SAMPLE:
            self.genuine.add(bytes(payload))
        super()._queue_frame(frame_type, payload)


class RecordingSource:
    """The agent's real SensorLink, with every sample it hands out recorded in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken: list[bytes] = []

    @property
    def channels(self) -> tuple[str, ...] | None:
        return self.inner.channels  # type: ignore[no-any-return]

    def read_samples(self, timeout_s: float) -> list[Sample]:
        got: list[Sample] = self.inner.read_samples(timeout_s)
        self.taken.extend(s.raw for s in got)
        return got

    def stats(self) -> dict[str, int]:
        return self.inner.stats()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.inner.close()


def test_ber_garbage_unplug(make_rig: Callable[..., Rig], figure: Callable[[str], None]) -> None:
    rig = make_rig(devices=1)
    d = rig.devices[0]
    TappedSimulator.genuine = set()
    rig.start_broker()
    collector = rig.start_collector()
    rig.write_agent_config(d, AgentOptions(hop=10, heartbeat_s=1.0))
    rig.start_sim(d, FAULTS, sim_cls=TappedSimulator)
    sources: list[RecordingSource] = []

    def factory(cfg: PipelineConfig) -> RecordingSource:
        src = RecordingSource(open_link(cfg))
        sources.append(src)
        return src

    agent = Agent(load_config(d.conf), source_factory=factory)
    agent.start()
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    rig.on_close(lambda: (agent.request_stop(), thread.join(10)))
    stored = lambda: collector.snapshot().stored_by_device.get(d.name, 0)  # noqa: E731
    assert wait_until(lambda: stored() > 0, 20)
    t_end = time.monotonic() + RUN_S
    while time.monotonic() < t_end:
        assert thread.is_alive()
        time.sleep(0.5)
    before_last = stored()
    assert wait_until(lambda: stored() > before_last + 50, 20)  # still producing after all the faults
    sim_stats = d.sim.stats() if d.sim is not None else {}
    assert rig.drain(30), d.outbox_depth()
    agent.request_stop()
    thread.join(10)
    assert not thread.is_alive()
    assert collector.wait_idle()
    a = audit(rig.store, d.name, d.state)
    collector.stop()

    (src,) = sources
    link = src.stats()
    taken = src.taken
    corrupt_taken = sum(1 for raw in taken if raw not in TappedSimulator.genuine)
    windows = {
        blake3.blake3(b"".join(taken[i : i + WINDOW])).digest() for i in range(len(taken) - WINDOW + 1)
    }
    with sqlite3.connect(rig.store) as db:
        results = [bytes(c) for (c,) in db.execute("SELECT cose FROM messages WHERE kind = 1")]
    srcs = [decode_unverified(c).payload[Key.SRC] for c in results]
    src_ok = sum(1 for s in srcs if s in windows)
    figure(
        f"serial faults (BER 1e-4: {sim_stats.get('bit_flips', 0)} bit flips,"
        f" {sim_stats.get('garbage_bursts', 0)}"
        f" garbage bursts, {sim_stats.get('disconnects', 0)} unplugs in {RUN_S:g} s): link counted"
        f" {link.get('crc_errors', 0)} CRC + {link.get('cobs_errors', 0)} COBS errors, {link.get('lost', 0)}"
        f" lost frames, {link.get('reconnects', 0)} reconnects; corrupt samples accepted {corrupt_taken} of"
        f" {len(taken)}; results whose src matches genuine frames {src_ok}/{len(srcs)}; agent crashes 0;"
        f" {a.line()}"
    )
    assert corrupt_taken == 0
    assert src_ok == len(srcs)
    assert len(srcs) > 100
    assert sim_stats["bit_flips"] > 0
    assert sim_stats["garbage_bursts"] > 0
    assert sim_stats["disconnects"] >= 2
    assert link["crc_errors"] + link["cobs_errors"] > 0
    assert link["reconnects"] >= 2
    assert a.lost == [], a.line()
    assert a.pending == 0
    assert a.duplicates == 0
