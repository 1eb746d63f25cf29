"""The real thing: a virtual microcontroller on a pty, the shipped model, the real SensorLink and Mosquitto;
the agent as a library and as the ``edge-agent`` process (SIGTERM within 5 s, kill -9 at random moments)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config, shipped_model
from edge_agent.pipeline import config_hash
from edge_protocol.payload import Key, Kind
from firmware_bridge.sim.simulator import Simulator
from tests._mosquitto import Broker
from tests.edge_agent._support import Collector, config_text, unique_fleet

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(profile="vibration", hz=1000, seed=7, realtime=True) as s:
        yield s


def write_config(tmp: Path, broker: Broker, sim: Simulator, fleet: str, **kw: object) -> Path:
    conf = tmp / "agent.toml"
    text = config_text(
        tmp / "state",
        broker.port,
        fleet=fleet,
        model="models/vibration_int8.tflite",
        source_port=sim.path,
        **kw,  # type: ignore[arg-type]
    )
    conf.write_text(text)
    return conf


def test_shipped_model_over_a_pty(tmp_path: Path, mosquitto: Broker, sim: Simulator) -> None:
    fleet = unique_fleet()
    conf = write_config(tmp_path, mosquitto, sim, fleet, window=128, hop=32)
    cfg = load_config(conf)
    c = Collector(mosquitto.host, mosquitto.port, fleet=fleet)
    agent = Agent(cfg)
    try:
        agent.start()
        t = threading.Thread(target=agent.run, daemon=True)
        t.start()
        assert c.wait_for(lambda: len(c.of_kind(Kind.RESULT)) >= 10, 15), c.errors
        results = c.of_kind(Kind.RESULT)
        model_hash = blake3.blake3(shipped_model("vibration_int8.tflite").read_bytes()).digest()
        for r in results:
            p = r.payload
            assert p[Key.MODEL] == model_hash
            assert p[Key.CFG] == config_hash(cfg.pipelines[0])
            assert p[Key.OUT]["label"] in ("normal", "imbalance", "bearing")
            assert 0.0 <= p[Key.OUT]["score"] <= 1.0
            assert p[Key.LAT] > 0
        assert len({r.payload[Key.SRC] for r in results}) == len(results)  # every window different
        assert not c.errors
    finally:
        agent.request_stop()
        t.join(10)
        c.close()


def agent_cmd(conf: Path) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(conf)]


def test_cli_check_version_and_bad_config(tmp_path: Path, mosquitto: Broker, sim: Simulator) -> None:
    conf = write_config(tmp_path, mosquitto, sim, unique_fleet(), window=128, hop=64)
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    digest = blake3.blake3(shipped_model("vibration_int8.tflite").read_bytes()).hexdigest()
    assert digest in out.stdout
    assert "input  serving_default_accel_g:0 [1, 128, 3] int8" in out.stdout
    conf.write_text(conf.read_text().replace("window = 128", "window = 100"))
    bad = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    # (the runtime itself may print an INFO line about its delegate before ours)
    lines = [ln for ln in bad.stderr.splitlines() if not ln.startswith("INFO: ")]
    assert lines[0].startswith("error: pipeline vib: model vibration_int8.tflite takes input")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in bad.stderr
    v = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert v.returncode == 0
    assert v.stdout.startswith("edge-agent ")


def test_cli_does_not_import_heavy_modules() -> None:
    code = (
        "import sys, edge_agent.cli as c; c._parser();"
        "heavy = ('numpy', 'typer', 'rich', 'fleet_cli', 'ai_edge_litert', 'tflite_runtime', 'paho');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sigterm_exits_zero_within_5s_and_says_offline(
    tmp_path: Path, mosquitto: Broker, sim: Simulator
) -> None:
    fleet = unique_fleet()
    conf = write_config(tmp_path, mosquitto, sim, fleet, window=128, hop=16)
    c = Collector(mosquitto.host, mosquitto.port, fleet=fleet)
    proc = subprocess.Popen(agent_cmd(conf), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert c.wait_for(lambda: len(c.of_kind(Kind.RESULT)) >= 5, 20), c.errors
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        took = time.monotonic() - t0
        assert rc == 0, proc.stderr.read() if proc.stderr else ""
        assert took < 5.0
        assert c.wait_for(lambda: bool(c.states) and json.loads(c.states[-1])["state"] == "offline", 5)
        assert not c.errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        c.close()


@pytest.mark.slow
@pytest.mark.faults
def test_kill_9_at_random_moments_every_seq_delivered_or_gapped(
    tmp_path: Path, mosquitto: Broker, sim: Simulator
) -> None:
    """kill -9 the agent five times at random moments; after a clean last run, every seq it ever sealed
    has reached the collector (or lies in a gap record), and the chain links across every boot."""
    fleet = unique_fleet()
    conf = write_config(tmp_path, mosquitto, sim, fleet, window=128, hop=8)
    c = Collector(mosquitto.host, mosquitto.port, fleet=fleet)
    rng = random.Random(int(os.environ.get("EDGESEAL_KILL_SEED", "1234")))
    try:
        for _ in range(5):
            proc = subprocess.Popen(
                agent_cmd(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
            )
            time.sleep(rng.uniform(0.3, 2.0))
            proc.kill()
            proc.wait()
        proc = subprocess.Popen(
            agent_cmd(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
        )
        boot_file = tmp_path / "state" / "boot"
        time.sleep(2.0)
        last_boot = int(boot_file.read_text())
        assert c.wait_for(lambda: (last_boot, 0) in c.messages, 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        # the head of the last boot, from the outbox the agent left
        import sqlite3

        db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite")
        head_boot, head_seq, _head_id = db.execute("SELECT boot, seq, msg_id FROM head").fetchone()
        db.close()
        assert head_boot == last_boot
        # Walk the chain back from the head: each boot's birth names the last message of the boot before.
        ends = {head_boot: head_seq}
        for (b, s), m in sorted(c.messages.items()):
            if s == 0 and m.prev != bytes(32):
                before = c.by_id.get(m.prev)
                assert before is not None, f"boot {b}: the message before its birth never arrived"
                ends[before.boot or 0] = before.seq or 0
        for b, last in ends.items():
            # Delivery of the killed boots' backlog happens on later connects; wait for it.
            assert c.wait_for(lambda b=b, last=last: c.contiguous(b) >= last, 15), (b, last, c.contiguous(b))
        assert not c.errors
        assert len(ends) >= 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        c.close()
