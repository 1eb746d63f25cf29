"""Write tests/vectors/rules.json: a vector for each rule of docs/protocol.md that bytes decide and
that tests/vectors/envelope.json does not already fix (docs/protocol.md §8 describes the file).

Deterministic: fixed seeds and payloads, and Ed25519 signatures are deterministic, so running it
again gives the same file byte for byte. ``--check`` compares instead of writing (exit 1 on a
difference). The Ed25519 vectors whose keys or ``R`` are of small order or not canonical are built so
that the plain equation ``[S]B = R + [k]A`` holds when points are decoded leniently (``y`` reduced
mod p); this script checks that, so each of them tests a refusal and not merely a wrong signature.

    .venv/bin/python tools/make_rule_vectors.py [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import cbor2

from edge_protocol.envelope import protected_header, seal, sig_structure
from edge_protocol.keys import Signer, key_id, message_id

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "rules.json"
FLEET = "demo"
# The seeds of tests/vectors/envelope.json (dev-01, the collector, the operator), and one more device.
SEEDS = {
    "dev-01": bytes(range(0x00, 0x20)),
    "collector": bytes(range(0x20, 0x40)),
    "operator": bytes(range(0x40, 0x60)),
    "dev-02": bytes(range(0x60, 0x80)),
}
SIGNERS = {name: Signer.from_seed(seed) for name, seed in SEEDS.items()}
T0 = 1_790_000_000_000
INT_MAX = 2**53 - 1
Z32 = bytes(32)
H32 = bytes.fromhex("ab" * 32)
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493


# ---- the vectors' JSON notation (tests/vectors_util.decode_value reads it back) -------------------


def notation(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"hex": x.hex()}
    if isinstance(x, dict) and x and all(type(k) is int for k in x):
        return {"imap": [[k, notation(v)] for k, v in x.items()]}
    if isinstance(x, dict):
        return {"map": {k: notation(v) for k, v in x.items()}}
    if isinstance(x, list):
        return [notation(i) for i in x]
    return x


# ---- payloads -----------------------------------------------------------------------------------


def result(out: dict[str, Any], dev: str = "dev-01", seq: int = 1, cfg: Any = H32) -> dict[int, Any]:
    return {0: 1, 1: dev, 2: 1, 3: seq, 4: H32, 5: T0 + 100, 6: 1, 7: "vib", 8: H32, 9: H32, 10: out, 11: cfg}


def birth(key: bytes, dev: str = "dev-01") -> dict[int, Any]:
    return {0: 1, 1: dev, 2: 2, 3: 0, 4: H32, 5: T0, 6: 0, 13: key}


def gap(boot: int, seq: int, gap_map: dict[str, Any], prev: bytes = H32) -> dict[int, Any]:
    return {0: 1, 1: "dev-01", 2: boot, 3: seq, 4: prev, 5: T0 + 300, 6: 3, 17: gap_map}


# prev of envelope.json's gap vector (seq 3 of boot 1): its payload, re-sealed here, gives its bytes.
ENVELOPE_GAP_PREV = bytes.fromhex("66b01b7bc980ab62d477ed87dfca9f4e2798cc0eca3798c438eb877f2de0f455")


def ack(dev: str = "dev-01", boot: int = 1, seq: int = 4, t: int = T0 + 500) -> dict[int, Any]:
    return {0: 1, 1: dev, 2: boot, 3: seq, 5: t, 6: 5}


def command(cmd: str) -> dict[int, Any]:
    return {0: 1, 1: "dev-01", 5: T0 + 600, 6: 6, 18: cmd, 20: bytes([7] * 16), 21: T0 + 60_600}


def nested(levels: int, leaf: Any) -> Any:
    """``leaf`` inside ``levels - 1`` lists: as out["x"] (level 2), the leaf sits at level ``levels + 1``."""
    v = leaf
    for _ in range(levels - 1):
        v = [v]
    return v


# ---- envelopes ----------------------------------------------------------------------------------


def bstr_head(n: int) -> bytes:
    if n < 24:
        return bytes([0x40 | n])
    if n < 0x100:
        return bytes([0x58, n])
    return bytes([0x59]) + n.to_bytes(2, "big")


def envelope(
    payload_bytes: bytes, signer: Signer, payload_head: bytes | None = None, tail: bytes = b""
) -> bytes:
    """A COSE_Sign1 over exactly ``payload_bytes`` (canonical or not), validly signed; ``payload_head``
    replaces the payload's byte-string header in the envelope and ``tail`` follows the payload (the
    signature covers neither: the Sig_structure holds the payload with its shortest header)."""
    protected = protected_header(signer.kid)
    sig = signer.sign(sig_structure(protected, FLEET, payload_bytes))
    head = payload_head if payload_head is not None else bstr_head(len(payload_bytes))
    return b"\xd2\x84\x55" + protected + b"\xa0" + head + payload_bytes + tail + b"\x58\x40" + sig


def raw_envelope(public_key: bytes, payload_bytes: bytes, signature: bytes) -> bytes:
    protected = protected_header(key_id(public_key))
    return (
        b"\xd2\x84\x55" + protected + b"\xa0" + bstr_head(len(payload_bytes)) + payload_bytes + b"\x58\x40"
    ) + signature


def canonical(payload: dict[int, Any]) -> bytes:
    return bytes(cbor2.dumps(payload, canonical=True))


def swap_text(payload_bytes: bytes, marker: str, raw: bytes) -> bytes:
    """Replace the text string ``marker`` with a text string whose bytes are ``raw`` (same length)."""
    old = cbor2.dumps(marker)
    assert len(raw) == len(marker.encode())
    assert payload_bytes.count(old) == 1
    return payload_bytes.replace(old, old[: len(old) - len(raw)] + raw)


# ---- lenient Ed25519 arithmetic: proves the crafted signatures satisfy the plain equation ----------

_D = -121665 * pow(121666, P - 2, P) % P
_I = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]


def _add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    pa, pb = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    pc, pd = t1 * 2 * _D * t2 % P, z1 * 2 * z2 % P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k: int, a: Point) -> Point:
    r: Point = (0, 1, 1, 0)
    while k:
        if k & 1:
            r = _add(r, a)
        a, k = _add(a, a), k >> 1
    return r


def _lenient_decode(s: bytes) -> Point:
    n = int.from_bytes(s, "little")
    y, sign = (n & ((1 << 255) - 1)) % P, n >> 255  # y reduced mod p: the lenient part
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * _I % P
    assert (x * x - x2) % P == 0, "not a point"
    if x & 1 != sign:
        x = -x % P
    return (x, y, 1, x * y % P)


def _same(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


_B = _lenient_decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def _k(r: bytes, a: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + msg).digest(), "little") % L


def lenient_verifies(public_key: bytes, msg: bytes, sig: bytes) -> bool:
    s = int.from_bytes(sig[32:], "little")
    rhs = _add(_lenient_decode(sig[:32]), _mul(_k(sig[:32], public_key, msg), _lenient_decode(public_key)))
    return s < L and _same(_mul(s, _B), rhs)


def _secret_scalar(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] = (h[31] & 127) | 64
    return int.from_bytes(h, "little")


IDENTITY = (1).to_bytes(32, "little")
IDENTITY_P_PLUS_1 = (P + 1).to_bytes(32, "little")  # the identity point, y not reduced mod p


def crafted(public_key: bytes, r: bytes, s: int, payload_bytes: bytes) -> bytes:
    """An envelope with signature ``r || s`` by ``public_key``, checked to satisfy the lenient equation."""
    msg = sig_structure(protected_header(key_id(public_key)), FLEET, payload_bytes)
    sig = r + s.to_bytes(32, "little")
    assert lenient_verifies(public_key, msg, sig)
    return raw_envelope(public_key, payload_bytes, sig)


def forged_with_r(r: bytes, payload_bytes: bytes) -> bytes:
    """dev-01's key, R a small-order point: S = k·a makes [S]B = [k]A, and R adds the identity."""
    pk = SIGNERS["dev-01"].public_key
    msg = sig_structure(protected_header(SIGNERS["dev-01"].kid), FLEET, payload_bytes)
    s = _k(r, pk, msg) * _secret_scalar(SEEDS["dev-01"]) % L
    return crafted(pk, r, s, payload_bytes)


