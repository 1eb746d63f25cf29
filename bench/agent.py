"""Figures of the edge agent (issue #4 item 12).

* ``overhead_us_p50`` / ``_p95``: per result, the agent's own work on the reader thread — windowing,
  hashing input and samples, postprocessing, sealing (CBOR + Ed25519 + BLAKE3), the SQLite transaction,
  handing it to the MQTT thread — with the inference itself excluded (measured apart, ``inference_us_p50``).
  ``publish_cpu_us_per_result`` adds the MQTT thread's CPU per published message.
* ``results_per_s``: sustained signed results/s with the shipped int8 model, the agent pinned to one
  core, samples fed as fast as it takes them, every result published QoS 1 and counted by
  ``mosquitto_sub`` (zero loss is checked: all N must arrive).
* ``rss_mb_litert`` / ``rss_mb_tflite_runtime``: VmRSS of a running ``edge-agent run`` process (pty
  simulator, shipped model) with each runtime; tflite-runtime needs ``.venv-tflite``
  (``tools/test-tflite-runtime.sh`` makes it), else null.
* ``first_result_s``: process start to the first result received by a subscriber.

Run: ``.venv/bin/python bench/agent.py [--json] [--results N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker_config.runner import MosquittoProcess, free_port  # noqa: E402
from edge_agent.config import (  # noqa: E402
    Delivery,
    MqttConfig,
    PipelineConfig,
    PostKind,
    PostprocessConfig,
    SourceConfig,
    shipped_model,
)
from edge_agent.outbox import Outbox  # noqa: E402
from edge_agent.pipeline import Pipeline, build_engine  # noqa: E402
from edge_agent.session import Session  # noqa: E402
from edge_protocol.keys import Signer  # noqa: E402
from firmware_bridge.samples import Sample  # noqa: E402

FLEET, DEV = "bench", "dev-01"


def broker(tmp: Path) -> MosquittoProcess:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        "max_queued_messages 1000000\nmax_inflight_messages 0\n"
    )
    for p in (tmp, *tmp.parents):
        if p == Path("/"):
            break
        if os.geteuid() == 0:
            p.chmod(p.stat().st_mode | 0o055)
    return MosquittoProcess(conf, port).start()


def make_samples(n: int) -> list[Sample]:
    import struct

    out = []
    for i in range(n):
        v = (0.05 * ((i * 7) % 11 - 5) / 5.0, 0.03 * ((i * 3) % 7 - 3) / 3.0, 1.0 + 0.01 * ((i % 5) - 2))
        raw = struct.pack("<I3f", i * 2500, *v)
        out.append(Sample(i * 2500, tuple(struct.unpack("<3f", raw[4:])), raw))
    return out


def pipeline_cfg(hop: int) -> PipelineConfig:
    return PipelineConfig(
        name="vib",
        model=shipped_model("vibration_int8.tflite"),
        source=SourceConfig("/dev/null"),
        channels=("ax", "ay", "az"),
        window=128,
        hop=hop,
        postprocess=PostprocessConfig(PostKind.CLASSIFY, ("normal", "imbalance", "bearing"), top_k=0),
    )


class TimedEngine:
    """Wraps the real engine and records the inference time of each call (excluded from overhead)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last_ns = 0
        self.times: list[int] = []

    @property
    def model_hash(self) -> bytes:
        return bytes(self.inner.model_hash)

    @property
    def input(self) -> Any:
        return self.inner.input

    def infer(self, rows: Any) -> Any:
        t0 = time.perf_counter_ns()
        r = self.inner.infer(rows)
        self.last_ns = time.perf_counter_ns() - t0
        self.times.append(self.last_ns)
        return r


def count_sub(port: int, topic: str, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-C", str(n)],
        stdout=subprocess.DEVNULL,
    )


