"""The fleet log in the store (docs/log.md): an RFC 6962 Merkle tree over every stored message's exact
signed bytes (``messages.cose``), in ``messages.id`` order, kept in the store's own transactions.

Tables (schema 4):

* ``log_leaves`` — ``idx`` (leaf index, 0-based, no gaps) ↔ ``message`` (``messages.id``).
* ``log_hashes`` — ``idx`` (stored-hash number, :func:`edge_protocol.tlog.stored_hash_index`) → the
  32-byte hash: Go's sumdb/tlog layout, so a tree hash or a proof reads O(log n) rows by number.
* ``log_checkpoints`` — the signed checkpoints: ``size``, ``root``, ``note`` (signed note text), ``t_ms``.

The tree size is ``MAX(log_leaves.idx) + 1``. Leaves are appended by :func:`append_new` inside the
transaction that inserts the messages (``BEGIN IMMEDIATE``: one writer at a time, so several
collectors sharing a store append with no gap and no duplicate index). The pure hashing is
:mod:`edge_protocol.tlog`; this module is its SQLite side, plus the log key and the audit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_protocol.errors import TlogError
from edge_protocol.tlog import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    leaf_hash,
    node_hash,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    stored_hash_index,
    stored_hashes_for_record,
    tree_hash,
)
from fleet_cli.errors import FleetError
from fleet_cli.home import LOG_KEY_NAME, log_origin, write_log_key

# The collector signs a new checkpoint at most this often while the tree grows.
CHECKPOINT_INTERVAL_S = 5.0
# How many messages the migration (or a backfill) hashes per round trip: memory stays flat.
_CHUNK = 1000

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS log_leaves (
    idx         INTEGER PRIMARY KEY,            -- leaf index, 0-based, no gaps
    message     INTEGER NOT NULL UNIQUE          -- messages.id
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS log_hashes (
    idx         INTEGER PRIMARY KEY,            -- stored-hash number (Go sumdb/tlog layout)
    hash        BLOB NOT NULL
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS log_checkpoints (
    size        INTEGER PRIMARY KEY,
    root        BLOB NOT NULL,
    note        TEXT NOT NULL,                  -- the signed note (checkpoint body + signature)
    t_ms        INTEGER NOT NULL
) STRICT""",
)


class LogError(FleetError):
    """The fleet log cannot answer (unknown message, no such checkpoint, a store that disagrees)."""


# -- the log key --------------------------------------------------------------------------------


def load_log_signer(home_root: Path, fleet: str, *, create: bool = False) -> NoteSigner:
    """The log's signing key from ``<home>/log.key`` (Go's ``PRIVATE+KEY+...`` string, mode 0600);
    created when missing if ``create``."""
    path = Path(home_root) / LOG_KEY_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not create:
            raise LogError(
                f"no log key at {path}",
                hint="run `fleet log key --create` (or start `fleet collect`, which creates it)",
            ) from None
        signer = NoteSigner.generate(log_origin(fleet))
        write_log_key(path, signer)
        return signer
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"cannot read the log key {path}: {e}") from e
    if path.stat().st_mode & 0o077:
        raise LogError(f"log key {path} is readable by others", hint=f"chmod 600 {path}")
    try:
        signer = NoteSigner.parse(text)
    except TlogError as e:
        raise LogError(f"log key {path}: {e}") from e
    if signer.name != log_origin(fleet):
        raise LogError(
            f"log key {path} is named {signer.name!r}, not this fleet's origin {log_origin(fleet)!r}"
        )
    return signer


# -- appending ------------------------------------------------------------------------------------


def tree_size(db: sqlite3.Connection) -> int:
    (top,) = db.execute("SELECT MAX(idx) FROM log_leaves").fetchone()
    return 0 if top is None else int(top) + 1


