"""Opening one of fleet_cli's SQLite databases (the registry, the store) the one way both need.

One connection per object, shared by its threads (``check_same_thread=False``, the owner serialises
with a lock), in autocommit mode (``isolation_level=None``: transactions are explicit ``BEGIN
IMMEDIATE``, which takes the write lock at the start and so never deadlocks on an upgrade). A writer
uses WAL (readers never block the writer, and the collector and a CLI reader run side by side) and
the ``synchronous`` level its durability promise needs; a reader opens the file read-only and never
creates it. Every connection waits ``busy_timeout`` for another process's transaction.

The schema version is SQLite's ``user_version``. :func:`migrate` brings an older file up to date in
one transaction, or refuses a file written by a newer edgeseal; it never lowers the version.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable
from pathlib import Path


class Synchronous(str, enum.Enum):
    """``PRAGMA synchronous`` (https://sqlite.org/pragma.html#pragma_synchronous) in WAL mode."""

    NORMAL = "NORMAL"  # survives a killed process; a power loss may cost the last commits
    FULL = "FULL"  # survives a power loss too; every commit waits for the disk


def connect(
    path: Path,
    *,
    busy_timeout_s: float,
    synchronous: Synchronous = Synchronous.NORMAL,
    readonly: bool = False,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """The connection of the module docstring. Raises :class:`sqlite3.Error`; the caller names the file."""
    if readonly:
        db = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
    else:
        db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if not readonly:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {synchronous.value}")
        if foreign_keys:
            db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        db.close()
        raise
    return db


def migrate(
    db: sqlite3.Connection,
    version: int,
    upgrade: Callable[[sqlite3.Connection, int], None],
    *,
    too_new: Callable[[int], Exception],
) -> int:
    """Bring the schema to ``version``: ``upgrade(db, found)`` runs in one ``BEGIN IMMEDIATE``
    transaction with ``user_version`` set to ``version`` in the same commit, only when the file is
    older. A newer file raises ``too_new(found)``. Returns the version found."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > version:
        raise too_new(found)
    if found < version:
        db.execute("BEGIN IMMEDIATE")
        try:
            upgrade(db, found)
            db.execute(f"PRAGMA user_version = {int(version)}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return found
