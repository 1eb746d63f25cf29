"""The store without a broker: append-only messages, arbitration, heads over device-dropped seqs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_protocol.envelope import Verdict
from fleet_cli.collector import MAX_STATE_BYTES, Intake, RegistryDirectory, StateUpdate
from fleet_cli.store import Batch, Candidate, GapRange, Rejected, Store


def cand(seq: int, msg_id: bytes, prev: bytes, gap: tuple[int, int, int, str] | None = None) -> Candidate:
    return Candidate("d", 1, seq, 1, "p", 0, 0, None, None, None, None, None, msg_id, prev, b"x", gap=gap)


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
        intake = Intake("f", RegistryDirectory(reg), ChainVerifier())
        topic = "edgeseal/v1/f/dev-01/state"
        ok = intake.judge(topic, b'{"state":"offline","boot":2,"t":5}', 0, 0.0)
        assert ok == StateUpdate("dev-01", "offline", 2, 5, 0)
        big = b'{"state":"online","pad":"' + b"x" * MAX_STATE_BYTES + b'"}'
        r = intake.judge(topic, big, 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.MALFORMED
        r = intake.judge("edgeseal/v1/f/_fleet/hb", b"", 0, 0.0)
        assert isinstance(r, Rejected)
        assert r.verdict is Verdict.TOPIC_MISMATCH
