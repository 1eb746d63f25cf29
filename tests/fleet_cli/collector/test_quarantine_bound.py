"""The quarantine bound: at most N rows, the oldest rows of the devices holding the most evicted first,
every evicted row counted per verdict (kept + evicted = every rejected message), across restarts and
from a schema 1 store; and a running collector under a flood of rejected messages."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_protocol.envelope import Verdict
from edge_protocol.topics import Channel, device_topic
from fleet_cli.app import main
from fleet_cli.collector import store as store_mod
from fleet_cli.collector.store import (
    Batch,
    QuarantineCount,
    Rejected,
    Store,
    StoreError,
    default_store_path,
    eviction_plan,
)
from fleet_cli.registry import Registry
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import Publisher, add_devices, collector_config, running, unique_fleet

V = Verdict


def rej(dev: str | None, verdict: Verdict = V.MALFORMED, n: int = 0) -> Rejected:
    return Rejected(f"t/{dev}", dev, verdict, "why", f"{dev}-{n}".encode(), n)


def rows(path: Path) -> list[tuple[int, str | None, str]]:
    """(id, dev, verdict) of every quarantine row, read with a plain connection."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT id, dev, verdict FROM quarantine ORDER BY id").fetchall()


def counts(s: Store) -> dict[str, tuple[int, int]]:
    return {v: (c.kept, c.evicted) for v, c in s.quarantine_tally().items()}


# ---- the plan (pure) ----------------------------------------------------------------------------


def greedy(shares: dict[str, int], need: int) -> list[int]:
    """The rule spelled out: one row at a time from whichever device holds the most."""
    left = dict(shares)
    for _ in range(need):
        left[max(left, key=lambda d: left[d])] -= 1
    return sorted(left.values())


@given(st.lists(st.integers(1, 40), max_size=12), st.integers(1, 600))
def test_eviction_plan_levels_the_largest_shares_like_one_row_at_a_time(sizes: list[int], need: int) -> None:
    shares = sorted(((f"d{i}", n) for i, n in enumerate(sizes)), key=lambda x: -x[1])
    total = sum(sizes)
    plan = eviction_plan(iter(shares), need)
    took = dict(plan)
    assert len(took) == len(plan)
    assert all(0 < took[d] <= n for d, n in shares if d in took)
    assert sum(took.values()) == min(need, total)
    left = sorted(n - took.get(d, 0) for d, n in shares)
    assert left == greedy(dict(shares), min(need, total))


def test_eviction_plan_reads_only_what_it_needs() -> None:
    read = 0

    def shares() -> object:
        nonlocal read
        for dev, n in [("flood", 100_000)] + [(f"g{i}", 1) for i in range(100_000)]:
            read += 1
            yield dev, n

    assert eviction_plan(shares(), 500) == [("flood", 500)]  # type: ignore[arg-type]
    assert read == 2
    read = 0
    plan = eviction_plan(((f"g{i}", 1) for i in range(100_000)), 5)
    assert plan == [(f"g{i}", 1) for i in range(5)]


# ---- the store ----------------------------------------------------------------------------------


def test_bound_respected_oldest_evicted_counts_kept_plus_evicted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sent: Counter[str] = Counter()
    verdicts = [V.MALFORMED, V.BAD_SIGNATURE, V.TOO_LARGE]
    with Store(path, quarantine_max=50) as s:
        n = 0
        for size in (30, 15, 40, 7, 100):  # under the bound, at it, over it, by more than the bound
            batch = [rej("d", verdicts[(n + k) % 3], n + k) for k in range(size)]
            n += size
            sent.update(r.verdict.value for r in batch)
            r = s.commit(Batch(rejected=batch))
            assert r.quarantine is not None
            kept = rows(path)
            assert len(kept) == r.quarantine.kept == min(n, 50)
            assert [i for i, _, _ in kept] == list(range(n - len(kept) + 1, n + 1))  # the newest survive
            assert r.quarantine.evicted == n - len(kept)
            assert {v: k + e for v, (k, e) in counts(s).items()} == sent
            assert s.quarantine_counts() == sent
        assert sum(r.quarantine.evicted_now.values()) == 100  # the last batch: 100 in, 100 out
        kept_by = Counter(v for _, _, v in rows(path))
        assert {v: k for v, (k, _) in counts(s).items()} == kept_by
    # nothing quarantined: no figures, no eviction
    with Store(path, quarantine_max=50) as s:
        assert s.commit(Batch()).quarantine is None