def db_reader(db: sqlite3.Connection) -> Callable[[Sequence[int]], list[bytes]]:
    """A :class:`~edge_protocol.tlog.HashReader` over ``log_hashes`` (one query per call)."""

    def read(indexes: Sequence[int]) -> list[bytes]:
        wanted = list(indexes)
        marks = ",".join("?" * len(wanted))
        got = dict(db.execute(f"SELECT idx, hash FROM log_hashes WHERE idx IN ({marks})", wanted))  # noqa: S608
        missing = [i for i in wanted if i not in got]
        if missing:
            raise LogError(f"the store's log has no stored hash {missing[0]}: the log tables are damaged")
        return [bytes(got[i]) for i in wanted]

    return read


def append(db: sqlite3.Connection, leaves: Sequence[tuple[int, bytes]]) -> int:
    """Append ``(messages.id, cose)`` leaves (in that order) to the tree; the caller holds the write
    transaction. Two ``executemany`` per call; the hashes a leaf completes read their left siblings
    from this call's new hashes or, at most one query per leaf, from the table. Returns the new size."""
    n = tree_size(db)
    if not leaves:
        return n
    fresh: dict[int, bytes] = {}
    stored = db_reader(db)

    def read(indexes: Sequence[int]) -> list[bytes]:
        old = [i for i in indexes if i not in fresh]
        have = dict(zip(old, stored(old), strict=True)) if old else {}
        return [fresh[i] if i in fresh else have[i] for i in indexes]

    rows = []
    for mid, cose in leaves:
        start = stored_hash_index(0, n)
        for k, h in enumerate(stored_hashes_for_record(n, leaf_hash(bytes(cose)), read)):
            fresh[start + k] = h
        rows.append((n, mid))
        n += 1
    db.executemany("INSERT INTO log_leaves (idx, message) VALUES (?, ?)", rows)
    db.executemany("INSERT INTO log_hashes (idx, hash) VALUES (?, ?)", sorted(fresh.items()))
    return n


def append_new(db: sqlite3.Connection) -> int:
    """Append every message not in the log yet, in ``messages.id`` order, streamed in chunks (the
    migration of a store written before the log, and the catch-up of any batch). Returns the size."""
    (last,) = db.execute(
        "SELECT message FROM log_leaves WHERE idx = (SELECT MAX(idx) FROM log_leaves)"
    ).fetchone() or (0,)
    size = tree_size(db)
    while True:
        chunk = db.execute(
            "SELECT id, cose FROM messages WHERE id > ? ORDER BY id LIMIT ?", (last, _CHUNK)
        ).fetchall()
        if not chunk:
            return size
        size = append(db, chunk)
        last = chunk[-1][0]


# -- checkpoints ----------------------------------------------------------------------------------


def latest_checkpoint_size(db: sqlite3.Connection) -> int | None:
    (size,) = db.execute("SELECT MAX(size) FROM log_checkpoints").fetchone()
    return None if size is None else int(size)


def sign_new(db: sqlite3.Connection, signer: NoteSigner, now_ms: int) -> str | None:
    """Sign and store a checkpoint of the current tree, if it grew since the latest one (the caller holds
    the write transaction). Returns the signed note, or None when there was nothing new."""
    size = tree_size(db)
    latest = latest_checkpoint_size(db)
    if size == 0 or (latest is not None and latest >= size):
        return None
    root = tree_hash(size, db_reader(db))
    note = sign_checkpoint(Checkpoint(signer.name, size, root), signer)
    db.execute(
        "INSERT INTO log_checkpoints (size, root, note, t_ms) VALUES (?,?,?,?)", (size, root, note, now_ms)
    )
    return note


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    t_ms: int


def read_checkpoint(db: sqlite3.Connection, size: int | None = None) -> StoredCheckpoint:
    """The stored checkpoint of ``size``, or the latest one."""
    if size is None:
        row = db.execute(
            "SELECT size, root, note, t_ms FROM log_checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise LogError(
                "the store has no checkpoint yet", hint="a running collector signs one every few seconds"
            )
    else:
        row = db.execute(
            "SELECT size, root, note, t_ms FROM log_checkpoints WHERE size = ?", (size,)
        ).fetchone()
        if row is None:
            raise LogError(f"the store has no checkpoint of tree size {size}")
    return StoredCheckpoint(int(row[0]), bytes(row[1]), str(row[2]), int(row[3]))