# ---- the vectors --------------------------------------------------------------------------------

PK = {name: s.public_key.hex() for name, s in SIGNERS.items()}


def valid(name: str, rule: str, payload: dict[int, Any], signer: str = "dev-01") -> dict[str, Any]:
    s = SIGNERS[signer]
    sealed = seal(payload, s, FLEET)
    assert sealed.payload_bytes == canonical(payload)
    return {
        "name": name,
        "rule": rule,
        "signer": signer,
        "signer_seed": s.seed.hex(),
        "signer_public": s.public_key.hex(),
        "payload": notation(payload),
        "payload_cbor": sealed.payload_bytes.hex(),
        "cose": sealed.cose.hex(),
        "msg_id": sealed.msg_id.hex(),
    }


def negative(
    name: str, rule: str, cose: bytes, verdict: str, trusted: str | bytes = "dev-01"
) -> dict[str, Any]:
    key = trusted.hex() if isinstance(trusted, bytes) else PK[trusted]
    return {"name": name, "rule": rule, "cose": cose.hex(), "public_key": key, "verdict": verdict}


def at_collector(
    name: str, rule: str, cose: bytes, verdict: str, channel: str, pipe: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "rule": rule,
        "dev": "dev-01",
        "channel": channel,
        "pipe": pipe,
        "bound_key": PK["dev-01"],
        "cose": cose.hex(),
        "verdict": verdict,
    }


