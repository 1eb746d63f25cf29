"""Baselines for the edgeseal figures: what the underlying parts do alone, on this machine, now.

* ``mosquitto_sub_rate``: a raw ``mosquitto_sub`` (C, QoS 1, persistent session) draining a backlog of
  N sealed results from Mosquitto — the ceiling any MQTT consumer here can reach (the collector's
  ``collector_rate`` is compared to it);
* ``paho_sub_rate``: the same backlog drained by paho with an empty callback (QoS 1);
* ``paho_pub_qos1_rate``: paho publishing N results QoS 1 and waiting for every PUBACK (the agent's
  ``results_per_s`` is compared to it);
* ``pynacl_sign_us`` / ``pynacl_verify_us``: PyNaCl Ed25519 over a 348-byte message, one core;
* ``sqlite_insert_rate``: rows shaped like the collector's ``messages`` (≈350-byte blob, UNIQUE
  (dev, boot, seq)) inserted with ``executemany`` in 500-row transactions, WAL, synchronous=NORMAL.

    python bench/baselines.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt
from ingest import DEVICES, Device, publish_all, start_broker  # type: ignore[import-not-found]
from paho.mqtt.enums import CallbackAPIVersion

from broker_config.runner import mosquitto_binary


def _mosquitto_sub() -> str:
    return shutil.which("mosquitto_sub") or str(
        Path(mosquitto_binary()).parent.parent / "bin" / "mosquitto_sub"
    )


def backlog(n: int) -> list[tuple[str, bytes]]:
    devices = [Device(f"dev-{i:02d}") for i in range(DEVICES)]
    return [devices[i % DEVICES].result() for i in range(n)]


def mosquitto_sub_rate(port: int, msgs: list[tuple[str, bytes]]) -> float:
    """Register a persistent QoS 1 session, queue the backlog for it, then time a drain."""
    sub = _mosquitto_sub()
    base = [sub, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c", "-i", "bench-sub", "-t", "edgeseal/#"]
    subprocess.run([*base, "-W", "1"], capture_output=True, check=False)  # registers the session
    publish_all(port, msgs)
    t0 = time.perf_counter()
    subprocess.run([*base, "-C", str(len(msgs)), "-W", "120"], stdout=subprocess.DEVNULL, check=True)
    return len(msgs) / (time.perf_counter() - t0)


def paho_sub_rate(port: int, msgs: list[tuple[str, bytes]]) -> float:
    def client() -> mqtt.Client:
        return mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-paho", clean_session=False, protocol=mqtt.MQTTv311
        )

    c = client()
    c.connect("127.0.0.1", port)
    c.subscribe("edgeseal/#", qos=1)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()
    publish_all(port, msgs)
    got = [0]
    done = threading.Event()

    def on_message(_c: object, _u: object, _m: object) -> None:
        got[0] += 1
        if got[0] >= len(msgs):
            done.set()

    c = client()
    c.on_message = on_message
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(120)
    rate = got[0] / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def paho_pub_rate(port: int, msgs: list[tuple[str, bytes]]) -> float:
    t0 = time.perf_counter()
    publish_all(port, msgs)
    return len(msgs) / (time.perf_counter() - t0)


def pynacl_us(ops: int) -> tuple[float, float]:
    """PyNaCl itself (no edgeseal wrapper), keys made once as docs/field-notes.md "Crypto" advises."""
    from nacl.signing import SigningKey

    s = SigningKey.generate()
    v = s.verify_key
    msg = os.urandom(348)
    t0 = time.perf_counter()
    for _ in range(ops):
        sig = s.sign(msg).signature
    sign = (time.perf_counter() - t0) / ops * 1e6
    t0 = time.perf_counter()
    for _ in range(ops):
        v.verify(msg, sig)
    verify = (time.perf_counter() - t0) / ops * 1e6
    return sign, verify


def sqlite_rate(work: Path, n: int) -> float:
    db = sqlite3.connect(work / "base.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE m (id INTEGER PRIMARY KEY AUTOINCREMENT, dev TEXT, boot INTEGER, seq INTEGER,"
        " kind INTEGER, t INTEGER, msg_id BLOB, cose BLOB, UNIQUE (dev, boot, seq))"
    )
    rows = [(f"dev-{i % 10:02d}", 1, i, 1, i, os.urandom(32), os.urandom(350)) for i in range(n)]
    t0 = time.perf_counter()
    for k in range(0, n, 500):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO m (dev, boot, seq, kind, t, msg_id, cose) VALUES (?,?,?,?,?,?,?)", rows[k : k + 500]
        )
        db.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    db.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true", help="10,000 messages")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.messages
    with tempfile.TemporaryDirectory(prefix="edgeseal-base-") as d:
        work = Path(d)
        msgs = backlog(n)
        proc, port = start_broker(work)
        try:
            out = {
                "messages": n,
                "mosquitto_sub_rate": round(mosquitto_sub_rate(port, msgs)),
                "paho_sub_rate": round(paho_sub_rate(port, msgs)),
                "paho_pub_qos1_rate": round(paho_pub_rate(port, msgs)),
            }
        finally:
            proc.stop()
        sign, verify = pynacl_us(5000 if args.quick else 20000)
        out["pynacl_sign_us"] = round(sign, 2)
        out["pynacl_verify_us"] = round(verify, 2)
        out["sqlite_insert_rate"] = round(sqlite_rate(work, n))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
