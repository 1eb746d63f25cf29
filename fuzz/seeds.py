"""Write the seed corpora, ``fuzz/corpus/<target>/``: ``python -m fuzz.seeds``.

Seeds are valid inputs (and a few near misses) that the fuzzer mutates: the envelopes and payloads of
tests/vectors/envelope.json, the wire bytes of tests/vectors/frames.json, exported records built from
the envelope vectors as ``fleet export --format jsonl`` writes them, sample text lines, and valid
agent and fleet configuration files. The result is committed; run this again after the vectors or a
configuration format change, and review the diff.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
from pathlib import Path
from typing import Any

from fuzz.run import CORPUS

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
FLEET = "demo"
# tests/vectors/envelope.json's signer (dev-01) and the kid its envelopes carry.
SIGNER_PUBLIC = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
COLLECTOR_PUBLIC = "0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f00"


def _vectors(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return doc


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


def envelope_seeds() -> dict[str, bytes]:
    doc = _vectors("envelope.json")
    out = {f"valid-{v['name']}.cose": bytes.fromhex(v["cose"]) for v in doc["valid"]}
    out |= {f"payload-{v['name']}.cbor": bytes.fromhex(v["payload_cbor"]) for v in doc["valid"]}
    for i, v in enumerate(doc["negative"]):
        out[f"negative-{i:02d}-{_slug(v['why'])}.cose"] = bytes.fromhex(v["cose"])
    return out


def payload_seeds() -> dict[str, bytes]:
    doc = _vectors("envelope.json")
    out = {f"{v['name']}.cbor": bytes.fromhex(v["payload_cbor"]) for v in doc["valid"]}
    out["cfg.cbor"] = bytes.fromhex(doc["cfg_cbor"])
    return out


def frame_seeds() -> dict[str, bytes]:
    doc = _vectors("frames.json")
    out = {f"single-{_slug(v['name'])}.bin": bytes.fromhex(v["wire"]) for v in doc["single"]}
    out |= {f"stream-{i:02d}.bin": bytes.fromhex(v["wire"]) for i, v in enumerate(doc["streams"])}
    out["all-singles.bin"] = b"".join(bytes.fromhex(v["wire"]) for v in doc["single"])
    return out


def line_seeds() -> dict[str, bytes]:
    return {
        "keyed.txt": b"ax=0.25,ay=-1.5,az=9.81\nay=1,az=2,ax=3\r\n",
        "bare.txt": b"0.25,-1.5,9.81\n1e-3, 2.0 ,3\r\n",
        "mixed-bad.txt": b"boot ok\nax=1,ay=2\nax=1,ay=nan,az=3\n\n1,2,3\nax=1,ay=2,az=3\n",
        "partial.txt": b"ax=1,ay=2,az=3\nax=4,ay=5",
    }


def state_seeds() -> dict[str, bytes]:
    from edge_protocol.state import Presence, encode_state

    return {
        "online.json": encode_state(Presence.ONLINE, 3, 1790000000000),
        "offline.json": encode_state(Presence.OFFLINE, 2, 1790000000500),
        "spaced-extra-member.json": b'{ "t": 17, "state": "offline", "boot": 0, "agent": "0.1.0" }\n',
        "state-only.json": b'{"state":"online"}',
    }


def export_seeds() -> dict[str, bytes]:
    doc = _vectors("envelope.json")
    out: dict[str, bytes] = {}
    for seq, v in enumerate(doc["valid"]):
        payload = {int(k): val for k, val in v["payload"]["imap"]}
        record = {
            "fleet": FLEET,
            "dev": payload.get(1),
            "boot": payload.get(2),
            "seq": payload.get(3),
            "kind": v["name"],
            "pipe": payload.get(7),
            "msg_id": v["msg_id"],
            "t_device": payload.get(5),
            "t_received": 1790000000500 + seq,
            "cose": base64.b64encode(bytes.fromhex(v["cose"])).decode("ascii"),
        }
        out[f"record-{v['name']}.jsonl"] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    first = bytes.fromhex(doc["valid"][1]["cose"])
    out["raw-result.cose"] = first
    out["hex-result.txt"] = binascii.hexlify(first, "\n", 32) + b"\n"
    return out


_AGENT = """\
[device]
id = "dev-01"
fleet = "demo"
state_dir = "state"