def leaf_of(db: sqlite3.Connection, msg_id: bytes) -> tuple[int, bytes]:
    """``(leaf index, cose)`` of the stored message with this msg_id."""
    row = db.execute(
        "SELECT l.idx, m.cose FROM messages m JOIN log_leaves l ON l.message = m.id WHERE m.msg_id = ?",
        (msg_id,),
    ).fetchone()
    if row is None:
        raise LogError(f"no stored message with msg_id {msg_id.hex()} in the log")
    return int(row[0]), bytes(row[1])


# -- audit ----------------------------------------------------------------------------------------


def audit(
    rows: Iterator[tuple[int, int, bytes]],
    read_hashes: Callable[[Sequence[int]], list[bytes]],
    size: int,
    checkpoints: Sequence[StoredCheckpoint],
    verifier: NoteVerifier | None,
) -> list[str]:
    """Recompute the tree from ``rows`` (leaf index, messages.id, cose; in leaf order, streamed) and
    compare every stored hash, then every checkpoint's root, body and signature. Returns what is
    wrong (empty: the log is intact); stops at the first mismatch of the hashes."""
    fresh: dict[int, bytes] = {}  # only the hashes a later leaf may still need: O(log n)
    n = 0
    by_size = {c.size: c for c in checkpoints}
    roots: dict[int, bytes] = {}
    frontier: list[tuple[int, bytes]] = []  # (leaves, hash) of the complete subtrees, left to right

    def read(indexes: Sequence[int]) -> list[bytes]:
        return [fresh[i] for i in indexes]

    for idx, _mid, cose in rows:
        if idx != n:
            return [f"leaf index {n} is missing (next stored leaf is {idx})"]
        start = stored_hash_index(0, n)
        hashes = stored_hashes_for_record(n, leaf_hash(bytes(cose)), read)
        stored = read_hashes(list(range(start, start + len(hashes))))
        for k, (h, s) in enumerate(zip(hashes, stored, strict=True)):
            if h != s:
                return [f"leaf {n}: stored hash {start + k} does not match the message's bytes"]
            fresh[start + k] = h
        # the frontier: push the leaf, merge equal-sized subtrees (as the stored hashes just did)
        frontier.append((1, hashes[0]))
        for h in hashes[1:]:
            frontier.pop()
            size_left, _ = frontier.pop()
            frontier.append((size_left * 2, h))
        n += 1
        if n in by_size:
            acc = frontier[-1][1]
            for _, h in reversed(frontier[:-1]):
                acc = node_hash(h, acc)
            roots[n] = acc
        # forget hashes no later leaf reads: keep only the frontier's
        keep = {stored_hash_index(_level(s), _pos(n, frontier, i)) for i, (s, _) in enumerate(frontier)}
        for i in [i for i in fresh if i not in keep]:
            del fresh[i]
    if n != size:
        return [f"the log has {size} leaves but {n} were read"]
    problems: list[str] = []
    for c in sorted(checkpoints, key=lambda c: c.size):
        if c.size > n:
            problems.append(f"checkpoint of size {c.size} is larger than the tree ({n} leaves)")
            continue
        if roots.get(c.size) != c.root:
            problems.append(f"checkpoint of size {c.size}: root does not match the recomputed tree")
            continue
        try:
            body = parse_checkpoint(c.note.split("\n\n", 1)[0] + "\n")
            if body.size != c.size or body.root_hash != c.root:
                problems.append(f"checkpoint of size {c.size}: the note's body disagrees with its row")
                continue
            if verifier is not None:
                open_checkpoint(c.note, verifier)
        except TlogError as e:
            problems.append(f"checkpoint of size {c.size}: {e}")
    return problems


def _level(leaves: int) -> int:
    return leaves.bit_length() - 1


def _pos(n: int, frontier: list[tuple[int, bytes]], i: int) -> int:
    """The subtree number (at its level) of the frontier's i-th complete subtree, for a tree of n."""
    start = sum(s for s, _ in frontier[:i])
    return start // frontier[i][0]
