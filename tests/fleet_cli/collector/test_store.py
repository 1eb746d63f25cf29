"""The store without a broker: append-only messages, arbitration, heads over device-dropped seqs."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from edge_protocol.envelope import Verdict
from edge_protocol.state import MAX_STATE_BYTES
from fleet_cli.collector import store as store_mod
from fleet_cli.collector.intake import Intake, RegistryDirectory
from fleet_cli.collector.store import Batch, Candidate, GapRange, Rejected, StateUpdate, Store


def cand(seq: int, msg_id: bytes, prev: bytes, gap: tuple[int, int, int, str] | None = None) -> Candidate:
    return Candidate("d", 0, b"x", 1, seq, 1, "p", 0, msg_id=msg_id, prev=prev, gap=gap)


def ids(n: int) -> list[bytes]:
    return [bytes([i + 1]) * 32 for i in range(n)]


def test_arbitration_heads_and_append_only(tmp_path: Path) -> None:
    i = ids(8)
    with Store(tmp_path / "s.db") as s:
        r = s.commit(Batch(candidates=[cand(0, i[0], bytes(32)), cand(1, i[1], i[0])]))
        assert [h.seq for h in r.heads] == [1]
        # same seq again: duplicate; other content: equivocation; wrong prev: fork
        r = s.commit(Batch(candidates=[cand(1, i[1], i[0]), cand(1, i[7], i[0]), cand(2, i[2], i[7])]))
        assert len(r.duplicates) == 1
        assert [c.verdict for c in r.conflicts] == [Verdict.EQUIVOCATION, Verdict.FORK]
        # seqs 2-3 dropped by the device (gap record at seq 4): the head moves over them
        r = s.commit(Batch(candidates=[cand(4, i[4], i[3], gap=(1, 2, 3, "full"))]))
        assert [(h.seq, h.msg_id) for h in r.heads] == [(4, i[4])]
        # a timeout gap over stored or covered seqs reports nothing
        r = s.commit(Batch(timeout_gaps=[GapRange("d", 1, 1, 5)]))
        assert [(g.first, g.last) for g in r.gaps] == [(5, 5)]
        assert s.restore_heads() == {"d": [(1, 4, i[4])]}
        s.commit(Batch(rejected=[Rejected("t", "d", Verdict.MALFORMED, "x", b"y", 0)]))
        assert s.quarantine_counts() == {"EQUIVOCATION": 1, "FORK": 1, "MALFORMED": 1}
    with sqlite3.connect(tmp_path / "s.db") as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM messages")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE messages SET seq = 9")


def test_state_messages_are_bounded(tmp_path: Path) -> None:
    from edge_protocol.chain import ChainVerifier
    from fleet_cli.registry import Registry

    with Registry(tmp_path / "r.db") as reg:
        reg.add_device("dev-01")
        intake = Intake("f", RegistryDirectory(reg), ChainVerifier())
        topic = "edgeseal/v1/f/dev-01/state"
        ok = intake.judge(topic, b'{"state":"offline","boot":2,"t":5}', 0, 0.0)
        assert ok == StateUpdate("dev-01", "offline", 2, 5, 0)
        big = b'{"state":"online","pad":"' + b"x" * MAX_STATE_BYTES + b'"}'
        r = intake.judge(topic, big, 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.MALFORMED


@pytest.mark.parametrize(
    "doc",
    [
        b'{"state":"online","boot":9223372036854775808,"t":1}',  # 2^63: past SQLite's INTEGER
        b'{"state":"online","boot":1,"t":18446744073709551615}',
        b'{"state":"online","boot":9007199254740992}',  # 2^53
        b'{"state":"online","boot":-1}',
        b'{"state":"online","boot":1.5}',
        b'{"state":"online","boot":NaN}',
        b'{"state":"online","t":Infinity}',
        b'{"state":"online","boot":"1"}',
        b'{"state":"online","boot":' + b"9" * 900 + b"}",
        b'{"state":"ONLINE"}',
        b'{"state":["online"]}',
        b'["online"]',
        b"[" * 1000 + b"]" * 1000,
        b'{"state":"online"\xff}',
        b"",
    ],
)
def test_hostile_state_messages_are_malformed(tmp_path: Path, doc: bytes) -> None:
    """docs/protocol.md §5: boot and t are integers in 0..2^53-1; anything else never reaches a store."""
    from edge_protocol.chain import ChainVerifier
    from fleet_cli.registry import Registry

    with Registry(tmp_path / "r.db") as reg:
        reg.add_device("dev-01")
        intake = Intake("f", RegistryDirectory(reg), ChainVerifier())
        r = intake.judge("edgeseal/v1/f/dev-01/state", doc, 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.MALFORMED


def test_state_of_unknown_or_revoked_devices_is_not_applied(tmp_path: Path) -> None:
    from edge_protocol.chain import ChainVerifier
    from fleet_cli.registry import Registry

    with Registry(tmp_path / "r.db") as reg:
        reg.add_device("dev-02")
        reg.revoke_device("dev-02")
        intake = Intake("f", RegistryDirectory(reg), ChainVerifier())
        doc = b'{"state":"online","boot":1,"t":5}'
        r = intake.judge("edgeseal/v1/f/invented-1/state", doc, 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.UNKNOWN_DEVICE
        r = intake.judge("edgeseal/v1/f/dev-02/state", doc, 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.REVOKED
        r = intake.judge("edgeseal/v1/f/_fleet/hb", b"", 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.TOPIC_MISMATCH


# ---- ranges and integers a hostile device chooses (docs/protocol.md §3 "Integers", §6) ----------

BIG = 2**53 - 1  # the largest seq, boot or t a payload may carry


@pytest.mark.timeout(60)  # the seq-by-seq expansion this replaces took hours for 2^40, then memory
def test_a_timeout_gap_costs_nothing_proportional_to_its_width(tmp_path: Path) -> None:
    i = ids(4)
    with Store(tmp_path / "s.db") as s:
        s.commit(Batch(candidates=[cand(0, i[0], bytes(32)), cand(1, i[1], i[0])]))
        # seqs 10..2^40 dropped by the device itself, reported by a gap record at 2^40 + 1
        s.commit(Batch(candidates=[cand(2**40 + 1, i[2], i[3], gap=(1, 10, 2**40, "full"))]))
        r = s.commit(Batch(timeout_gaps=[GapRange("d", 1, 0, BIG - 1)]))
        assert [(g.first, g.last) for g in r.gaps] == [(2, 9), (2**40 + 2, BIG - 1)]
        assert [(g["first"], g["last"]) for g in s.gaps("d") if g["source"] == "timeout"] == [
            (2, 9),
            (2**40 + 2, BIG - 1),
        ]
        (dev,) = s.devices()
        assert dev["gaps"] == 8 + (BIG - 1 - (2**40 + 2) + 1)
        assert dev["drops"] == 2**40 - 10 + 1


@pytest.mark.timeout(60)
def test_seq_counters_saturate_instead_of_overflowing(tmp_path: Path) -> None:
    """1,100 boots each missing 2^53 - 1 seqs add up past 2^63: the counter stops at its bound."""
    with Store(tmp_path / "s.db") as s:
        s.commit(Batch(candidates=[cand(0, ids(1)[0], bytes(32))]))
        s.commit(Batch(timeout_gaps=[GapRange("d", b, 0, BIG - 1) for b in range(2, 1102)]))
        (dev,) = s.devices()
        assert dev["gaps"] == store_mod.COUNTER_MAX


def test_heartbeats_of_boots_past_2_to_the_31_keep_their_order(tmp_path: Path) -> None:
    def hb(boot: int, seq: int, metrics: str) -> Candidate:
        mid = bytes([seq % 250 + 1]) * 32
        return Candidate("d", 0, b"x", boot, seq, 2, None, 0, msg_id=mid, prev=bytes(32), metrics=metrics)

    with Store(tmp_path / "s.db") as s:
        s.commit(Batch(candidates=[hb(BIG, 5, '{"n":5}')]))
        s.commit(Batch(candidates=[hb(BIG, 4, '{"n":4}')]))  # older: kept out
        assert s.devices()[0]["metrics"] == {"n": 5}
        s.commit(Batch(candidates=[hb(BIG, BIG, '{"n":6}')]))
        assert s.devices()[0]["metrics"] == {"n": 6}


def test_schema_2_store_migrates_its_heartbeat_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        for current in store_mod._SCHEMA:
            stmt = current
            if "CREATE TABLE IF NOT EXISTS devices" in stmt:
                stmt = stmt.replace(
                    ",\n    metrics_boot  INTEGER NOT NULL DEFAULT -1,  -- (boot, seq) of that heartbeat", ""
                )
                stmt = stmt.replace("\n    metrics_seq   INTEGER NOT NULL DEFAULT -1", "")
                assert "metrics_boot" not in stmt
            db.execute(stmt)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO devices (dev, first_seen_ms, last_seen_ms, metrics, metrics_at)"
            " VALUES ('d', 0, 0, ?, ?)",
            ('{"n":7}', 5 * 2**32 + 7),
        )
        db.commit()
    with Store(path) as s:
        assert s.devices()[0]["metrics"] == {"n": 7}
        hb = Candidate(
            "d", 0, b"x", 5, 6, 2, None, 0, msg_id=bytes([9]) * 32, prev=bytes(32), metrics='{"n":6}'
        )
        s.commit(Batch(candidates=[hb]))
        assert s.devices()[0]["metrics"] == {"n": 7}  # (5, 6) is older than the migrated (5, 7)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
        assert db.execute("SELECT metrics_boot, metrics_seq FROM devices").fetchone() == (5, 7)


def test_the_head_crosses_merged_device_spans_in_one_step(tmp_path: Path) -> None:
    i = ids(6)
    with Store(tmp_path / "s.db") as s:
        s.commit(Batch(candidates=[cand(0, i[0], bytes(32))]))
        # two records dropping 1..2^40 and 2^40+1..2^41 (adjacent spans merge), then the message after
        s.commit(Batch(candidates=[cand(2**41 + 2, i[1], i[5], gap=(1, 1, 2**40, "full"))]))
        r = s.commit(Batch(candidates=[cand(2**41 + 3, i[2], i[1], gap=(1, 2**40 + 1, 2**41, "full"))]))
        # over every dropped seq up to 2^41; 2^41 + 1 is still missing (the msg_id: the last stored)
        assert [(h.seq, h.msg_id) for h in r.heads] == [(2**41, i[0])]
        r = s.commit(Batch(candidates=[cand(2**41 + 1, i[5], i[4])]))
        assert [(h.seq, h.msg_id) for h in r.heads] == [(2**41 + 3, i[2])]


def test_one_field_order_from_the_verify_answer_to_the_insert() -> None:
    """Candidate is (dev, t_received, cose) + the verify worker's answer, and its first fields are the
    messages columns in the order the INSERT names them."""
    from fleet_cli.collector.verify_worker import Verified

    assert Candidate._fields[3:] == Verified._fields
    columns = store_mod.INSERT_MESSAGE.split("(")[1].split(")")[0].replace(" ", "").split(",")
    assert tuple(columns) == Candidate._fields[: store_mod.MESSAGE_COLUMNS]


def test_the_store_and_the_chain_verifier_name_the_same_verdict() -> None:
    """A message that both equivocates (its seq is stored with another msg_id) and forks (its prev is not
    the stored seq - 1) is EQUIVOCATION in both, whichever collector of a shared store sees it."""
    from edge_protocol.chain import ChainVerifier, Link

    i = ids(4)
    chain = ChainVerifier()
    for seq, mid, prev in ((0, i[0], bytes(32)), (1, i[1], i[0])):
        assert chain.observe(Link("d", 1, seq, prev, mid), 0.0).verdict is Verdict.ACCEPTED
    both = cand(1, i[2], i[3])  # seq 1 again, another msg_id, and a prev that is not seq 0's
    verdict, _ = store_mod._check(both, {0: (i[0], bytes(32)), 1: (i[1], i[0])})
    assert verdict is chain.observe(Link("d", 1, 1, i[3], i[2]), 0.0).verdict is Verdict.EQUIVOCATION