[mqtt]
host = "127.0.0.1"
port = 1883
protocol = "auto"
keepalive_s = 30
max_inflight = 256
resend_after_s = 30.0
backoff_min_s = 0.5
backoff_max_s = 30.0
{mqtt_extra}
[enrol]
claim_token_file = "claim.token"

[trust]
operator_key = "{operator}"
collector_keys = ["{collector}"]
delivery = "{delivery}"

[outbox]
max_bytes = 67108864
synchronous = "normal"

[heartbeat]
interval_s = 60

[[pipeline]]
name = "vib"
model = "models/vibration_int8.tflite"
source = {{ port = "/dev/ttyACM0", baud = 115200, protocol = "{protocol}" }}
channels = ["ax", "ay", "az"]
window = 128
hop = 64
scale = [0.5, 0.5, 0.25]
offset = 0.0
postprocess = {postprocess}
"""


def agent_seeds() -> dict[str, bytes]:
    classify = (
        '{ kind = "classify", labels = ["normal", "imbalance", "bearing"], top_k = 2, threshold = 0.5 }'
    )
    tls = 'tls_ca = "ca.crt"\ntls_cert = "dev-01.crt"\ntls_key = "dev-01.key"\nusername = "dev-01"\n'
    tls += 'password_file = "mqtt.pass"\n'
    common = {"operator": SIGNER_PUBLIC, "collector": COLLECTOR_PUBLIC}
    full = _AGENT.format(
        mqtt_extra="", delivery="fleet-ack", protocol="frames", postprocess=classify, **common
    )
    other = _AGENT.format(
        mqtt_extra=tls,
        delivery="broker-ack",
        protocol="lines",
        postprocess='{ kind = "anomaly", threshold = 3.5 }',
        **common,
    )
    other = other.replace('state_dir = "state"', 'state_dir = "~/edgeseal/state"')  # ~ is expanded
    minimal = '[device]\nid = "dev-02"\nfleet = "demo"\n\n[trust]\ndelivery = "broker-ack"\n'
    return {"full.toml": full.encode(), "tls-lines.toml": other.encode(), "minimal.toml": minimal.encode()}


def fleet_seeds() -> dict[str, bytes]:
    from fleet_cli.home import BrokerConfig, FleetConfig, render_config

    default = FleetConfig(fleet=FLEET, created="2026-01-01T00:00:00Z")
    custom = FleetConfig(
        fleet="plant-7",
        created="2026-01-01T00:00:00Z",
        broker=BrokerConfig(
            host="broker.example",
            sans=("broker.example", "10.0.0.2", "::1"),
            tls_port=8884,
            plain_port=0,
            tls_bind="10.0.0.2",
            dir="broker",
            require_client_cert=True,
        ),
        collector_user="coll",
        operator_user="op",
        viewer_user="view",
    )
    return {
        "default.toml": render_config(default).encode(),
        "custom.toml": render_config(custom).encode(),
        "minimal.toml": b'fleet = "demo"\n',
    }


SEEDS = {
    "envelope": envelope_seeds,
    "payload": payload_seeds,
    "frames": frame_seeds,
    "lines": line_seeds,
    "state": state_seeds,
    "export_record": export_seeds,
    "agent_config": agent_seeds,
    "fleet_config": fleet_seeds,
}


def write_all(root: Path = CORPUS) -> dict[str, int]:
    """Replace every ``root/<target>/`` with freshly made seeds; return how many each got."""
    counts = {}
    for name, make in SEEDS.items():
        directory = root / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        files = make()
        for file_name, data in files.items():
            (directory / file_name).write_bytes(data)
        counts[name] = len(files)
    return counts


if __name__ == "__main__":
    for target, n in write_all().items():
        print(f"fuzz/corpus/{target}: {n} seeds")
