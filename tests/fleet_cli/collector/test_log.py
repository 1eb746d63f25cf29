"""The fleet log in the store (collector/log.py): appends in the batch's transaction, the stored-hash
layout, proofs from O(log n) reads, several writers, the migration of a schema 3 store, the audit."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from edge_protocol.tlog import (
    NoteSigner,
    check_record,
    check_tree,
    leaf_hash,
    merkle_tree_hash,
    open_checkpoint,
    tree_hash,
)
from edge_protocol.topics import log_checkpoint_topic
from fleet_cli.collector import log
from fleet_cli.collector import store as store_mod
from fleet_cli.collector.store import Batch, Candidate, Store, StoreError
from fleet_cli.home import log_origin
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import (
    Listener,
    Publisher,
    add_devices,
    collector_config,
    running,
    unique_fleet,
)


def cand(dev: str, seq: int, prev: bytes) -> Candidate:
    msg_id = f"{dev}:{seq}".encode().ljust(32, b"\0")
    cose = f"cose of {dev} seq {seq}".encode()
    return Candidate(dev, 0, cose, 1, seq, 1, "p", 0, msg_id=msg_id, prev=prev)


def chain(dev: str, n: int, start: int = 0) -> list[Candidate]:
    out = []
    prev = bytes(32) if start == 0 else f"{dev}:{start - 1}".encode().ljust(32, b"\0")
    for seq in range(start, start + n):
        c = cand(dev, seq, prev)
        out.append(c)
        prev = c.msg_id
    return out


def all_leaves(s: Store) -> list[bytes]:
    return [
        leaf_hash(bytes(r[0]))
        for r in s.iter_rows(
            "SELECT m.cose FROM log_leaves l JOIN messages m ON m.id = l.message ORDER BY l.idx"
        )
    ]


def test_batches_build_the_rfc6962_tree_and_proofs_check(tmp_path: Path) -> None:
    signer = NoteSigner.generate(log_origin("f1"))
    msgs = chain("d", 37)
    with Store(tmp_path / "s.db") as s:
        sizes = []
        for lo, hi in [(0, 1), (1, 2), (2, 9), (9, 10), (10, 37)]:
            s.commit(Batch(candidates=msgs[lo:hi]))
            sizes.append(s.log_size())
            assert s.sign_checkpoint(signer) is not None
        assert sizes == [1, 2, 9, 10, 37]
        assert s.sign_checkpoint(signer) is None  # nothing new
        leaves = [leaf_hash(c.cose) for c in msgs]
        assert all_leaves(s) == leaves
        assert tree_hash(37, s.read_hashes) == merkle_tree_hash(leaves)
        cp = s.checkpoint()
        assert open_checkpoint(cp.note, signer.verifier()).root_hash == merkle_tree_hash(leaves)
        for m in (0, 8, 36):
            idx, cose, cp9, proof = s.prove(msgs[m].msg_id, 9 if m < 9 else None)
            check_record(proof, cp9.size, cp9.root, idx, leaf_hash(cose))
        old, new, proof = s.prove_consistency(2, 37)
        check_tree(proof, new.size, new.root, old.size, old.root)
        assert s.audit_log(signer.verifier()) == []
        with pytest.raises(log.LogError, match="no checkpoint of tree size 5"):
            s.prove(msgs[0].msg_id, 5)
        with pytest.raises(log.LogError, match="no stored message"):
            s.prove(bytes(32))
        with pytest.raises(log.LogError, match="not in the checkpoint"):
            s.prove(msgs[20].msg_id, 9)


def test_two_stores_on_one_file_append_without_gaps(tmp_path: Path) -> None:
    a_msgs, b_msgs = chain("a", 20), chain("b", 20)
    with Store(tmp_path / "s.db") as a, Store(tmp_path / "s.db") as b:
        for k in range(0, 20, 3):
            a.commit(Batch(candidates=a_msgs[k : k + 3]))
            b.commit(Batch(candidates=b_msgs[k : k + 3]))
            b.commit(Batch(candidates=a_msgs[k : k + 3]))  # duplicates: not appended again
        rows = list(a.iter_rows("SELECT idx, message FROM log_leaves ORDER BY idx"))
        assert [r[0] for r in rows] == list(range(40))
        assert len({r[1] for r in rows}) == 40
        ids = [r[0] for r in a.iter_rows("SELECT id FROM messages ORDER BY id")]
        assert [r[1] for r in rows] == ids  # commit order
        assert tree_hash(40, b.read_hashes) == merkle_tree_hash(all_leaves(a))
        assert a.audit_log(None) == []


def test_a_schema_3_store_gets_its_messages_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    monkeypatch.setattr(log, "_CHUNK", 7)  # several chunks: the migration streams
    with contextlib.closing(sqlite3.connect(path)) as db:
        for stmt in store_mod._SCHEMA:
            db.execute(stmt)
        db.executemany(store_mod.INSERT_MESSAGE, [c[: store_mod.MESSAGE_COLUMNS] for c in chain("d", 23)])
        db.execute("PRAGMA user_version = 3")
        db.commit()
    with Store(path) as s:
        assert s.log_size() == 23
        s.commit(Batch(candidates=chain("d", 2, start=23)))
        assert s.log_size() == 25
        assert tree_hash(25, s.read_hashes) == merkle_tree_hash([leaf_hash(c.cose) for c in chain("d", 25)])
        assert s.audit_log(None) == []
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 4


def test_audit_finds_a_rewritten_message_and_a_changed_hash(tmp_path: Path) -> None:
    signer = NoteSigner.generate(log_origin("f1"))
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.commit(Batch(candidates=chain("d", 12)))
        s.sign_checkpoint(signer)
        assert s.audit_log(signer.verifier()) == []
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP TRIGGER messages_no_update")
        db.execute("UPDATE messages SET cose = ? WHERE seq = 5", (b"cose of d seq 5!",))
        db.commit()
    with Store(path, readonly=True) as s:
        problems = s.audit_log(signer.verifier())
        assert problems
        assert "leaf 5" in problems[0]
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE messages SET cose = ? WHERE seq = 5", (b"cose of d seq 5",))
        db.execute("UPDATE log_hashes SET hash = zeroblob(32) WHERE idx = 3")
        db.commit()
    with Store(path, readonly=True) as s:
        problems = s.audit_log(signer.verifier())
        assert problems
        assert "stored hash 3" in problems[0]
    other = NoteSigner.generate(log_origin("f1"))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE log_hashes SET hash = ? WHERE idx = 3", (leaf_hash(b"cose of d seq 2"),))
        db.commit()
    with Store(path, readonly=True) as s:
        assert s.audit_log(signer.verifier()) == []
        problems = s.audit_log(other.verifier())
        assert problems
        assert "checkpoint of size 12" in problems[0]


def test_the_log_key_is_created_once_mode_0600(tmp_path: Path) -> None:
    with pytest.raises(log.LogError, match="no log key"):
        log.load_log_signer(tmp_path, "f1")
    s1 = log.load_log_signer(tmp_path, "f1", create=True)
    assert (tmp_path / "log.key").stat().st_mode & 0o777 == 0o600
    s2 = log.load_log_signer(tmp_path, "f1", create=True)
    assert s1.skey() == s2.skey()
    assert s1.name == "edgeseal/f1"
    with pytest.raises(log.LogError, match="not this fleet's origin"):
        log.load_log_signer(tmp_path, "f2")


@pytest.mark.integration
def test_a_running_collector_signs_stores_and_publishes_checkpoints(
    mosquitto: Broker, registry: Registry, pub: Publisher, tmp_path: Path
) -> None:
    fleet = unique_fleet()
    d = add_devices(registry, fleet, ["dev-01"])["dev-01"]
    signer = NoteSigner.generate(log_origin(fleet))
    store = tmp_path / "store.db"
    cfg = collector_config(fleet, mosquitto.host, mosquitto.port, store)
    with running(cfg, registry, log_signer=signer, checkpoint_interval_s=0.2) as c:
        msgs = [d.birth(), *(d.result() for _ in range(5))]
        pub.send(*msgs)
        assert c.wait_idle()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with Store(store, readonly=True) as s:
                if s.checkpoints() and s.checkpoint().size == 6:
                    break
            time.sleep(0.05)
    # retained: a subscriber that comes after the collector stopped still gets it
    late = Listener(mosquitto.host, mosquitto.port, log_checkpoint_topic(fleet))
    try:
        got = late.wait_for(1)
        assert got[0].retain
        cp = open_checkpoint(got[0].payload, signer.verifier())
        assert cp.size == 6
        assert cp.origin == f"edgeseal/{fleet}"
    finally:
        late.close()
    with Store(store, readonly=True) as s:
        assert s.checkpoint().note == got[0].payload.decode()
        assert sorted(all_leaves(s)) == sorted(leaf_hash(m.cose) for m in msgs)
        assert cp.root_hash == merkle_tree_hash(all_leaves(s))
        assert s.audit_log(signer.verifier()) == []


def test_reading_the_log_of_a_store_not_migrated_yet_says_what_to_do(tmp_path: Path) -> None:
    """A reader (fleet log ...) of a schema 3 store whose collector has not restarted: one error with a
    hint, not SQLite's bare "no such table"."""
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        for stmt in store_mod._SCHEMA:
            if "log_" not in stmt:
                db.execute(stmt)
        db.execute("PRAGMA user_version = 3")
        db.commit()
    with Store(path, readonly=True) as s, pytest.raises(StoreError, match="no fleet log yet") as e:
        s.log_size()
    assert "fleet collect" in (e.value.hint or "")
