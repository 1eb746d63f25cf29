"""Shared test helpers for edge_agent: a fake engine, an in-memory sample source, config text, a collector."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from edge_agent.inference import Inference, TensorInfo
from edge_protocol.envelope import Opened, open_envelope, seal
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic
from firmware_bridge.samples import Sample

FLEET = "demo"
DEV = "dev-01"
COLLECTOR = Signer.from_seed(bytes(range(32)))
OPERATOR = Signer.from_seed(bytes(range(1, 33)))


def sample(i: int, n: int = 3) -> Sample:
    values = tuple(float(i % 7) + 0.25 * c for c in range(n))
    raw = struct.pack("<I", i) + struct.pack(f"<{n}f", *values)
    return Sample(i * 2500, values, raw)


class FakeEngine:
    """A deterministic 'model': mean of each channel as three scores."""

    def __init__(self, channels: int = 3, window: int = 8) -> None:
        self._in = TensorInfo("x", (1, window, channels), "float32", 0.0, 0)
        self._hash = blake3.blake3(b"fake model").digest()
        self.outputs = (TensorInfo("y", (1, 3), "float32", 0.0, 0),)
        self.calls = 0

    @property
    def model_hash(self) -> bytes:
        return self._hash

    @property
    def input(self) -> TensorInfo:
        return self._in

    def infer(self, rows: Sequence[Sequence[float]]) -> Inference:
        self.calls += 1
        flat = [float(v) for row in rows for v in row]
        data = struct.pack(f"<{len(flat)}f", *flat)
        n = len(rows)
        means = [sum(r[c] for r in rows) / n for c in range(len(rows[0]))][:3]
        total = sum(abs(m) for m in means) or 1.0
        return Inference(data, (tuple(abs(m) / total for m in means),), 10)


@dataclass
class ListSource:
    """An in-memory SampleSource: hands out queued samples, then sleeps for the timeout."""

    samples: list[Sample] = field(default_factory=list)
    chans: tuple[str, ...] | None = ("ax", "ay", "az")
    closed: bool = False
    batch: int = 16
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def channels(self) -> tuple[str, ...] | None:
        return self.chans

    def feed(self, samples: Sequence[Sample]) -> None:
        with self.lock:
            self.samples.extend(samples)

    def read_samples(self, timeout_s: float) -> list[Sample]:
        with self.lock:
            out, self.samples = self.samples[: self.batch], self.samples[self.batch :]
        if not out:
            time.sleep(min(timeout_s, 0.01))
        return out

    def stats(self) -> dict[str, int]:
        return {"samples": 0, "reconnects": 0}

    def close(self) -> None:
        self.closed = True


def config_text(
    state_dir: Path,
    port: int,
    *,
    model: str = "model.tflite",
    delivery: str = "fleet-ack",
    window: int = 8,
    hop: int = 4,
    extra: str = "",
    pipeline_extra: str = "",
    source_port: str = "/dev/null",
    protocol: str = "frames",
    heartbeat: float = 0,
    fleet: str = FLEET,
    mqtt_extra: str = "",
) -> str:
    return f"""
[device]
id = "{DEV}"
fleet = "{fleet}"
state_dir = "{state_dir}"

[mqtt]
host = "127.0.0.1"
port = {port}
resend_after_s = 2.0
backoff_min_s = 0.05
backoff_max_s = 0.5
{mqtt_extra}

[trust]
operator_key = "{OPERATOR.public_key.hex()}"
collector_keys = ["{COLLECTOR.public_key.hex()}"]
delivery = "{delivery}"

[heartbeat]
interval_s = {heartbeat}
{extra}

