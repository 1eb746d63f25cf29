"""fleet_cli.sqlite: the one way the registry and the store open SQLite and migrate their schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fleet_cli import sqlite
from fleet_cli.collector.store import Store, StoreError
from fleet_cli.registry import Registry, RegistryError


def _pragma(db: sqlite3.Connection, name: str) -> object:
    return db.execute(f"PRAGMA {name}").fetchone()[0]


def test_connect_writer_and_reader(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    db = sqlite.connect(path, busy_timeout_s=2.5, synchronous=sqlite.Synchronous.FULL, foreign_keys=True)
    try:
        assert _pragma(db, "journal_mode") == "wal"
        assert _pragma(db, "synchronous") == 2  # FULL
        assert _pragma(db, "busy_timeout") == 2500
        assert _pragma(db, "foreign_keys") == 1
        assert db.isolation_level is None  # transactions are explicit
        db.execute("CREATE TABLE t (x)")
    finally:
        db.close()
    ro = sqlite.connect(path, busy_timeout_s=1.0, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.execute("INSERT INTO t VALUES (1)")
    finally:
        ro.close()
    with pytest.raises(sqlite3.OperationalError):
        sqlite.connect(tmp_path / "missing.sqlite", busy_timeout_s=1.0, readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_migrate_once_in_one_transaction(tmp_path: Path) -> None:
    db = sqlite.connect(tmp_path / "x.sqlite", busy_timeout_s=1.0)
    calls: list[int] = []

    def upgrade(conn: sqlite3.Connection, found: int) -> None:
        calls.append(found)
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")

    def too_new(found: int) -> Exception:
        return RuntimeError(f"schema {found}")

    assert sqlite.migrate(db, 2, upgrade, too_new=too_new) == 0
    assert sqlite.migrate(db, 2, upgrade, too_new=too_new) == 2
    assert calls == [0]
    assert _pragma(db, "user_version") == 2
    with pytest.raises(RuntimeError, match="schema 2"):
        sqlite.migrate(db, 1, upgrade, too_new=too_new)

    def broken(conn: sqlite3.Connection, found: int) -> None:
        conn.execute("CREATE TABLE u (x)")
        raise sqlite3.OperationalError("disk full")

    with pytest.raises(sqlite3.OperationalError, match="disk full"):
        sqlite.migrate(db, 3, broken, too_new=too_new)
    assert _pragma(db, "user_version") == 2  # rolled back: neither the table nor the version
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchone() is None
    db.close()


def test_registry_and_store_refuse_a_newer_schema(tmp_path: Path) -> None:
    for path in (tmp_path / "registry.sqlite", tmp_path / "store.sqlite"):
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA user_version = 99")
    with pytest.raises(RegistryError, match="schema version 99") as reg_err:
        Registry(tmp_path / "registry.sqlite")
    assert reg_err.value.hint == "upgrade edgeseal"
    with pytest.raises(StoreError, match="store schema 99") as store_err:
        Store(tmp_path / "store.sqlite")
    assert store_err.value.hint == "upgrade edgeseal"


def test_registry_and_store_open_with_their_durability(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.sqlite") as reg:
        assert _pragma(reg._db, "synchronous") == 2  # FULL: a binding survives a power loss
        assert _pragma(reg._db, "foreign_keys") == 1
    with Store(tmp_path / "store.sqlite") as store:
        assert _pragma(store._db, "synchronous") == 2  # FULL: an acked message survives a power cut
        assert _pragma(store._db, "journal_mode") == "wal"