def test_flooding_device_evicts_its_own_rows_before_anyone_elses(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, quarantine_max=100) as s:
        s.commit(Batch(rejected=[rej("quiet", V.EQUIVOCATION, k) for k in range(5)]))
        s.commit(Batch(rejected=[rej(None, V.TOPIC_MISMATCH, k) for k in range(3)]))  # no device
        for k in range(20):
            s.commit(Batch(rejected=[rej("loud", V.MALFORMED, 50 * k + j) for j in range(50)]))
        by_dev = Counter(d for _, d, _ in rows(path))
        assert by_dev == {"quiet": 5, None: 3, "loud": 92}
        assert counts(s)["EQUIVOCATION"] == (5, 0)
        assert counts(s)["MALFORMED"] == (92, 908)
        # the flood's oldest rows went
        loud_ids = [i for i, d, _ in rows(path) if d == "loud"]
        assert loud_ids == list(range(1000 + 8 - 91, 1000 + 9))
        # a second flooder levels down with the first: equal shares, then the others' turn
        s.commit(Batch(rejected=[rej("loud2", V.BAD_SIGNATURE, k) for k in range(92)]))
        by_dev = Counter(d for _, d, _ in rows(path))
        assert by_dev == {"quiet": 5, None: 3, "loud": 46, "loud2": 46}


def test_counts_survive_reopen_and_a_lower_bound_evicts_at_the_next_insert(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, quarantine_max=300) as s:
        s.commit(Batch(rejected=[rej(f"d{k % 3}", V.MALFORMED, k) for k in range(400)]))
        before = counts(s)
    assert before == {"MALFORMED": (300, 100)}
    with Store(path, readonly=True) as s:
        assert counts(s) == before
        assert s.quarantine_counts() == {"MALFORMED": 400}
    with Store(path, quarantine_max=10) as s:
        assert counts(s) == before  # opening evicts nothing
        r = s.commit(Batch(rejected=[rej("d0", V.FORK, 1)]))
        assert r.quarantine is not None
        assert (r.quarantine.kept, r.quarantine.evicted) == (10, 391)
        assert counts(s) == {"MALFORMED": (9, 391), "FORK": (1, 0)}
        assert sorted(Counter(d for _, d, _ in rows(path)).values()) == [3, 3, 4]  # levelled


