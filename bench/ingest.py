"""Collector ingest figures (docs/benchmarks.md "Collector ingest"), all measured in one run on this machine.

A private Mosquitto (started here, ``max_queued_messages`` large enough) holds a backlog of sealed
results for a persistent session; the consumer is then started and timed until the backlog is
drained, so no publisher competes for the CPU:

* ``collector_rate``: one collector (decode, verify, chain, store, PUBACK after commit, acks), in its
  own process plus its ``verify_workers`` verify processes (``--verify-workers``; 0 = everything in
  the collector's process); ``verify_rate``: single-core PyNaCl verify of the same messages
  (signature only);
  ``collector_vs_verify`` = their ratio (goal >= 0.6);
* ``raw_paho_rate``: a paho subscriber with an empty callback draining the same backlog;
  ``collector_vs_raw_paho`` = collector / raw paho;
* ``two_vs_one``: two collector processes on ``$share/bench/...`` with one store vs one collector
  (goal >= 1.5; the machine has ``cpus`` cores, and Mosquitto runs on them too);
* ``latency_ms_p50/p95``: device timestamp (publish) to the collector's verified republish, which
  happens after the commit, at ``--rate`` results/s for ``--seconds``.

    python bench/ingest.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.signing
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker_config.runner import MosquittoProcess, free_port
from edge_protocol.envelope import decode_unverified, protected_header, seal, sig_structure
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic, verified_topic
from fleet_cli.collector.config import CollectorConfig
from fleet_cli.collector.service import Collector
from fleet_cli.mqtt.settings import MqttVersion
from fleet_cli.registry import Registry

FLEET = "bench"
DEVICES = 10


class Device:
    def __init__(self, name: str) -> None:
        self.name = name
        self.signer = Signer.generate()
        self.seq = -1
        self.prev = bytes(32)

    def msg(self, kind: Kind, extra: dict[int, Any], t: int | None = None) -> tuple[str, bytes]:
        self.seq += 1
        p: dict[int, Any] = {
            Key.V: 1, Key.DEV: self.name, Key.BOOT: 1, Key.SEQ: self.seq, Key.PREV: self.prev,
            Key.T: t if t is not None else 1_790_000_000_000 + self.seq, Key.KIND: int(kind), **extra,
        }  # fmt: skip
        s = seal(p, self.signer, FLEET)
        self.prev = s.msg_id
        if kind is Kind.BIRTH:
            return device_topic(FLEET, self.name, Channel.BIRTH), s.cose
        return device_topic(FLEET, self.name, Channel.RESULT, "vib"), s.cose

    def birth(self) -> tuple[str, bytes]:
        return self.msg(Kind.BIRTH, {Key.KEY: self.signer.public_key})

    def result(self, t: int | None = None) -> tuple[str, bytes]:
        return self.msg(
            Kind.RESULT,
            {
                Key.PIPE: "vib", Key.MODEL: b"\x11" * 32, Key.INPUT: os.urandom(32),
                Key.OUT: {"label": "imbalance", "score": 0.9375, "values": [0.03125, 0.9375, 0.03125]},
                Key.CFG: b"\x33" * 32, Key.LAT: 1234,
            },
            t,
        )  # fmt: skip


def start_broker(work: Path) -> tuple[MosquittoProcess, int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        "max_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
        "log_dest stderr\nlog_type error\n"
    )
    if os.geteuid() == 0:
        for p in (work, *work.parents):
            if p == Path("/"):
                break
            p.chmod(p.stat().st_mode | 0o011)
    proc = MosquittoProcess(conf, port)
    proc.start()
    return proc, port


def publish_all(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}-{time.monotonic_ns()}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, b, qos=1) for t, b in msgs]
    for i in infos:
        i.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def verify_rate(devices: list[Device], msgs: list[tuple[str, bytes]]) -> float:
    """Raw PyNaCl verify (``VerifyKey.verify``) of the same messages' Sig_structures, on one core."""
    verifiers = {d.signer.kid: nacl.signing.VerifyKey(d.signer.public_key) for d in devices}
    opened = [decode_unverified(b) for _, b in msgs]
    items = [
        (verifiers[o.kid], sig_structure(protected_header(o.kid), FLEET, o.payload_bytes), o.signature)
        for o in opened
    ]
    t0 = time.perf_counter()
    for v, data, sig in items:
        v.verify(data, sig)
    return len(items) / (time.perf_counter() - t0)


def raw_paho_rate(port: int, msgs: list[tuple[str, bytes]], protocol: int) -> float:
    cid = f"raw-{time.monotonic_ns()}"
    got = [0]
    done = threading.Event()
    n = len(msgs)

    def on_message(c: object, u: object, m: object) -> None:
        got[0] += 1
        if got[0] >= n:
            done.set()

    def client() -> mqtt.Client:
        kw: dict[str, Any] = {"client_id": cid, "protocol": protocol}
        if protocol == mqtt.MQTTv311:
            kw["clean_session"] = False
        c = mqtt.Client(CallbackAPIVersion.VERSION2, **kw)
        c.on_message = on_message
        return c

    c = client()
    c.connect("127.0.0.1", port, clean_start=False) if protocol == mqtt.MQTTv5 else c.connect(
        "127.0.0.1", port
    )
    c.subscribe(f"edgeseal/v1/{FLEET}/+/res/+", qos=1)
    c.loop(1.0)
    c.disconnect()
    publish_all(port, msgs)
    c = client()
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False) if protocol == mqtt.MQTTv5 else c.connect(
        "127.0.0.1", port
    )
    c.loop_start()
    done.wait(300)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return got[0] / dt