def build() -> dict[str, Any]:
    ints = "docs/protocol.md §3 Integers"
    depth = "docs/protocol.md §3 Nesting"
    texts = "docs/protocol.md §3 Text, null and other simple values"
    heads = "docs/protocol.md §2 (the payload's length header)"
    sig = "docs/protocol.md §1 Ed25519 strictness"
    roles = "docs/protocol.md §4 Which key verifies which kind"
    gaps = "docs/protocol.md §3 The nested maps (gap)"
    key63 = "é" * 31 + "a"  # 63 bytes, 32 characters
    key64 = "é" * 32  # 64 bytes, 32 characters
    wide_out = {"label": "ok", "values": [0.25] * 60}

    dev = SIGNERS["dev-01"]
    valids = [
        valid("integers at the edges of the range", ints, result({"max": INT_MAX, "min": -INT_MAX})),
        valid("unsigned keys at 2^53-1", ints, ack(boot=INT_MAX, seq=INT_MAX, t=INT_MAX), "collector"),
        valid("a value at level 16", depth, result({"x": nested(15, 1)})),
        valid("an empty list at level 16", depth, result({"x": nested(15, [])})),
        valid("text key of 63 bytes (32 characters)", texts, result({key63: 1})),
        valid("null in out", texts, result({"label": None, "score": None})),
        valid("cmd of 63 characters (126 bytes)", texts, command("é" * 63), "operator"),
        valid(
            "payload length in one byte (13-byte payload)",
            heads,
            ack(dev="a", boot=0, seq=0, t=0),
            "collector",
        ),
        valid("payload length in 58 nn", heads, ack(), "collector"),
        valid("payload length in 59 nnnn", heads, result(wide_out)),
        valid(
            "gap record of an earlier boot",
            gaps,
            gap(2, 1, {"boot": 1, "from": 5, "to": 9, "n": 5, "why": "x"}),
        ),
    ]

    ack_bytes = canonical(ack())
    small_ack = canonical(ack(dev="a", boot=0, seq=0, t=0))
    marker = canonical(result({"label": "ZZZZ"}))
    negatives = [
        negative("integer 2^53 in out", ints, envelope(canonical(result({"n": 2**53})), dev), "MALFORMED"),
        negative(
            "integer -2^53 in out", ints, envelope(canonical(result({"n": -(2**53)})), dev), "MALFORMED"
        ),
        negative("seq 2^53", ints, envelope(canonical(result({}, seq=2**53)), dev), "MALFORMED"),
        negative(
            "integer 2^64-1 in out", ints, envelope(canonical(result({"n": 2**64 - 1})), dev), "MALFORMED"
        ),
        negative(
            "a value at level 17", depth, envelope(canonical(result({"x": nested(16, 1)})), dev), "MALFORMED"
        ),
        negative(
            "an empty map at level 17",
            depth,
            envelope(canonical(result({"x": nested(16, {})})), dev),
            "MALFORMED",
        ),
        negative(
            "text key of 64 bytes (32 characters)",
            texts,
            envelope(canonical(result({key64: 1})), dev),
            "MALFORMED",
        ),
        negative(
            "invalid UTF-8 in a text value",
            texts,
            envelope(swap_text(marker, "ZZZZ", b"\xff\xfeAB"), dev),
            "MALFORMED",
        ),
        negative(
            "a UTF-8 encoded surrogate (ed a0 80) in a text value",
            texts,
            envelope(swap_text(marker, "ZZZZ", b"\xed\xa0\x80A"), dev),
            "MALFORMED",
        ),
        negative(
            "undefined (f7) in out",
            texts,
            envelope(canonical(result({"x": cbor2.undefined})), dev),
            "MALFORMED",
        ),
        negative(
            "simple value 16 (f0) in out",
            texts,
            envelope(canonical(result({"x": cbor2.CBORSimpleValue(16)})), dev),
            "MALFORMED",
        ),
        negative(
            "null as a top-level value (cfg)",
            texts,
            envelope(canonical(result({}, cfg=None)), dev),
            "MALFORMED",
        ),
        negative(
            "cmd of 64 characters",
            texts,
            envelope(canonical(command("é" * 64)), SIGNERS["operator"]),
            "MALFORMED",
            "operator",
        ),
        negative(
            "empty cmd", texts, envelope(canonical(command("")), SIGNERS["operator"]), "MALFORMED", "operator"
        ),
        negative(
            "payload length 27 in 59 001b",
            heads,
            envelope(ack_bytes, SIGNERS["collector"], b"\x59\x00\x1b"),
            "MALFORMED",
            "collector",
        ),
        negative(
            "payload length 27 in 5a 0000001b",
            heads,
            envelope(ack_bytes, SIGNERS["collector"], b"\x5a\x00\x00\x00\x1b"),
            "MALFORMED",
            "collector",
        ),
        negative(
            "payload length 27 in 5b 000000000000001b",
            heads,
            envelope(ack_bytes, SIGNERS["collector"], b"\x5b" + (27).to_bytes(8, "big")),
            "MALFORMED",
            "collector",
        ),
        negative(
            "payload length 13 in 58 0d",
            heads,
            envelope(small_ack, SIGNERS["collector"], b"\x58\x0d"),
            "MALFORMED",
            "collector",
        ),
        negative(
            "payload as an indefinite-length byte string",
            heads,
            envelope(ack_bytes, SIGNERS["collector"], b"\x5f\x58\x1b", b"\xff"),
            "MALFORMED",
            "collector",
        ),
        negative(
            "small-order public key (the identity), R the identity, S 0",
            sig,
            crafted(IDENTITY, IDENTITY, 0, ack_bytes),
            "BAD_SIGNATURE",
            IDENTITY,
        ),
        negative(
            "non-canonical public key (the identity as y = p+1)",
            sig,
            crafted(IDENTITY_P_PLUS_1, IDENTITY, 0, ack_bytes),
            "BAD_SIGNATURE",
            IDENTITY_P_PLUS_1,
        ),
        negative(
            "small-order R (the identity), S = k·a",
            sig,
            forged_with_r(IDENTITY, canonical(result({}))),
            "BAD_SIGNATURE",
        ),
        negative(
            "non-canonical R (the identity as y = p+1), S = k·a",
            sig,
            forged_with_r(IDENTITY_P_PLUS_1, canonical(result({}))),
            "BAD_SIGNATURE",
        ),
        negative(
            "ack signed by the device key (verifier trusts the collector key)",
            roles,
            envelope(ack_bytes, dev),
            "UNKNOWN_KEY",
            "collector",
        ),
        negative(
            "command signed by the collector key (verifier trusts the operator key)",
            roles,
            envelope(canonical(command("ping")), SIGNERS["collector"]),
            "UNKNOWN_KEY",
            "operator",
        ),
        negative(
            "result signed by the collector key",
            roles,
            envelope(canonical(result({})), SIGNERS["collector"]),
            "UNKNOWN_KEY",
        ),
        negative(
            "result of dev-01 signed by dev-02's key",
            roles,
            envelope(canonical(result({})), SIGNERS["dev-02"]),
            "UNKNOWN_KEY",
        ),
        negative(
            "birth carrying dev-01's key, signed by dev-02's key",
            roles,
            envelope(canonical(birth(dev.public_key)), SIGNERS["dev-02"]),
            "UNKNOWN_KEY",
        ),
    ]

    collector = [
        at_collector(
            "gap record at seq 3 reporting seqs 10..19 (envelope.json's gap)",
            gaps,
            envelope(
                canonical(
                    gap(1, 3, {"from": 10, "to": 19, "n": 10, "why": "outbox-full"}, ENVELOPE_GAP_PREV)
                ),
                dev,
            ),
            "MALFORMED",
            "gap",
        ),
        at_collector(
            "gap record covering seqs below its own",
            gaps,
            envelope(canonical(gap(1, 30, {"from": 10, "to": 19, "n": 10, "why": "outbox-full"})), dev),
            "ACCEPTED",
            "gap",
        ),
        at_collector(
            "gap record of an earlier boot",
            gaps,
            envelope(canonical(gap(2, 1, {"boot": 1, "from": 5, "to": 9, "n": 5, "why": "x"})), dev),
            "ACCEPTED",
            "gap",
        ),
        at_collector(
            "gap record naming a later boot",
            gaps,
            envelope(canonical(gap(2, 1, {"boot": 3, "from": 5, "to": 9})), dev),
            "MALFORMED",
            "gap",
        ),
        at_collector(
            "gap record with from > to",
            gaps,
            envelope(canonical(gap(1, 30, {"from": 9, "to": 5})), dev),
            "MALFORMED",
            "gap",
        ),
        at_collector(
            "gap record with from as a float",
            gaps,
            envelope(canonical(gap(1, 30, {"from": 5.0, "to": 9})), dev),
            "MALFORMED",
            "gap",
        ),
        at_collector(
            "gap record without to",
            gaps,
            envelope(canonical(gap(1, 30, {"from": 5})), dev),
            "MALFORMED",
            "gap",
        ),
        at_collector(
            "result of dev-02 on dev-01's topic",
            roles,
            envelope(canonical(result({}, dev="dev-02")), SIGNERS["dev-02"]),
            "TOPIC_MISMATCH",
            "res",
            "vib",
        ),
        at_collector(
            "result of dev-01 signed by dev-02's key",
            roles,
            envelope(canonical(result({})), SIGNERS["dev-02"]),
            "UNKNOWN_KEY",
            "res",
            "vib",
        ),
        at_collector(
            "birth of dev-01 carrying and signed by another key",
            roles,
            envelope(canonical(birth(SIGNERS["dev-02"].public_key)), SIGNERS["dev-02"]),
            "CLAIM_INVALID",
            "birth",
        ),
        at_collector(
            "birth of dev-01 carrying its bound key, signed by it",
            roles,
            envelope(canonical(birth(dev.public_key)), dev),
            "ACCEPTED",
            "birth",
        ),
        at_collector(
            "result on the hb channel", roles, envelope(canonical(result({})), dev), "TOPIC_MISMATCH", "hb"
        ),
        at_collector(
            "result of pipe vib on the topic of pipe other",
            roles,
            envelope(canonical(result({})), dev),
            "TOPIC_MISMATCH",
            "res",
            "other",
        ),
    ]

    return {
        "about": (
            "edgeseal rule vectors (docs/protocol.md §8), written by tools/make_rule_vectors.py. "
            "Byte values are lowercase hex; 'payload' uses the notation of envelope.json. Every 'valid' "
            "entry seals to exactly 'cose' with 'signer_seed' and opens to 'payload'. Every 'negative' "
            "entry is rejected with 'verdict' by a verifier that trusts exactly 'public_key' for it. "
            "Every 'collector' entry is a message on the topic of 'dev' (channel, pipe) of a device "
            "whose bound key is 'bound_key': 'verdict' is what the collector decides before the chain "
            "(ACCEPTED: it passes on to the chain)."
        ),
        "fleet": FLEET,
        "keys": {name: {"seed": s.seed.hex(), "public": s.public_key.hex()} for name, s in SIGNERS.items()},
        "valid": valids,
        "negative": negatives,
        "collector": collector,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = ap.parse_args()
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    assert message_id(b"") != Z32  # the derivations are the real ones
    if args.check:
        same = OUT.read_text(encoding="utf-8") == text
        print(f"{OUT}: {'up to date' if same else 'differs from what this script writes'}")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
