from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.commands import CLOCK_SKEW_MS as SKEW
from edge_agent.config import MIN_OUTBOX_BYTES
from edge_agent.errors import IdentityError
from edge_agent.outbox import EXP_FLOOR_FLAG, MAX_REPLAY_IDS, ZERO_ID, Draft, Outbox
from edge_protocol.envelope import EnvelopeError, open_envelope
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from tests.edge_agent._support import DEV, FLEET

SIGNER = Signer.from_seed(bytes(32))
TOPIC = f"edgeseal/v1/{FLEET}/{DEV}/hb"


def hb(i: int, pad: int = 0) -> Draft:
    return Draft(Kind.HEARTBEAT, {Key.METRICS: {"i": i, "pad": "x" * pad}}, TOPIC)


def open_box(path: Path, boot: int, max_bytes: int = 1 << 20) -> Outbox:
    box = Outbox(path, max_bytes=max_bytes)
    box.start_boot(SIGNER, DEV, FLEET, boot)
    return box


def cached(box: Outbox) -> set[bytes]:
    with box._lock:
        return {bytes(r[0]) for r in box._db.execute("SELECT id FROM commands")}


def test_chain_within_and_across_boots(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite"
    box = open_box(db, 1)
    entries = box.seal_many([hb(i) for i in range(5)])
    opened = [open_envelope(e.cose, FLEET, SIGNER.public_key) for e in entries]
    assert [o.seq for o in opened] == [0, 1, 2, 3, 4]
    assert opened[0].prev == ZERO_ID
    for a, b in itertools.pairwise(opened):
        assert b.prev == a.msg_id
    box.close()
    box = open_box(db, 2)
    assert box.stored_head is not None
    assert box.stored_head.msg_id == opened[-1].msg_id
    (first,) = box.seal_many([hb(9)])
    o = open_envelope(first.cose, FLEET, SIGNER.public_key)
    assert (o.boot, o.seq, o.prev) == (2, 0, opened[-1].msg_id)
    assert box.depth == 6


def test_boot_must_rise_above_head(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 3)
    box.seal_many([hb(0)])
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 20)
    with pytest.raises(IdentityError):
        box.start_boot(SIGNER, DEV, FLEET, 3)


def test_unsealable_draft_writes_nothing(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 1)
    bad = Draft(Kind.HEARTBEAT, {Key.METRICS: {"x": float("nan")}}, TOPIC)
    with pytest.raises(EnvelopeError):
        box.seal_many([hb(0), bad])
    assert box.depth == 0
    assert box.next_seq == 0
    (e,) = box.seal_many([hb(1)])
    assert e.seq == 0


def test_acks_delete_only_what_they_cover(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 1)
    box.seal_many([hb(i) for i in range(10)])
    assert box.ack_upto(1, 3) == 4
    assert box.ack_upto(0, 100) == 0  # another boot
    assert box.ack_one(1, 7) == 1
    assert [e.seq for e in box.pending()] == [4, 5, 6, 8, 9]
    assert [e.seq for e in box.pending((1, 5), 2)] == [6, 8]
    assert box.depth == 5
    assert box.size_bytes == sum(len(e.cose) for e in box.pending())


def covered(gaps: list[dict[str, int]], boot: int) -> set[int]:
    out: set[int] = set()
    for g in gaps:
        if g["boot"] == boot:
            out.update(range(g["from"], g["to"] + 1))
    return out


@settings(max_examples=15, deadline=None)
@given(n=st.integers(50, 400), pad=st.integers(0, 600), boots=st.integers(1, 3))
def test_overflow_every_seq_stored_or_gapped(
    tmp_path_factory: pytest.TempPathFactory, n: int, pad: int, boots: int
) -> None:
    """When full, the oldest go and gap records cover them; gap records dropped pass their coverage on."""
    db = tmp_path_factory.mktemp("ob") / "o.sqlite"
    sealed: list[tuple[int, int]] = []
    for boot in range(1, boots + 1):
        box = open_box(db, boot, MIN_OUTBOX_BYTES)
        for i in range(n):
            sealed += [e.key for e in box.seal_many([hb(i, pad)])]
            assert box.size_bytes <= MIN_OUTBOX_BYTES
        box.close()
    box = Outbox(db, max_bytes=MIN_OUTBOX_BYTES)
    stored = {e.key: e for e in box.pending(None, 10**6)}
    gaps = [
        dict(open_envelope(e.cose, FLEET, SIGNER.public_key).payload[Key.GAP])
        for e in stored.values()
        if e.kind is Kind.GAP
    ]
    for boot, seq in sealed:
        assert (boot, seq) in stored or seq in covered(gaps, boot), (boot, seq)
    if len(sealed) * (pad + 150) > 2 * MIN_OUTBOX_BYTES:
        assert gaps  # it really overflowed


def test_overflow_gap_record_and_floor(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 1, MIN_OUTBOX_BYTES)
    entries = []
    while box.gaps == 0:
        entries += box.seal_many([hb(len(entries), 500)])
    gap_entry = next(e for e in entries if e.kind is Kind.GAP)
    g = open_envelope(gap_entry.cose, FLEET, SIGNER.public_key).payload[Key.GAP]
    assert g["boot"] == 1
    assert g["from"] == 0
    assert g["why"] == "outbox full"
    assert g["n"] == g["to"] - g["from"] + 1 == box.dropped
    assert box.drop_floor == (1, g["to"])
    assert box.size_bytes <= MIN_OUTBOX_BYTES
    assert not box.contains(1, 0)