def _collector_main(cfg: CollectorConfig, registry: str, go: Any, stop: Any, ready: Any) -> None:
    with Registry(Path(registry)) as reg:
        c = Collector(cfg, reg, Signer.generate())
        ready.set()
        go.wait()
        c.start()
        stop.wait()
        c.stop()


def stored(path: Path) -> int:
    """Rows ever stored: ``messages.id`` is AUTOINCREMENT (never reused, and nothing deletes here), so
    its maximum is an index lookup. COUNT(*) scanned the table at every 20 ms poll and took CPU from
    the collectors being measured."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return 0


def drain_collectors(
    cfgs: list[CollectorConfig], registry: Path, port: int, msgs: list[tuple[str, bytes]], total: int
) -> float:
    ctx = mp.get_context("spawn")
    # 1. create the persistent sessions (and subscriptions), then stop
    for cfg in cfgs:
        with Registry(registry) as reg:
            c = Collector(cfg, reg, Signer.generate())
            c.start()
            c.stop()
    before = stored(cfgs[0].store_path)
    # 2. the backlog waits at the broker
    publish_all(port, msgs)
    # 3. start the collectors (own processes) and time until everything is stored
    go, stop = ctx.Event(), ctx.Event()
    procs, readies = [], []
    for cfg in cfgs:
        ready = ctx.Event()
        p = ctx.Process(target=_collector_main, args=(cfg, str(registry), go, stop, ready))
        p.start()
        procs.append(p)
        readies.append(ready)
    for r in readies:
        r.wait(60)
    t0 = time.perf_counter()
    go.set()
    while stored(cfgs[0].store_path) - before < total:
        time.sleep(0.02)
        if time.perf_counter() - t0 > 600:
            break
    dt = time.perf_counter() - t0
    stop.set()
    for p in procs:
        p.join(60)
    return (stored(cfgs[0].store_path) - before) / dt


def latency(
    port: int, registry: Path, work: Path, dev: Device, rate: float, seconds: float
) -> tuple[float, float]:
    cfg = CollectorConfig(
        fleet=FLEET, store_path=work / "lat.db", port=port, client_id="lat", reorder_timeout_s=60
    )
    lats: list[float] = []

    def on_message(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        doc = json.loads(m.payload)
        lats.append(time.time() * 1000 - doc["t"])

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lat-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe(verified_topic(FLEET, dev.name, "vib"), qos=0)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lat-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    with Registry(registry) as reg:
        c = Collector(cfg, reg, Signer.generate())
        c.start()
        n = int(rate * seconds)
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            while (d := due - time.perf_counter()) > 0:
                time.sleep(d)
            t, body = dev.result(t=int(time.time() * 1000))
            pub.publish(t, body, qos=1)
        c.wait_idle(30)
        time.sleep(0.5)
        c.stop()
    pub.disconnect()
    pub.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    lats.sort()
    p50 = lats[len(lats) // 2] if lats else float("nan")
    p95 = lats[int(len(lats) * 0.95)] if lats else float("nan")
    return p50, p95


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true", help="10,000 messages, 2 s of latency")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="3.1.1")
    ap.add_argument(
        "--verify-workers",
        type=int,
        default=None,
        help="collector verify processes",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n = 10_000 if a.quick else a.messages
    seconds = 2.0 if a.quick else a.seconds
    work = Path(tempfile.mkdtemp(prefix="edgeseal-bench-"))
    broker, port = start_broker(work)
    try:
        devices = [Device(f"dev-{i:02d}") for i in range(DEVICES)]
        registry = work / "registry.db"
        with Registry(registry) as reg:
            for d in devices:
                reg.add_device(d.name)
                reg.bind_key(d.name, d.signer.public_key)
            reg.add_device("dev-lat")
            lat_dev = Device("dev-lat")
            reg.bind_key("dev-lat", lat_dev.signer.public_key)
        births = [d.birth() for d in devices]
        publish_all(port, births)  # not retained: births just start the chains
        proto = MqttVersion(a.protocol)
        base = CollectorConfig(
            fleet=FLEET, store_path=work / "one.db", port=port, protocol=proto, client_id="one",
            reorder_timeout_s=60, publish_verified=False,
        )  # fmt: skip
        if a.verify_workers is not None:
            base = replace(base, verify_workers=a.verify_workers)

        def backlog(k: int) -> list[tuple[str, bytes]]:
            return [devices[i % DEVICES].result() for i in range(k)]

        # births first (so chains start at seq 0), through the same path
        one_msgs = births + backlog(n)
        v_rate = verify_rate(devices, one_msgs[DEVICES:])
        one = drain_collectors([base], registry, port, one_msgs, len(one_msgs))
        two_msgs = backlog(n)
        shared = replace(base, store_path=work / "one.db", share_group="bench")
        two = drain_collectors(
            [replace(shared, client_id="two-a"), replace(shared, client_id="two-b")],
            registry,
            port,
            two_msgs,
            n,
        )
        paho_proto = mqtt.MQTTv5 if proto is MqttVersion.V5 else mqtt.MQTTv311
        raw = raw_paho_rate(port, backlog(n), paho_proto)
        lat_dev_birth = lat_dev.birth()
        publish_all(port, [lat_dev_birth])
        p50, p95 = latency(port, registry, work, lat_dev, a.rate, seconds)
        out = {
            "messages": n,
            "protocol": a.protocol,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "verify_workers": base.verify_workers,
            "verify_rate": round(v_rate),
            "collector_rate": round(one),
            "two_collectors_rate": round(two),
            "raw_paho_rate": round(raw),
            "collector_vs_verify": round(one / v_rate, 3),
            "two_vs_one": round(two / one, 3),
            "collector_vs_raw_paho": round(one / raw, 3),
            "latency_rate": a.rate,
            "latency_ms_p50": round(p50, 2),
            "latency_ms_p95": round(p95, 2),
        }
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