def in_process(tmp: Path, port: int, n_results: int, hop: int) -> dict[str, Any]:
    """Overhead and sustained rate: the real pipeline, outbox and session in this process, on one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    cfg = pipeline_cfg(hop)
    engine = TimedEngine(build_engine(cfg))
    pipe = Pipeline(cfg, engine, FLEET, DEV)
    box = Outbox(tmp / "outbox.sqlite", max_bytes=1 << 30)
    box.start_boot(Signer.generate(), DEV, FLEET, 1)
    session = Session(
        MqttConfig(port=port, client_id=f"bench-{os.getpid()}", max_inflight=1024),
        fleet=FLEET,
        dev=DEV,
        boot=1,
        outbox=box,
        delivery=Delivery.BROKER_ACK,
    )
    session.start()
    if not session.connected_event.wait(10):
        raise SystemExit("bench: cannot connect to the broker")
    topic = f"edgeseal/v1/{FLEET}/{DEV}/res/vib"
    warm = 200
    samples = make_samples((n_results + warm) * hop + 128)
    sub = count_sub(port, topic, n_results + warm)
    time.sleep(0.3)
    overhead: list[float] = []
    pos = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    made = 0
    while made < n_results + warm:
        chunk = samples[pos : pos + (128 if pos == 0 else hop)]
        pos += len(chunk)
        s = time.perf_counter_ns()
        drafts = pipe.process(chunk, ("ax", "ay", "az"))
        if drafts:
            entries = box.seal_many(drafts)
            session.notify(entries)
            took = time.perf_counter_ns() - s - engine.last_ns
            made += len(drafts)
            if made > warm:
                overhead.append(took / 1000.0)
        if made == warm and not overhead:
            cpu0, t0 = time.process_time(), time.perf_counter()
        while session.inflight >= 1000 or len(session._fresh) > 2000:  # back-pressure: zero loss
            time.sleep(0.0005)
    try:
        sub.wait(60)
        lost = sub.returncode != 0
    except subprocess.TimeoutExpired:
        sub.kill()
        lost = True
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    infer = sorted(engine.times[warm:])
    session.stop(flush_s=1.0)
    box.close()
    q = statistics.quantiles(overhead, n=100)
    infer_mean_us = statistics.fmean(infer) / 1000.0
    return {
        "overhead_us_p50": round(statistics.median(overhead), 1),
        "overhead_us_p95": round(q[94], 1),
        "inference_us_p50": round(infer[len(infer) // 2] / 1000.0, 1),
        "overhead_to_inference": round(statistics.median(overhead) / (infer[len(infer) // 2] / 1000.0), 2),
        "cpu_us_per_result": round(cpu / n_results * 1e6, 1),
        "publish_cpu_us_per_result": round(
            max(0.0, cpu / n_results * 1e6 - statistics.fmean(overhead) - infer_mean_us), 1
        ),
        "results_per_s": round(n_results / elapsed, 0),
        "results": n_results,
        "lost": lost,
        "one_core": hasattr(os, "sched_setaffinity"),
    }


def agent_process(tmp: Path, port: int, python: str, runtime: str) -> dict[str, Any] | None:
    """RSS and time to first result of a real ``edge-agent run`` process over a pty simulator."""
    if not Path(python).exists():
        return None
    from firmware_bridge.simulator import Simulator

    with Simulator(profile="vibration", hz=400, seed=3) as sim:
        state = tmp / f"state-{runtime}"
        conf = tmp / f"agent-{runtime}.toml"
        conf.write_text(
            f'[device]\nid = "{DEV}"\nfleet = "{FLEET}"\nstate_dir = "{state}"\n'
            f'[mqtt]\nport = {port}\nclient_id = "rss-{runtime}"\n[trust]\ndelivery = "broker-ack"\n'
            f'[[pipeline]]\nname = "vib"\nmodel = "models/vibration_int8.tflite"\n'
            f'source = {{ port = "{sim.path}" }}\nchannels = ["ax", "ay", "az"]\nwindow = 128\nhop = 64\n'
            'postprocess = { kind = "classify", labels = ["normal", "imbalance", "bearing"] }\n'
        )
        sub = count_sub(port, f"edgeseal/v1/{FLEET}/{DEV}/res/vib", 1)
        time.sleep(0.3)
        env = dict(os.environ, EDGESEAL_TFLITE_RUNTIME=runtime)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-m", "edge_agent.cli", "run", "--config", str(conf)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sub.wait(30)
            first = time.perf_counter() - t0
            time.sleep(2.0)
            rss = 0.0
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024.0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            if sub.poll() is None:
                sub.kill()
    return {"rss_mb": round(rss, 1), "first_result_s": round(first, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--results", type=int, default=10000, help="results for the sustained run")
    ap.add_argument("--hop", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeseal-bench-") as d:
        tmp = Path(d)
        mosq = broker(tmp)
        try:
            litert = agent_process(tmp, mosq.port, sys.executable, "ai-edge-litert")
            tfl = agent_process(
                tmp, mosq.port, str(ROOT / ".venv-tflite" / "bin" / "python"), "tflite-runtime"
            )
            figures = in_process(tmp, mosq.port, args.results, args.hop)
        finally:
            mosq.stop()
    figures["rss_mb_litert"] = litert["rss_mb"] if litert else None
    figures["rss_mb_tflite_runtime"] = tfl["rss_mb"] if tfl else None
    figures["first_result_s"] = litert["first_result_s"] if litert else None
    figures["first_result_s_tflite_runtime"] = tfl["first_result_s"] if tfl else None
    if args.json:
        print(json.dumps(figures))
        return
    goals = {
        "overhead_us_p50": ("<=", 150),
        "results_per_s": (">=", 2000),
        "rss_mb_litert": ("<=", 80),
        "rss_mb_tflite_runtime": ("<=", 80),
        "first_result_s": ("<=", 2),
    }
    for k, v in figures.items():
        goal = goals.get(k)
        mark = ""
        if goal and v is not None:
            ok = v <= goal[1] if goal[0] == "<=" else v >= goal[1]
            mark = f"   goal {goal[0]} {goal[1]}: {'met' if ok else 'MISSED'}"
        print(f"{k:32} {v}{mark}")


if __name__ == "__main__":
    main()
