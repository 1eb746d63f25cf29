"""Broker crashes: Mosquitto SIGKILLed and restarted on the same port 10x while two agents stream
200 results/s. Every sealed seq must be stored (fleet-ack: agents keep entries until the collector's
signed ack, and resend on reconnect), none twice, and the collector's session comes back."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from tests.faults._harness import AgentOptions, Rig, audit, percentile, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

KILLS = 10
DOWN_S = 0.3  # the broker stays dead this long before it is restarted


def test_broker_sigkill_10x_during_200_results_per_s(
    make_rig: Callable[..., Rig], figure: Callable[[str], None]
) -> None:
    rig = make_rig(devices=2)
    rng = random.Random(8)
    rig.start_broker()
    collector = rig.start_collector()
    for d in rig.devices:
        rig.write_agent_config(d, AgentOptions(hop=10))  # 1000 Hz / 10 = 100 results/s per device
        rig.start_sim(d)
        rig.start_agent(d)
    assert wait_until(lambda: collector.snapshot().accepted >= 200, 30), rig.agent_log(rig.devices[0])
    t0, n0 = time.monotonic(), collector.snapshot().accepted
    time.sleep(2.0)
    rate = (collector.snapshot().accepted - n0) / (time.monotonic() - t0)

    recoveries: list[float] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.5, 1.5))
        rig.kill_broker()
        time.sleep(DOWN_S)
        rig.start_broker()
        restarted = time.monotonic()
        before = collector.snapshot().accepted
        # recovered: both agents' new results are being stored again
        assert wait_until(lambda b=before: collector.snapshot().accepted >= b + 50, 30)
        recoveries.append(time.monotonic() - restarted)
        for d in rig.devices:
            assert d.proc is not None
            assert d.proc.poll() is None, rig.agent_log(d)

    assert rig.drain(60), [d.outbox_depth() for d in rig.devices]
    assert collector.wait_idle()
    audits = [audit(rig.store, d.name, d.state) for d in rig.devices]
    collector.stop()
    lost = sum(len(a.lost) for a in audits)
    dups = sum(a.duplicates for a in audits)
    sealed = sum(a.sealed for a in audits)
    figure(
        f"broker SIGKILLed {KILLS}x at {rate:.0f} results/s: sealed {sealed}, lost {lost},"
        f" duplicates stored {dups}, recovery p50 {percentile(recoveries, 0.5):.1f} s"
        f" max {max(recoveries):.1f} s (until 50 new results stored)"
    )
    for a in audits:
        assert a.lost == [], a.line()
        assert a.duplicates == 0
        assert a.unexpected == 0
        assert a.broken_links == 0
        assert a.forks == 0
        assert a.missing_births == 0
        assert a.gapped == 0  # nothing was dropped: the outbox never filled
    assert sealed > 0