def test_replay_cache(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 1)
    assert box.remember_command(b"a" * 16, 2000, 1000, skew_ms=SKEW) is True
    assert box.remember_command(b"a" * 16, 2000, 1500, skew_ms=SKEW) is False
    box.close()
    box = open_box(tmp_path / "o.sqlite", 2)  # survives a restart
    assert box.remember_command(b"a" * 16, 2000, 1500, skew_ms=SKEW) is False
    # still acceptable until exp + skew: still remembered
    assert box.remember_command(b"a" * 16, 2000, 2000 + SKEW, skew_ms=SKEW) is False
    assert box.remember_command(b"a" * 16, 9000, 2001 + SKEW, skew_ms=SKEW) is True  # expired ids are pruned


def test_replay_cache_floor(tmp_path: Path) -> None:
    """Pruning raises the floor; at or below it a command is refused, whatever the clock says."""
    box = open_box(tmp_path / "o.sqlite", 1)
    assert box.remember_command(b"a" * 16, 2000, 1000, skew_ms=SKEW) is True
    assert box.remember_command(b"b" * 16, 3000, 1000, skew_ms=SKEW) is True
    assert box.remember_command(b"c" * 16, 60_000, 2001 + SKEW, skew_ms=SKEW) is True  # prunes "a" only
    assert cached(box) == {b"b" * 16, b"c" * 16}
    assert box.get_flag(EXP_FLOOR_FLAG) == "2000"
    for now_ms in (0, 1000, 2001 + SKEW):  # the clock set back, or not
        assert box.remember_command(b"a" * 16, 2000, now_ms, skew_ms=SKEW) is False
    assert box.remember_command(b"d" * 16, 1999, 0, skew_ms=SKEW) is False  # below the floor: never seen
    assert box.remember_command(b"e" * 16, 2001, 0, skew_ms=SKEW) is True  # above it
    box.close()
    box = open_box(tmp_path / "o.sqlite", 2)  # the floor survives a restart
    assert box.remember_command(b"a" * 16, 2000, 0, skew_ms=SKEW) is False
    # a clock far ahead prunes everything; the floor is the highest exp pruned, never a clock reading
    assert box.remember_command(b"f" * 16, 10**12, 10**11, skew_ms=SKEW) is True
    assert cached(box) == {b"f" * 16}
    assert box.get_flag(EXP_FLOOR_FLAG) == "60000"
    # set back: everything pruned stays refused, later commands are not
    assert [box.remember_command(i * 16, 60_000, 0, skew_ms=SKEW) for i in (b"b", b"c", b"e")] == [False] * 3
    assert box.remember_command(b"g" * 16, 60_001, 0, skew_ms=SKEW) is True
    # the floor never moves down
    assert box.remember_command(b"h" * 16, 70_000, 3000 + SKEW, skew_ms=SKEW) is True
    assert box.get_flag(EXP_FLOOR_FLAG) == "60000"


def test_replay_cache_bound(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 1)
    with box._lock:  # fill fast
        box._db.executemany(
            "INSERT INTO commands (id, exp) VALUES (?, ?)",
            [(i.to_bytes(16, "big"), 10**12) for i in range(MAX_REPLAY_IDS)],
        )
    assert box.remember_command(b"z" * 16, 10**12, 0, skew_ms=SKEW) is None


def test_a_replay_costs_the_same_with_a_full_cache(tmp_path: Path) -> None:
    """The work per command does not grow with the cache (counted in SQLite VM steps, not time)."""

    def steps(box: Outbox, command_id: bytes, now_ms: int) -> int:
        n = 0

        def tick() -> int:
            nonlocal n
            n += 1
            return 0

        box._db.set_progress_handler(tick, 1)
        try:
            assert box.remember_command(command_id, 10**12, now_ms, skew_ms=SKEW) is False
        finally:
            box._db.set_progress_handler(None, 1)
        return n

    small = open_box(tmp_path / "small.sqlite", 1)
    assert small.remember_command(b"r" * 16, 10**12, 0, skew_ms=SKEW) is True
    full = open_box(tmp_path / "full.sqlite", 1)
    with full._lock:
        full._db.executemany(
            "INSERT INTO commands (id, exp) VALUES (?, ?)",
            [(i.to_bytes(16, "big"), 10**12 - i) for i in range(MAX_REPLAY_IDS - 1)] + [(b"r" * 16, 10**12)],
        )
    # a clock reading that prunes nothing, in both
    base = steps(small, b"r" * 16, 1000)
    assert steps(full, b"r" * 16, 1000) <= 2 * base


def test_flags(tmp_path: Path) -> None:
    box = open_box(tmp_path / "o.sqlite", 1)
    assert box.get_flag("enrolled") is None
    box.set_flag("enrolled", "1")
    box.set_flag("enrolled", "2")
    assert box.get_flag("enrolled") == "2"
