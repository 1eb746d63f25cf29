"""Network faults between an agent and the broker, through :class:`tests.faults._proxy.FaultProxy`:
latency, a bandwidth limit below the stream's rate, a stall with the connection held open,
connection resets, and a short outage with connections refused. Results lost 0, none stored twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults._harness import AgentOptions, Rig, audit, wait_until
from tests.faults._proxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_latency_stalls_resets_bandwidth_outage(
    make_rig: Callable[..., Rig], figure: Callable[[str], None]
) -> None:
    rig = make_rig(devices=1)
    d = rig.devices[0]
    rig.start_broker()
    proxy = FaultProxy(("127.0.0.1", rig.port))
    rig.on_close(proxy.close)
    collector = rig.start_collector()
    rig.write_agent_config(d, AgentOptions(hop=10, port=proxy.port))  # 100 results/s
    rig.start_sim(d)
    rig.start_agent(d)
    stored = lambda: collector.snapshot().stored_by_device.get(d.name, 0)  # noqa: E731
    assert wait_until(lambda: stored() >= 50, 30), rig.agent_log(d)

    phases: list[str] = []

    def phase(name: str, seconds: float) -> None:
        before = stored()
        time.sleep(seconds)
        phases.append(f"{name} +{stored() - before}")

    proxy.latency_s = 0.15
    phase("latency 150 ms", 3)
    proxy.latency_s = 0.0
    proxy.bandwidth_bps = 15_000  # the stream needs ~40 kB/s
    phase("15 kB/s", 3)
    proxy.bandwidth_bps = 0
    proxy.stalled = True
    phase("stalled", 3)
    proxy.stalled = False
    for _ in range(5):
        proxy.reset_all()
        time.sleep(0.6)
    phases.append(f"{proxy.resets} resets")
    proxy.outage(True)
    phase("refused", 2)
    proxy.outage(False)
    assert wait_until(lambda: d.proc is not None and d.proc.poll() is None and d.outbox_depth() < 100, 30)
    assert rig.drain(60), d.outbox_depth()
    assert collector.wait_idle()
    a = audit(rig.store, d.name, d.state)
    collector.stop()
    figure(
        f"TCP fault proxy (latency 150 ms, 15 kB/s limit, 3 s stall, {proxy.resets} resets, 2 s refused):"
        f" {a.line()}; stored per phase: {', '.join(phases)}"
    )
    assert a.lost == [], a.line()
    assert a.pending == 0
    assert a.duplicates == 0
    assert a.unexpected == 0
    assert a.broken_links == 0
    assert a.forks == 0
    assert a.gapped == 0
    assert proxy.resets >= 5
