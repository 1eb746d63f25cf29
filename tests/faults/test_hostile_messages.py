"""Hostile messages into a running collector: more than 10,000 mutated envelopes (bit flips,
truncations, re-signing with a stranger's key, another fleet's signature, wrong topics, unknown
devices, oversize, garbage, exact replays, equivocations and forks signed with a stolen device key)
published to the broker while the collector runs. Forged accepted 0, collector crashes 0, and every
one is in the quarantine table with the verdict its mutation class calls for (exact replays are
counted as DUPLICATE, not quarantined: the stored copy is byte-identical)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_protocol.envelope import seal
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic
from fleet_cli.collector.service import Collector
from tests.faults._harness import Rig, quarantine_rows, wait_until
from tests.fleet_cli._collect_sim import Msg, Publisher, SimDevice

pytestmark = [pytest.mark.faults, pytest.mark.integration]

GENUINE = 200  # results per genuine device before the attack
MAX_ENVELOPE = 64 * 1024  # docs/protocol.md §2

# class -> (how many, verdicts that are right for it)
PLAN: dict[str, tuple[int, frozenset[str]]] = {
    "bit flip": (3000, frozenset({"BAD_SIGNATURE", "MALFORMED", "UNKNOWN_KEY"})),
    "truncation": (2000, frozenset({"MALFORMED"})),
    "stranger's key": (1000, frozenset({"UNKNOWN_KEY"})),
    "another fleet": (800, frozenset({"BAD_SIGNATURE"})),
    "another device's topic": (400, frozenset({"TOPIC_MISMATCH"})),
    "another channel": (300, frozenset({"TOPIC_MISMATCH"})),
    "another pipe": (300, frozenset({"TOPIC_MISMATCH"})),
    "unknown device": (400, frozenset({"UNKNOWN_DEVICE"})),
    "oversize": (100, frozenset({"TOO_LARGE"})),
    "garbage": (500, frozenset({"MALFORMED"})),
    "equivocation": (500, frozenset({"EQUIVOCATION"})),
    "fork": (500, frozenset({"FORK"})),
    "replay": (500, frozenset({"DUPLICATE"})),
}


def resign(dev: SimDevice, base: Msg, signer: Signer, fleet: str, **changes: object) -> bytes:
    """A result like ``base`` (its boot/seq/prev unless changed), sealed by ``signer`` for ``fleet``."""
    from edge_protocol.envelope import decode_unverified

    payload = dict(decode_unverified(base.cose).payload)
    payload[Key.OUT] = {"label": "forged", "score": 1.0}
    for k, v in changes.items():
        payload[int(getattr(Key, k.upper()))] = v
    return seal(payload, signer, fleet).cose


def test_10000_hostile_envelopes(make_rig: Callable[..., Rig], figure: Callable[[str], None]) -> None:
    rig = make_rig(devices=2)
    rng = random.Random(10_000)
    rig.start_broker()
    collector: Collector = rig.start_collector(reorder_timeout_s=600.0)
    a, b = (SimDevice(rig.fleet, d.name, rig.registry.claim_token(d.name)) for d in rig.devices)
    genuine: list[Msg] = []
    for dev in (a, b):
        genuine.append(dev.birth())
        genuine += [dev.result() for _ in range(GENUINE)]
    pub = Publisher("127.0.0.1", rig.port)
    rig.on_close(pub.close)
    pub.send(*genuine)
    assert wait_until(lambda: collector.snapshot().accepted == len(genuine), 30)
    results = [m for m in genuine if m.kind is Kind.RESULT and m.topic.split("/")[3] == a.dev]
    stored_before = collector.snapshot().accepted
    dups_before = collector.snapshot().duplicates

    attacks: dict[tuple[str, bytes], str] = {}  # (topic, bytes) -> class

    def add(cls: str, topic: str, data: bytes) -> bool:
        if (topic, data) in attacks:
            return False
        attacks[(topic, data)] = cls
        return True

    def fill(cls: str, make: Callable[[int], tuple[str, bytes]]) -> None:
        n, i = PLAN[cls][0], 0
        while sum(1 for c in attacks.values() if c == cls) < n:
            add(cls, *make(i))
            i += 1

    stranger = Signer.generate()
    res_topic = results[0].topic
    fill("bit flip", lambda i: (m := rng.choice(results), flip(m.cose, rng)) and (m.topic, flip(m.cose, rng)))
    fill(
        "truncation", lambda i: (m := rng.choice(results)) and (m.topic, m.cose[: rng.randrange(len(m.cose))])
    )
    fill("stranger's key", lambda i: (res_topic, resign(a, results[0], stranger, rig.fleet, seq=10_000 + i)))
    fill("another fleet", lambda i: (res_topic, resign(a, results[0], a.signer, "elsewhere", seq=10_000 + i)))
    fill(
        "another device's topic",
        lambda i: (
            (device_topic(rig.fleet, b.dev, Channel.RESULT, "vib"), rng.choice(results).cose)
            if i < len(results)
            else (
                device_topic(rig.fleet, b.dev, Channel.RESULT, "vib"),
                resign(a, results[0], a.signer, rig.fleet, seq=20_000 + i),
            )
        ),
    )
    fill(
        "another channel",
        lambda i: (
            device_topic(rig.fleet, a.dev, rng.choice([Channel.HEARTBEAT, Channel.GAP, Channel.REPLY])),
            results[i % len(results)].cose,
        ),
    )
    fill(
        "another pipe",
        lambda i: (device_topic(rig.fleet, a.dev, Channel.RESULT, f"p{i}"), results[i % len(results)].cose),
    )
    fill(
        "unknown device",
        lambda i: (
            device_topic(rig.fleet, f"ghost-{i}", Channel.RESULT, "vib"),
            results[i % len(results)].cose,
        ),
    )
    fill("oversize", lambda i: (res_topic, results[i % len(results)].cose + rng.randbytes(MAX_ENVELOPE)))
    fill("garbage", lambda i: (res_topic, rng.randbytes(rng.randrange(1, 600))))
    fill(
        "equivocation",
        lambda i: (
            res_topic,
            resign(a, results[i % len(results)], a.signer, rig.fleet, out={"label": f"eq{i}"}),
        ),
    )
    last = results[-1]
    fill(
        "fork",
        lambda i: (
            res_topic,
            resign(a, last, a.signer, rig.fleet, seq=(last.seq + 1), prev=rng.randbytes(32)),
        ),
    )
    # exact replays repeat the same bytes, so they are kept apart from the (topic, bytes) map
    replays = [(m.topic, m.cose) for m in (results[i % len(results)] for i in range(PLAN["replay"][0]))]
    assert len(attacks) + len(replays) >= 10_000

    items = list(attacks.items()) + [(r, "replay") for r in replays]
    rng.shuffle(items)
    for k in range(0, len(items), 500):
        pub.send(*((t, data) for (t, data), _ in items[k : k + 500]))
    n_quarantine = len(attacks)
    assert wait_until(lambda: len(quarantine_rows(rig.store)) >= n_quarantine, 120)
    assert collector.wait_idle()
    # the collector still works: a genuine message after the flood is accepted
    pub.send(a.result())
    assert wait_until(lambda: collector.snapshot().accepted == stored_before + 1, 10)
    snap = collector.snapshot()
    assert collector.failed is None

    seen: dict[tuple[str, bytes], list[str]] = {}
    for topic, verdict, cose in quarantine_rows(rig.store):
        seen.setdefault((topic, cose), []).append(verdict)
    wrong: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    verdicts: dict[str, Counter[str]] = {}
    for key, cls in attacks.items():
        got = seen.get(key)
        verdicts.setdefault(cls, Counter())
        if not got:
            missing[cls] += 1
            continue
        verdicts[cls].update(got)
        if len(got) != 1 or got[0] not in PLAN[cls][1]:
            wrong[cls] += 1
    with contextlib.closing(sqlite3.connect(rig.store)) as db:
        stored = {bytes(c) for (c,) in db.execute("SELECT cose FROM messages")}
    forged_accepted = len(stored - {m.cose for m in genuine}) - 1  # minus the liveness result
    replays_quarantined = sum(1 for t, c in replays if (t, c) in seen)
    replays_counted = snap.duplicates - dups_before
    collector.stop()
    per_class = "; ".join(
        f"{cls} {PLAN[cls][0]}: " + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.get(cls, {}).items()))
        for cls in PLAN
        if cls != "replay"
    )
    right = n_quarantine - sum(wrong.values()) - sum(missing.values())
    figure(
        f"{len(attacks) + len(replays)} hostile envelopes into a running collector:"
        f" forged accepted {forged_accepted}, collector crashes 0,"
        f" quarantined with the expected verdict {right}/{n_quarantine},"
        f" replays counted as DUPLICATE {replays_counted}/{PLAN['replay'][0]}; {per_class}"
    )
    assert forged_accepted == 0
    assert not missing, missing
    assert not wrong, (wrong, verdicts)
    assert replays_counted >= PLAN["replay"][0]
    assert replays_quarantined == 0
    assert Path(rig.store).exists()


def flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    bit = rng.randrange(len(out) * 8)
    out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)
