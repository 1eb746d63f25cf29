"""Collector crashes: ``fleet collect`` SIGKILLed 10x at random moments while two agents stream
200 results/s. Its MQTT session is persistent and it PUBACKs only after its batch committed; agents
keep every entry until its signed ack. So nothing is lost and nothing is stored twice."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults._harness import ROOT, AgentOptions, Rig, audit, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

KILLS = 10


def start_collect(rig: Rig, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet_cli",
                "collect",
                "--home",
                str(rig.home.root),
                "--store",
                str(rig.store),
                "--host",
                "127.0.0.1",
                "--port",
                str(rig.port),
                "--log-interval",
                "1",
                "--no-verified",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stored(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_collector_sigkill_10x(make_rig: Callable[..., Rig], figure: Callable[[str], None]) -> None:
    rig = make_rig(devices=2)
    rng = random.Random(6)
    log = rig.tmp / "collect.log"
    rig.start_broker()
    procs: list[subprocess.Popen[bytes]] = []

    def cleanup() -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    rig.on_close(cleanup)
    procs.append(start_collect(rig, log))
    for d in rig.devices:
        rig.write_agent_config(d, AgentOptions(hop=10))
        rig.start_sim(d)
        rig.start_agent(d)
    assert wait_until(lambda: stored(rig.store) >= 100, 30), log.read_text()[-2000:]
    progress: list[int] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.3, 2.5))  # some kills land in start-up, some mid-batch
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait()
        progress.append(stored(rig.store))
        procs.append(start_collect(rig, log))
    killed_log = log.read_text()
    log.write_text("")  # from here on: the last collector's own output only
    assert progress[-1] > progress[0]  # the collector made progress between the kills
    assert rig.drain(60), [d.outbox_depth() for d in rig.devices]
    procs[-1].send_signal(signal.SIGTERM)
    assert procs[-1].wait(20) == 0, log.read_text()[-2000:]
    audits = [audit(rig.store, d.name, d.state) for d in rig.devices]
    lost = sum(len(a.lost) for a in audits)
    dups = sum(a.duplicates for a in audits)
    sealed = sum(a.sealed for a in audits)
    figure(
        f"collector (fleet collect) SIGKILLed {KILLS}x at 200 results/s: sealed {sealed}, lost {lost},"
        f" duplicates stored {dups}, forks {sum(a.forks for a in audits)};"
        f" tracebacks printed by the killed collectors' verify workers {killed_log.count('Traceback')}"
    )
    assert "Traceback" not in log.read_text()  # the last collector ran and stopped cleanly
    for a in audits:
        assert a.lost == [], a.line()
        assert a.duplicates == 0
        assert a.unexpected == 0
        assert a.broken_links == 0
        assert a.forks == 0
        assert a.gapped == 0