def test_a_delete_by_hand_is_counted_and_rows_are_never_updated(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.commit(Batch(rejected=[rej("d", V.MALFORMED, k) for k in range(5)]))
    with contextlib.closing(sqlite3.connect(path)) as db:
        with db:
            db.execute("DELETE FROM quarantine WHERE id <= 2")
        with pytest.raises(sqlite3.IntegrityError, match="never updated"):
            db.execute("UPDATE quarantine SET verdict = 'FORK'")
    with Store(path, readonly=True) as s:
        assert s.quarantine_tally() == {"MALFORMED": QuarantineCount(3, 2)}


def test_the_bound_is_checked(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="at least 1 row"):
        Store(tmp_path / "s.db", quarantine_max=0)
    assert not (tmp_path / "s.db").exists()


# ---- schema 1 stores ------------------------------------------------------------------------------

_NEW_IN_2 = ("quarantine_tally", "quarantine_share", "quarantine_counted", "quarantine_no_update")


def schema1_store(path: Path) -> None:
    """A store as schema 1 made it: the current schema without what schema 2 added, user_version 1."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        for stmt in store_mod._SCHEMA:
            if not any(name in stmt for name in _NEW_IN_2):
                db.execute(stmt)
        db.execute("PRAGMA user_version = 1")
        db.executemany(
            "INSERT INTO quarantine (t_received, topic, dev, verdict, reason, cose)"
            " VALUES (0, 't', ?, ?, '', x'00')",
            [("a", "MALFORMED")] * 6 + [("b", "FORK")] * 2 + [(None, "TOPIC_MISMATCH")] * 3,
        )
        db.commit()
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert not names & {"quarantine_tally", "quarantine_share"}


def test_migration_from_schema_1_counts_the_rows_already_there(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    schema1_store(path)
    with Store(path, readonly=True) as s:  # a reader before any collector migrated it
        assert counts(s) == {"FORK": (2, 0), "MALFORMED": (6, 0), "TOPIC_MISMATCH": (3, 0)}
    with Store(path, quarantine_max=8) as s:
        assert counts(s) == {"FORK": (2, 0), "MALFORMED": (6, 0), "TOPIC_MISMATCH": (3, 0)}
        assert s.quarantine_by_device() == {"a": 6, "b": 2}
        s.commit(Batch(rejected=[rej("b", V.FORK, 9)]))
        # 12 rows, bound 8: 'a' (6) gives up 3 to level with 'b' (3) and the no-device rows (3),
        # then the fourth as the first among equals
        assert Counter(d for _, d, _ in rows(path)) == {"a": 2, "b": 3, None: 3}
        assert s.quarantine_counts() == {"FORK": 3, "MALFORMED": 6, "TOPIC_MISMATCH": 3}
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 4
        # the migration statements are idempotent: running them all again changes nothing
        before = db.execute("SELECT * FROM quarantine_tally ORDER BY verdict").fetchall()
        for stmt in store_mod._SCHEMA:
            db.execute(stmt)
        db.commit()
        assert db.execute("SELECT * FROM quarantine_tally ORDER BY verdict").fetchall() == before
        share = dict(db.execute("SELECT dev, n FROM quarantine_share").fetchall())
        assert share == {"a": 2, "b": 3, "": 3}
    with Store(path, quarantine_max=8) as s:  # reopening a schema 2 store runs nothing
        assert s.quarantine_counts() == {"FORK": 3, "MALFORMED": 6, "TOPIC_MISMATCH": 3}


# ---- the commands -------------------------------------------------------------------------------


def test_status_json_shows_kept_and_evicted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_cli.home import init_fleet

    home = init_fleet(tmp_path / "home", "qb")
    with Store(default_store_path(home.root), quarantine_max=10) as s:
        s.commit(Batch(rejected=[rej("d", V.MALFORMED, k) for k in range(25)]))
        s.commit(Batch(rejected=[rej("d", V.FORK, 1)]))
    capsys.readouterr()
    assert main(["status", "--home", str(home.root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["quarantine"] == {
        "kept": 10,
        "evicted": 16,
        "by_verdict": {"FORK": {"kept": 1, "evicted": 0}, "MALFORMED": {"kept": 9, "evicted": 16}},
    }
    assert [d["rejected"] for d in doc["devices"]] == [26]  # every rejected message, per device


def test_collect_refuses_a_bound_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_cli.home import init_fleet

    home = init_fleet(tmp_path / "home", "qb")
    assert main(["collect", "--home", str(home.root), "--quarantine-max", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --quarantine-max must be at least 1 row, got 0")
    assert "Traceback" not in err


# ---- a running collector ------------------------------------------------------------------------

BOUND = 200


@pytest.mark.integration
def test_flood_of_rejected_messages_into_a_running_collector(
    mosquitto: Broker,
    registry: Registry,
    pub: Publisher,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 rejected messages with a bound of 200: the table stays at 200 rows, kept + evicted per
    verdict is what was sent, the other device's evidence is all kept, a genuine result is stored."""
    from broker_config.runner import free_port

    caplog.set_level(logging.WARNING, logger="fleet_cli.collector")
    fleet = unique_fleet()
    devs = add_devices(registry, fleet, ["dev-a", "dev-b"])
    a, b = devs["dev-a"], devs["dev-b"]
    store = tmp_path / "store.db"
    port = free_port()
    cfg = collector_config(
        fleet, mosquitto.host, mosquitto.port, store, quarantine_max=BOUND, metrics_port=port
    )
    sent: Counter[str] = Counter()
    with running(cfg, registry) as c:
        b_msgs = [b.birth(), *(b.result() for _ in range(5))]
        pub.send(a.birth(), *b_msgs)
        assert c.wait_idle()
        # dev-b: 20 equivocations of its seq 5 (evidence that must outlive dev-a's flood)
        evidence = []
        for k in range(20):
            b.seq, b.prev = 4, b_msgs[-2].msg_id
            evidence.append(b.result(label=f"forged{k}"))
        pub.send(*evidence)
        sent["EQUIVOCATION"] += 20
        # dev-a's flood: signature bit flips of one result, garbage, and names nobody registered
        base = a.result()
        flood: list[tuple[str, bytes]] = []
        for k in range(300):
            cose = bytearray(base.cose)
            cose[-1 - k // 8] ^= 1 << (k % 8)  # inside the 64-byte signature
            flood.append((base.topic, bytes(cose)))
        sent["BAD_SIGNATURE"] += 300
        flood += [(base.topic, f"garbage {k}".encode()) for k in range(580)]
        sent["MALFORMED"] += 580
        flood += [(device_topic(fleet, f"ghost-{k}", Channel.RESULT, "vib"), base.cose) for k in range(100)]
        sent["UNKNOWN_DEVICE"] += 100
        pub.send(*flood)
        pub.send(base)  # the genuine one, after the flood
        assert c.wait_idle()
        snap = c.snapshot()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    assert sum(sent.values()) == 1000
    assert snap.rejected == sent
    assert snap.error is None
    assert snap.quarantine_evicted == 1000 - BOUND
    kept = rows(store)
    assert len(kept) <= BOUND
    with Store(store, readonly=True) as s:
        assert s.quarantine_counts() == sent  # kept + evicted, per verdict
        tally = s.quarantine_tally()
        assert sum(t.kept for t in tally.values()) == len(kept) == BOUND
        with contextlib.closing(sqlite3.connect(store)) as db:
            stored = {bytes(x) for (x,) in db.execute("SELECT cose FROM messages WHERE dev = 'dev-a'")}
        assert base.cose in stored
    by_dev = Counter(d for _, d, _ in kept)
    assert by_dev["dev-b"] == 20  # all of dev-b's evidence
    assert sum(n for d, n in by_dev.items() if d and d.startswith("ghost-")) == 100
    assert by_dev["dev-a"] == BOUND - 120
    assert "edgeseal_collector_quarantine_size 200.0" in metrics
    assert "edgeseal_collector_quarantine_evicted 800.0" in metrics
    assert "edgeseal_collector_quarantine_max_rows 200.0" in metrics
    warnings = [r for r in caplog.records if "quarantine full" in r.getMessage()]
    assert len(warnings) == 1
