"""Agent crashes: ``edge-agent run`` SIGKILLed 10x at random moments (during start-up, sealing,
publishing) and started again. Every seq it ever sealed is stored or inside a device-signed gap
record, the boot counter rises with every start that got far enough to seal a birth, and the chain
links across every boot (each birth's ``prev`` is the stored last message of the boot before)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import pytest

from tests.faults._harness import AgentOptions, Rig, audit, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

KILLS = 10


def test_agent_sigkill_10x_at_random_moments(
    make_rig: Callable[..., Rig], figure: Callable[[str], None]
) -> None:
    rig = make_rig(devices=1)
    rng = random.Random(int(os.environ.get("EDGESEAL_KILL_SEED", "88")))
    d = rig.devices[0]
    rig.start_broker()
    collector = rig.start_collector()
    rig.write_agent_config(d, AgentOptions(hop=10))
    rig.start_sim(d)
    boots_seen: list[int] = []
    kill_after: list[float] = []
    for _ in range(KILLS):
        rig.start_agent(d)
        wait = rng.uniform(0.2, 2.5)  # some kills land in start-up, before the boot counter moves
        kill_after.append(wait)
        time.sleep(wait)
        rig.kill_agent(d)
        if (d.state / "boot").exists():
            boots_seen.append(d.boot())
    rig.start_agent(d)
    assert wait_until(lambda: (d.state / "boot").exists() and d.boot() > (boots_seen or [0])[-1], 20)
    last_boot = d.boot()
    # the last boot's birth and results are stored: the agent works after ten crashes
    assert wait_until(lambda: collector.snapshot().stored_by_device.get(d.name, 0) > 0, 20)
    time.sleep(1.0)
    assert rig.drain(30), d.outbox_depth()
    assert d.proc is not None
    assert d.proc.returncode == 0, rig.agent_log(d)
    assert collector.wait_idle()
    a = audit(rig.store, d.name, d.state)
    collector.stop()
    figure(
        f"agent SIGKILLed {KILLS}x at random moments (0.2-2.5 s after start): {a.line()},"
        f" boot counter {boots_seen[0] if boots_seen else 0} -> {last_boot}, chain linked across"
        f" {len(a.boots)} boots, broken links {a.broken_links}"
    )
    assert a.lost == [], a.line()
    assert a.duplicates == 0
    assert a.unexpected == 0
    assert a.missing_births == 0  # every birth stored and its prev found: the chain walks back to zero
    assert a.broken_links == 0
    assert a.forks == 0
    assert boots_seen == sorted(boots_seen)  # never goes back
    assert a.boots == sorted(a.boots)
    assert a.boots[-1] == last_boot
    assert len(a.boots) >= 2