[[pipeline]]
name = "vib"
model = "{model}"
source = {{ port = "{source_port}", baud = 115200, protocol = "{protocol}" }}
channels = ["ax", "ay", "az"]
window = {window}
hop = {hop}
postprocess = {{ kind = "classify", labels = ["normal", "imbalance", "bearing"], top_k = 2 }}
{pipeline_extra}
"""


def ack_cose(boot: int, seq: int, dev: str = DEV, signer: Signer = COLLECTOR, fleet: str = FLEET) -> bytes:
    payload = {
        Key.V: 1,
        Key.DEV: dev,
        Key.BOOT: boot,
        Key.SEQ: seq,
        Key.T: int(time.time() * 1000),
        Key.KIND: int(Kind.ACK),
    }
    return seal(payload, signer, fleet).cose


def command_cose(
    name: str,
    cid: bytes,
    *,
    args: dict[str, Any] | None = None,
    exp_ms: int | None = None,
    dev: str = DEV,
    signer: Signer = OPERATOR,
    fleet: str = FLEET,
) -> bytes:
    now = int(time.time() * 1000)
    payload: dict[int, object] = {
        Key.V: 1,
        Key.DEV: dev,
        Key.T: now,
        Key.KIND: int(Kind.COMMAND),
        Key.CMD: name,
        Key.ID: cid,
        Key.EXP: exp_ms if exp_ms is not None else now + 60_000,
    }
    if args is not None:
        payload[Key.ARGS] = args
    return seal(payload, signer, fleet).cose


class Collector:
    """The test's collector: subscribes to one device, verifies everything, acks contiguous seqs."""

    def __init__(
        self, host: str, port: int, device_key: bytes | None = None, *, ack: bool = True, fleet: str = FLEET
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.device_key = device_key
        self.ack = ack
        self.fleet = fleet
        self.messages: dict[tuple[int, int], Opened] = {}
        self.by_id: dict[bytes, Opened] = {}
        self.duplicates = 0
        self.states: list[bytes] = []
        self.births_retained: list[bytes] = []
        self.errors: list[str] = []
        self.gaps: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-collector-{id(self)}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(f"edgeseal/v1/{fleet}/{DEV}/#", qos=1)
        self.ready = threading.Event()
        self._client.on_subscribe = lambda *_a: self.ready.set()
        self._client.connect(host, port, 30)
        self._client.loop_start()
        if not self.ready.wait(5):
            self.close()
            raise RuntimeError("test collector could not subscribe")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)

    def send_command(self, cose: bytes) -> None:
        self.publish(device_topic(self.fleet, DEV, Channel.CMD), cose)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        topic = str(msg.topic)
        if topic.endswith("/state"):
            with self.cond:
                self.states.append(bytes(msg.payload))
                self.cond.notify_all()
            return
        if topic.endswith("/ack") or topic.endswith("/cmd"):
            return
        try:
            if self.device_key is None:
                from edge_protocol.envelope import decode_unverified

                opened = decode_unverified(bytes(msg.payload))
                if opened.kind is Kind.BIRTH:
                    self.device_key = bytes(opened.payload[Key.KEY])
            opened = open_envelope(bytes(msg.payload), self.fleet, self.device_key)
        except Exception as e:  # recorded, the test asserts none
            self.errors.append(f"{topic}: {e}")
            return
        with self.cond:
            key = (opened.boot or 0, opened.seq or 0)
            if key in self.messages:
                self.duplicates += 1
                if self.messages[key].msg_id != opened.msg_id:
                    self.errors.append(f"equivocation at {key}")
            self.messages[key] = opened
            self.by_id[opened.msg_id] = opened
            if opened.kind is Kind.GAP:
                self.gaps.append(dict(opened.payload[Key.GAP]))
            self.cond.notify_all()
        if self.ack:
            self._ack(key[0])

    def contiguous(self, boot: int) -> int:
        """Highest seq s of ``boot`` such that every seq <= s was received or is covered by a gap."""
        covered = set()
        for g in self.gaps:
            if g["boot"] == boot:
                covered.update(range(g["from"], g["to"] + 1))
        s = -1
        while (boot, s + 1) in self.messages or (s + 1) in covered:
            s += 1
        return s

    def _ack(self, boot: int) -> None:
        with self.lock:
            s = self.contiguous(boot)
        if s >= 0:
            self.publish(device_topic(self.fleet, DEV, Channel.ACK), ack_cose(boot, s, fleet=self.fleet))

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))  # also polls predicates on agent state
        return True

    def of_kind(self, kind: Kind) -> list[Opened]:
        with self.lock:
            return [m for k, m in sorted(self.messages.items()) if m.kind is kind]


_fleet_counter = [0]


def unique_fleet() -> str:
    """A fleet id of its own per test: retained births and states of other tests stay out of view."""
    _fleet_counter[0] += 1
    return f"t{int(time.time() * 1000) % 10**9}-{_fleet_counter[0]}"
