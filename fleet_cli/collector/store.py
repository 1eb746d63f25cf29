"""The collector's store (docs/collector.md): one SQLite file in WAL mode, written in batched transactions.

Tables:

* ``messages`` — every accepted device message with its raw COSE bytes, ``UNIQUE (dev, boot, seq)``.
  Append-only (triggers refuse UPDATE and DELETE) and ordered by arrival (``id``): a later release
  builds an RFC 6962 Merkle log over exactly these bytes in exactly this order.
* ``heads`` — per (dev, boot) the highest seq such that every seq up to it is stored or was dropped
  by the device itself (a signed gap record). It is what the collector acks (docs/protocol.md §5) and what a
  restarted collector restores its chain verifier from.
* ``devices`` — per device counters and the latest birth info / heartbeat metrics, for ``fleet status``.
* ``keys`` — device keys seen in verified births (the registry holds the binding; this is history).
* ``quarantine`` — rejected messages: raw bytes, topic, verdict, reason, time. Bounded: at most
  ``quarantine_max`` rows (:data:`QUARANTINE_MAX_ROWS` by default); see "The quarantine bound" below.
* ``quarantine_tally`` — per verdict, rows kept and rows evicted: kept + evicted is every message ever
  quarantined. ``quarantine_share`` — rows kept per device. Both are kept by triggers on ``quarantine``,
  so they cannot drift from it, and any DELETE (the bound, or an operator by hand) counts as evicted.
* ``gaps`` — missing seqs: ``source`` is ``device`` (a signed gap record) or ``timeout`` (still
  missing from the store after the reorder timeout).
* ``states`` — the latest advisory ``state`` JSON of each device (docs/protocol.md §5), unverified.

The store is the arbiter when several collectors share it (``--share``): :meth:`Store.commit`
re-checks every candidate against the stored neighbours (same seq: DUPLICATE / EQUIVOCATION;
``prev`` of seq+1 or the msg_id of seq-1 disagreeing: FORK) inside the write transaction, so the
outcome does not depend on which collector saw which message or in which order.

The quarantine bound (a flood of rejected messages must not cost unbounded disk, and nothing may be
lost silently, docs/protocol.md §6): in the transaction that inserts rejected rows,
if more than ``quarantine_max`` rows are kept, the excess goes, oldest first, from the devices holding
the most rows (levelled down together, :func:`eviction_plan`), so that one flooding device evicts its
own rows before any other device's evidence. Evicted rows are counted per verdict in
``quarantine_tally``; :meth:`Store.quarantine_counts` reports kept + evicted. Schema 2 added the two
tables and their triggers; opening a schema 1 store migrates it (and counts the rows it holds).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from edge_protocol.envelope import Verdict
from edge_protocol.errors import TlogError
from edge_protocol.spans import Spans
from edge_protocol.tlog import NoteSigner, NoteVerifier, prove_record, prove_tree
from fleet_cli import sqlite
from fleet_cli.collector import log
from fleet_cli.errors import FleetError

# 1: the first release; 2: the quarantine bound (quarantine_tally, quarantine_share, their triggers);
# 3: the latest heartbeat ordered by (metrics_boot, metrics_seq) instead of boot * 2^32 + seq, which
#    overflowed 64 bits for a boot above 2^31 (docs/protocol.md §3 "Integers" lets boot reach 2^53-1);
# 4: the fleet log (log_leaves, log_hashes, log_checkpoints: collector/log.py); the migration appends
#    the messages already stored, in id order.
SCHEMA_VERSION = 4
# Counters of seqs (gaps, drops) add up widths that a device chooses (each at most 2^53-1): they
# saturate here, the largest INTEGER of SQLite (and of PostgreSQL's bigint), instead of overflowing.
COUNTER_MAX = 2**63 - 1
# Default bound of the quarantine table (rows). A flood of hostile messages is typically a few hundred
# bytes each (~30 MB at this bound); the worst case is every row an oversize envelope at the broker's
# packet limit (69,632 bytes, broker_config.conf), ~6.5 GiB. 100,000 keeps the evidence of a whole
# fault-suite attack run (10,300 hostile messages) ten times over.
QUARANTINE_MAX_ROWS = 100_000
# A second collector or a CLI reader may hold the write lock for one batch (tens of ms); wait this
# long before giving up with an error.
BUSY_TIMEOUT_S = 30.0
# How many rows a streaming reader fetches per round trip (export, stats): memory stays flat.
FETCH_ROWS = 1000

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order; never reused
    dev         TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    pipe        TEXT,
    t_device    INTEGER NOT NULL,   -- ms, the device's advisory clock
    t_received  INTEGER NOT NULL,   -- ms, the collector's clock when the message arrived
    model       BLOB,
    input       BLOB,
    out         TEXT,               -- JSON of the result map (bytes as hex)
    label       TEXT,               -- out.label when it is text, for aggregation
    score       REAL,               -- out.score when it is a number
    msg_id      BLOB NOT NULL,
    prev        BLOB NOT NULL,
    cose        BLOB NOT NULL,      -- the exact bytes received and verified
    UNIQUE (dev, boot, seq)
) STRICT""",
    "CREATE INDEX IF NOT EXISTS messages_t ON messages (t_received)",
    """
CREATE TRIGGER IF NOT EXISTS messages_no_update BEFORE UPDATE ON messages
BEGIN SELECT RAISE(ABORT, 'messages are append-only'); END""",
    """
CREATE TRIGGER IF NOT EXISTS messages_no_delete BEFORE DELETE ON messages
BEGIN SELECT RAISE(ABORT, 'messages are append-only'); END""",
    """
CREATE TABLE IF NOT EXISTS heads (
    dev         TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,   -- every seq <= this is stored or dropped by the device
    msg_id      BLOB NOT NULL,      -- of the highest stored message at or below seq (zeros if none)
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (dev, boot)
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS devices (
    dev           TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    boot          INTEGER NOT NULL DEFAULT -1,
    last_seq      INTEGER NOT NULL DEFAULT -1,
    accepted      INTEGER NOT NULL DEFAULT 0,
    rejected      INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    gaps          INTEGER NOT NULL DEFAULT 0,   -- seqs reported missing after the reorder timeout
    drops         INTEGER NOT NULL DEFAULT 0,   -- seqs the device says it dropped (gap records)
    info          TEXT,                         -- JSON of the latest birth's info map
    info_boot     INTEGER NOT NULL DEFAULT -1,
    metrics       TEXT,                         -- JSON of the latest heartbeat's metrics map
    metrics_at    INTEGER NOT NULL DEFAULT -1,  -- schema 1-2: boot * 2^32 + seq (no longer written)
    metrics_ms    INTEGER,
    metrics_boot  INTEGER NOT NULL DEFAULT -1,  -- (boot, seq) of that heartbeat
    metrics_seq   INTEGER NOT NULL DEFAULT -1
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS keys (
    dev           TEXT NOT NULL,
    public_key    BLOB NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (dev, public_key)
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    t_received  INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    dev         TEXT,               -- the device the topic names, if it names one
    verdict     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    cose        BLOB NOT NULL
) STRICT""",
    "CREATE INDEX IF NOT EXISTS quarantine_dev ON quarantine (dev)",
    """
CREATE TABLE IF NOT EXISTS quarantine_tally (
    verdict     TEXT PRIMARY KEY,
    kept        INTEGER NOT NULL DEFAULT 0,   -- rows of this verdict in quarantine now
    evicted     INTEGER NOT NULL DEFAULT 0    -- rows of this verdict deleted from quarantine
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS quarantine_share (
    dev         TEXT PRIMARY KEY,             -- '' for rows whose topic names no device
    n           INTEGER NOT NULL              -- rows of this device in quarantine now (> 0)
) STRICT""",
    # (n, rowid): the devices with the most rows first, among equals the latest to (re)appear
    "CREATE INDEX IF NOT EXISTS quarantine_share_n ON quarantine_share (n)",
    # Migration from schema 1: count the rows already there (recounted from the table: idempotent).
    """
INSERT INTO quarantine_tally (verdict, kept) SELECT verdict, COUNT(*) FROM quarantine WHERE true
GROUP BY verdict ON CONFLICT (verdict) DO UPDATE SET kept = excluded.kept""",
    """
INSERT INTO quarantine_share (dev, n) SELECT COALESCE(dev, ''), COUNT(*) FROM quarantine WHERE true
GROUP BY COALESCE(dev, '') ON CONFLICT (dev) DO UPDATE SET n = excluded.n""",
    """
CREATE TRIGGER IF NOT EXISTS quarantine_counted_in AFTER INSERT ON quarantine
BEGIN
    INSERT INTO quarantine_tally (verdict, kept) VALUES (NEW.verdict, 1)
        ON CONFLICT (verdict) DO UPDATE SET kept = kept + 1;
    INSERT INTO quarantine_share (dev, n) VALUES (COALESCE(NEW.dev, ''), 1)
        ON CONFLICT (dev) DO UPDATE SET n = n + 1;
END""",
    """
CREATE TRIGGER IF NOT EXISTS quarantine_counted_out AFTER DELETE ON quarantine
BEGIN
    UPDATE quarantine_tally SET kept = kept - 1, evicted = evicted + 1 WHERE verdict = OLD.verdict;
    UPDATE quarantine_share SET n = n - 1 WHERE dev = COALESCE(OLD.dev, '');
    DELETE FROM quarantine_share WHERE dev = COALESCE(OLD.dev, '') AND n <= 0;
END""",
    """
CREATE TRIGGER IF NOT EXISTS quarantine_no_update BEFORE UPDATE ON quarantine
BEGIN SELECT RAISE(ABORT, 'quarantine rows are evidence: never updated (a DELETE counts as evicted)'); END""",
    """
CREATE TABLE IF NOT EXISTS gaps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dev         TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    first       INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('device', 'timeout')),
    why         TEXT,
    t_ms        INTEGER NOT NULL
) STRICT""",
    "CREATE INDEX IF NOT EXISTS gaps_dev ON gaps (dev, boot)",
    """
CREATE TABLE IF NOT EXISTS states (
    dev         TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    boot        INTEGER,
    t_device    INTEGER,
    t_received  INTEGER NOT NULL
) STRICT""",
)

# Schema 3, from a schema 1-2 store: the (boot, seq) of the latest heartbeat in two columns.
_MIGRATE_3 = (
    "ALTER TABLE devices ADD COLUMN metrics_boot INTEGER NOT NULL DEFAULT -1",
    "ALTER TABLE devices ADD COLUMN metrics_seq INTEGER NOT NULL DEFAULT -1",
    "UPDATE devices SET metrics_boot = metrics_at >> 32, metrics_seq = metrics_at & 4294967295"
    " WHERE metrics_at >= 0",
)

ZERO_ID = bytes(32)


class StoreError(FleetError):
    """The store cannot be opened or written."""


class Candidate(NamedTuple):
    """A verified device message the chain verifier accepted, waiting for the batch to commit.

    One field order from the verify worker to the table: ``dev, t_received, cose`` (the collector's),
    then exactly the fields of :class:`fleet_cli.collector.verify_worker.Verified`; the first
    :data:`MESSAGE_COLUMNS` fields are the ``messages`` columns, in the order :data:`INSERT_MESSAGE`
    names them, so a candidate's row is ``c[:MESSAGE_COLUMNS]``.
    """

    dev: str
    t_received: int
    cose: bytes
    boot: int
    seq: int
    kind: int
    pipe: str | None
    t_device: int
    model: bytes | None = None
    input: bytes | None = None
    out: str | None = None
    label: str | None = None
    score: float | None = None
    msg_id: bytes = b""
    prev: bytes = b""
    info: str | None = None  # birth: JSON of info
    public_key: bytes | None = None  # birth: the key it carries
    metrics: str | None = None  # heartbeat: JSON of metrics
    gap: tuple[int, int, int, str] | None = None  # gap record: (boot, from, to, why); boot may be earlier


MESSAGE_COLUMNS = 15
INSERT_MESSAGE = (
    "INSERT INTO messages (dev, t_received, cose, boot, seq, kind, pipe, t_device, model, input, out,"
    " label, score, msg_id, prev) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


class StoredMessage(NamedTuple):
    """A row of ``messages`` as :meth:`Store.messages` reads it."""

    dev: str
    boot: int
    seq: int
    kind: int
    pipe: str | None
    msg_id: bytes
    prev: bytes
    t_device: int
    t_received: int
    cose: bytes


@dataclass(frozen=True)
class Rejected:
    topic: str
    dev: str | None
    verdict: Verdict
    reason: str
    cose: bytes
    t_received: int


@dataclass(frozen=True)
class GapRange:
    dev: str
    boot: int
    first: int
    last: int


@dataclass(frozen=True)
class StateUpdate:
    dev: str
    state: str
    boot: int | None
    t_device: int | None
    t_received: int


@dataclass
class Batch:
    """What one transaction writes. Filled by the collector's worker, consumed by :meth:`Store.commit`."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    touched: set[tuple[str, int]] = field(default_factory=set)  # (dev, boot) whose head may move
    timeout_gaps: list[GapRange] = field(default_factory=list)
    states: list[StateUpdate] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.candidates) + len(self.rejected) + sum(self.duplicates.values()) + len(self.states)

    def empty(self) -> bool:
        return not (
            self.candidates
            or self.rejected
            or self.duplicates
            or self.touched
            or self.timeout_gaps
            or self.states
        )


@dataclass(frozen=True)
class AckHead:
    dev: str
    boot: int
    seq: int
    msg_id: bytes


@dataclass(frozen=True)
class QuarantineState:
    """The quarantine after a commit that inserted rejected rows (store-wide: every collector's)."""

    kept: int  # rows in the quarantine table
    evicted: int  # rows evicted since the store was created
    evicted_now: dict[str, int]  # verdict -> rows this commit evicted


@dataclass(frozen=True)
class QuarantineCount:
    """One verdict's quarantined messages: ``kept`` rows still hold the raw bytes, ``evicted`` were
    removed by the bound (only counted); ``total`` is every message ever quarantined with it."""

    kept: int
    evicted: int

    @property
    def total(self) -> int:
        return self.kept + self.evicted

    @classmethod
    def sum(cls, counts: Iterable[QuarantineCount]) -> QuarantineCount:
        """Several verdicts' counts together."""
        kept = evicted = 0
        for c in counts:
            kept += c.kept
            evicted += c.evicted
        return cls(kept, evicted)


@dataclass(frozen=True)
class CommitResult:
    stored: list[Candidate]
    conflicts: list[Rejected]  # candidates the store refused (DUPLICATE already counted apart)
    duplicates: list[Candidate]  # candidates another collector had stored already
    heads: list[AckHead]  # (dev, boot) heads after the commit, for the touched pairs
    gaps: list[GapRange]  # timeout gaps that really are missing from the store
    quarantine: QuarantineState | None = None  # None: the batch quarantined nothing


def eviction_plan(shares: Iterable[tuple[str, int]], need: int) -> list[tuple[str, int]]:
    """``(dev, rows)``: how many of its oldest rows each device gives up so that ``need`` rows go.

    ``shares`` are ``(dev, rows kept)`` with the most rows first. The devices with the most rows are
    levelled down together (water-filling): the result has the same counts as taking one row at a
    time from whichever device holds the most, so one flooding device loses its own rows before any
    other device loses one. Only as many ``shares`` are read as the plan needs: O(need) for any
    number of devices. Among equals the first in ``shares`` give up a row first.
    """
    group: list[tuple[str, int]] = []  # (dev, rows before), all levelled down to ``level``
    level = 0
    taken = 0  # rows the group gives up at ``level``
    for dev, n in chain(shares, [("", 0)]):  # the sentinel: lowering to 0 frees every row
        if group:
            rest = need - taken
            if rest <= len(group) * max(1, level - n):  # lowering the group further is enough
                full, extra = divmod(rest, len(group))
                plan = [(d, before - level + full + int(i < extra)) for i, (d, before) in enumerate(group)]
                return [(d, rows) for d, rows in plan if rows > 0]
            if n == 0:
                break
            taken += len(group) * (level - n)
        group.append((dev, n))
        level = n
    return [(d, before) for d, before in group if before > 0]  # need exceeds every row: all go


def _upgrade(db: sqlite3.Connection, found: int) -> None:
    """The schema of a new store, or an older one brought to :data:`SCHEMA_VERSION`."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(devices)")}
    for stmt in _SCHEMA:
        db.execute(stmt)
    if columns and "metrics_boot" not in columns:
        for stmt in _MIGRATE_3:
            db.execute(stmt)
    for stmt in log.SCHEMA:
        db.execute(stmt)
    log.append_new(db)  # schema 3 and older: the messages stored before the log, in id order


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Store:
    """The SQLite store at ``path``. One connection, used by one writer thread (plus readers)."""

    def __init__(
        self, path: Path, *, readonly: bool = False, quarantine_max: int = QUARANTINE_MAX_ROWS
    ) -> None:
        self.path = Path(path)
        if quarantine_max < 1:
            raise StoreError(
                f"the quarantine bound must be at least 1 row, got {quarantine_max}",
                hint="evicted rows are still counted, but at least the latest one keeps its raw bytes",
            )
        self.quarantine_max = quarantine_max
        self._lock = threading.RLock()
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(
                        f"no store at {self.path}",
                        hint="run `fleet collect` first, or point --store at the collector's file",
                    )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # docs/field-notes.md "SQLite": FULL, because the collector acks a batch right after its
            # commit and a device deletes what is acked: NORMAL survives a killed process but a power
            # loss may take the last commits, which the devices would no longer hold. FULL makes every
            # commit wait for the disk (one fsync of the WAL per batch, not per message).
            self._db = sqlite.connect(
                self.path,
                busy_timeout_s=BUSY_TIMEOUT_S,
                readonly=readonly,
                synchronous=sqlite.Synchronous.FULL,
            )
            if not readonly:
                sqlite.migrate(
                    self._db,
                    SCHEMA_VERSION,
                    _upgrade,
                    too_new=lambda found: StoreError(
                        f"{self.path} has store schema {found}; this edgeseal knows {SCHEMA_VERSION}",
                        hint="upgrade edgeseal",
                    ),
                )
            # a reader of a schema 1 store (its collector not restarted yet) counts the table itself
            self._tallied = bool(
                self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine_tally'"
                ).fetchone()
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from e
        self._covered: dict[tuple[str, int], Spans] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    def commit(self, batch: Batch) -> CommitResult:
        """Write one batch in one transaction; see the module docstring for the checks it makes."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = self._write(batch)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._covered.clear()  # it may hold ranges of the rolled-back batch
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreError(f"store {self.path}: {e}") from e
        return result

    def _write(self, batch: Batch) -> CommitResult:
        db = self._db
        now = _now_ms()
        stored: list[Candidate] = []
        conflicts: list[Rejected] = []
        dups: list[Candidate] = []
        per_dev: dict[str, list[Candidate]] = {}
        rejected_by_dev: dict[str, int] = {}
        neighbours = self._neighbours(batch.candidates)
        gap_rows: list[tuple[Any, ...]] = []
        for c in batch.candidates:
            known = neighbours[(c.dev, c.boot)]
            verdict, reason = _check(c, known)
            if verdict is Verdict.DUPLICATE:
                dups.append(c)
                batch.touched.add((c.dev, c.boot))
                continue
            if verdict is not None:
                conflicts.append(Rejected("", c.dev, verdict, reason, c.cose, c.t_received))
                continue
            known[c.seq] = (c.msg_id, c.prev)  # later candidates of this batch are checked against it
            stored.append(c)
            per_dev.setdefault(c.dev, []).append(c)
            batch.touched.add((c.dev, c.boot))
            if c.gap is not None:
                gboot, lo, hi, why = c.gap
                gap_rows.append((c.dev, gboot, lo, hi, "device", why, c.t_received))
                self._cover(c.dev, gboot, lo, hi)
                batch.touched.add((c.dev, gboot))  # an earlier boot's head may move over the drops
        # One statement per table and batch, rows in arrival order (the messages' ids keep it).
        db.executemany(INSERT_MESSAGE, [c[:MESSAGE_COLUMNS] for c in stored])
        if stored:
            log.append_new(db)  # the fleet log, in the same transaction (collector/log.py)
        if gap_rows:
            db.executemany(
                "INSERT INTO gaps (dev, boot, first, last, source, why, t_ms) VALUES (?,?,?,?,?,?,?)",
                gap_rows,
            )
        quarantined = [*batch.rejected, *conflicts]
        quarantine = None
        if quarantined:
            db.executemany(
                "INSERT INTO quarantine (t_received, topic, dev, verdict, reason, cose) VALUES (?,?,?,?,?,?)",
                [(r.t_received, r.topic, r.dev, r.verdict.value, r.reason, r.cose) for r in quarantined],
            )
            quarantine = self._bound_quarantine()
        for r in quarantined:
            if r.dev is not None:
                rejected_by_dev[r.dev] = rejected_by_dev.get(r.dev, 0) + 1
        for dev in {*per_dev, *rejected_by_dev, *batch.duplicates, *(c.dev for c in dups)}:
            self._touch_device(dev, now)
        for dev, cands in per_dev.items():
            self._update_device(dev, cands)
        for dev, n in rejected_by_dev.items():
            db.execute("UPDATE devices SET rejected = rejected + ? WHERE dev = ?", (n, dev))
        dup_counts = dict(batch.duplicates)
        for c in dups:
            dup_counts[c.dev] = dup_counts.get(c.dev, 0) + 1
        for dev, n in dup_counts.items():
            db.execute("UPDATE devices SET duplicates = duplicates + ? WHERE dev = ?", (n, dev))
        gaps = self._record_timeout_gaps(batch.timeout_gaps, now)
        for s in batch.states:
            db.execute(
                "INSERT INTO states (dev, state, boot, t_device, t_received) VALUES (?,?,?,?,?)"
                " ON CONFLICT (dev) DO UPDATE SET state = excluded.state, boot = excluded.boot,"
                " t_device = excluded.t_device, t_received = excluded.t_received",
                (s.dev, s.state, s.boot, s.t_device, s.t_received),
            )
        heads = [self._advance_head(dev, boot, now) for dev, boot in sorted(batch.touched)]
        return CommitResult(stored, conflicts, dups, [h for h in heads if h is not None], gaps, quarantine)

    def _bound_quarantine(self) -> QuarantineState:
        """Evict down to :attr:`quarantine_max` rows (see the module docstring); the triggers count
        every deleted row in ``quarantine_tally``."""
        db = self._db
        before = {v: (k, e) for v, k, e in db.execute("SELECT verdict, kept, evicted FROM quarantine_tally")}
        kept = sum(k for k, _ in before.values())
        need = kept - self.quarantine_max
        if need <= 0:
            return QuarantineState(kept, sum(e for _, e in before.values()), {})
        cur = db.execute("SELECT dev, n FROM quarantine_share ORDER BY n DESC, rowid DESC")
        plan = eviction_plan(cur, need)
        cur.close()
        for dev, rows in plan:
            key = dev or None  # '' stands for rows whose topic names no device
            (last,) = db.execute(
                "SELECT id FROM quarantine WHERE dev IS ? ORDER BY id LIMIT 1 OFFSET ?", (key, rows - 1)
            ).fetchone()
            db.execute("DELETE FROM quarantine WHERE dev IS ? AND id <= ?", (key, last))
        after = {v: (k, e) for v, k, e in db.execute("SELECT verdict, kept, evicted FROM quarantine_tally")}
        now = {v: e - before.get(v, (0, 0))[1] for v, (_, e) in after.items()}
        return QuarantineState(
            sum(k for k, _ in after.values()),
            sum(e for _, e in after.values()),
            {v: n for v, n in now.items() if n},
        )

    def _neighbours(self, cands: list[Candidate]) -> dict[tuple[str, int], dict[int, tuple[bytes, bytes]]]:
        """Stored (msg_id, prev) of each candidate's seq-1, seq and seq+1: one query per (dev, boot)."""
        wanted: dict[tuple[str, int], set[int]] = {}
        for c in cands:
            seqs = wanted.setdefault((c.dev, c.boot), set())
            seqs.update((c.seq - 1, c.seq, c.seq + 1))
        out: dict[tuple[str, int], dict[int, tuple[bytes, bytes]]] = {}
        for (dev, boot), seqs in wanted.items():
            out[(dev, boot)] = {
                seq: (msg_id, prev)
                for seq, msg_id, prev in self._db.execute(
                    "SELECT seq, msg_id, prev FROM messages WHERE dev = ? AND boot = ?"
                    " AND seq IN (SELECT value FROM json_each(?))",
                    (dev, boot, json.dumps(sorted(seqs))),
                )
            }
        return out

    def _touch_device(self, dev: str, now: int) -> None:
        self._db.execute(
            "INSERT INTO devices (dev, first_seen_ms, last_seen_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (dev) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
            (dev, now, now),
        )

    def _update_device(self, dev: str, cands: list[Candidate]) -> None:
        db = self._db
        top = max(cands, key=lambda c: (c.boot, c.seq))
        drops = min(COUNTER_MAX, sum(c.gap[2] - c.gap[1] + 1 for c in cands if c.gap is not None))
        # SET expressions all see the old row, so the CASE reads the old boot. A sum past 2^63-1
        # becomes a REAL in SQLite; MIN brings it back to the INTEGER bound.
        db.execute(
            "UPDATE devices SET accepted = accepted + ?, drops = MIN(drops + ?, ?),"
            " last_seq = CASE WHEN ? > boot THEN ? WHEN ? = boot THEN MAX(last_seq, ?) ELSE last_seq END,"
            " boot = MAX(boot, ?) WHERE dev = ?",
            (len(cands), drops, COUNTER_MAX, top.boot, top.seq, top.boot, top.seq, top.boot, dev),
        )
        for c in cands:
            if c.info is not None:
                db.execute(
                    "UPDATE devices SET info = ?, info_boot = ? WHERE dev = ? AND info_boot <= ?",
                    (c.info, c.boot, dev, c.boot),
                )
            if c.public_key is not None:
                db.execute(
                    "INSERT OR IGNORE INTO keys (dev, public_key, first_seen_ms) VALUES (?,?,?)",
                    (dev, c.public_key, c.t_received),
                )
            if c.metrics is not None:
                db.execute(
                    "UPDATE devices SET metrics = ?, metrics_boot = ?, metrics_seq = ?, metrics_ms = ?"
                    " WHERE dev = ? AND (metrics_boot, metrics_seq) < (?, ?)",
                    (c.metrics, c.boot, c.seq, c.t_received, dev, c.boot, c.seq),
                )

    def _record_timeout_gaps(self, gaps: list[GapRange], now: int) -> list[GapRange]:
        """Keep only the seqs of each reported range that are really missing from the store.

        Ranges stay ranges (docs/protocol.md §6: a hostile jump of seq costs nothing): the work is
        the stored messages and device-covered spans inside the range, never its width."""
        out: list[GapRange] = []
        for g in gaps:
            have = Spans(
                (r[0], r[0])
                for r in self._db.execute(
                    "SELECT seq FROM messages WHERE dev = ? AND boot = ? AND seq BETWEEN ? AND ?",
                    (g.dev, g.boot, g.first, g.last),
                )
            )
            for lo, hi in self._covered_ranges(g.dev, g.boot).gaps(g.first, g.last):
                out += [GapRange(g.dev, g.boot, a, b) for a, b in have.gaps(lo, hi)]
        for g in out:
            self._db.execute(
                "INSERT INTO gaps (dev, boot, first, last, source, why, t_ms) VALUES (?,?,?,?,?,?,?)",
                (g.dev, g.boot, g.first, g.last, "timeout", "missing after the reorder timeout", now),
            )
            self._touch_device(g.dev, now)
            self._db.execute(
                "UPDATE devices SET gaps = MIN(gaps + ?, ?) WHERE dev = ?",
                (g.last - g.first + 1, COUNTER_MAX, g.dev),
            )
        return out

    def _covered_ranges(self, dev: str, boot: int) -> Spans:
        """The seqs of (dev, boot) the device itself reported dropped."""
        key = (dev, boot)
        spans = self._covered.get(key)
        if spans is None:
            spans = self._covered[key] = Spans(
                self._db.execute(
                    "SELECT first, last FROM gaps WHERE dev = ? AND boot = ? AND source = 'device'",
                    (dev, boot),
                )
            )
        return spans

    def _cover(self, dev: str, boot: int, lo: int, hi: int) -> None:
        self._covered_ranges(dev, boot).add(lo, hi)

    def _advance_head(self, dev: str, boot: int, now: int) -> AckHead | None:
        """Move the stored head of (dev, boot) over every stored or device-dropped seq above it."""
        row = self._db.execute(
            "SELECT seq, msg_id FROM heads WHERE dev = ? AND boot = ?", (dev, boot)
        ).fetchone()
        head, head_id = (row[0], row[1]) if row is not None else (-1, ZERO_ID)
        covered = self._covered_ranges(dev, boot)
        cur = self._db.execute(
            "SELECT seq, msg_id FROM messages WHERE dev = ? AND boot = ? AND seq > ? ORDER BY seq",
            (dev, boot, head),
        )
        new_head, new_id = head, head_id
        for seq, msg_id in cur:
            if new_head + 1 < seq:  # a hole: over it only if the device dropped those seqs
                new_head = min(covered.end(new_head + 1), seq - 1)
            if seq != new_head + 1:
                break
            new_head, new_id = seq, msg_id
        cur.close()
        # the tail: seqs above the last stored one that the device says it dropped (spans are merged,
        # so one look-up reaches the end of the run)
        new_head = covered.end(new_head + 1)
        if new_head < 0:
            return None
        if new_head != head:
            self._db.execute(
                "INSERT INTO heads (dev, boot, seq, msg_id, updated_ms) VALUES (?,?,?,?,?)"
                " ON CONFLICT (dev, boot) DO UPDATE SET seq = excluded.seq, msg_id = excluded.msg_id,"
                " updated_ms = excluded.updated_ms WHERE excluded.seq > heads.seq",
                (dev, boot, new_head, new_id, now),
            )
        return AckHead(dev, boot, new_head, new_id)

    def sign_checkpoint(self, signer: NoteSigner) -> str | None:
        """Sign and store a checkpoint of the log if it grew since the latest; the signed note, or None."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    note = log.sign_new(self._db, signer, _now_ms())
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreError(f"store {self.path}: {e}") from e
        return note

    # -- the fleet log (reading) --------------------------------------------------------------

    def _log_call(self, fn: Any, *args: Any) -> Any:
        try:
            with self._lock:
                return fn(self._db, *args)
        except sqlite3.Error as e:
            if "no such table: log_" in str(e):  # a store of schema 3 or older, not migrated yet
                raise StoreError(
                    f"store {self.path} has no fleet log yet",
                    hint="start `fleet collect` once with this edgeseal: it migrates the store and builds it",
                ) from e
            raise StoreError(f"store {self.path}: {e}") from e
        except TlogError as e:
            raise log.LogError(str(e)) from e

    def log_size(self) -> int:
        return int(self._log_call(log.tree_size))

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        """Stored hashes by number (a :class:`~edge_protocol.tlog.HashReader`)."""
        return list(self._log_call(lambda db, ix: log.db_reader(db)(ix), indexes))

    def checkpoint(self, size: int | None = None) -> log.StoredCheckpoint:
        """The stored checkpoint of tree size ``size``, or the latest."""
        cp: log.StoredCheckpoint = self._log_call(log.read_checkpoint, size)
        return cp

    def checkpoints(self) -> list[log.StoredCheckpoint]:
        return [
            log.StoredCheckpoint(int(s), bytes(r), str(n), int(t))
            for s, r, n, t in self._query("SELECT size, root, note, t_ms FROM log_checkpoints ORDER BY size")
        ]

    def prove(
        self, msg_id: bytes, size: int | None = None
    ) -> tuple[int, bytes, log.StoredCheckpoint, list[bytes]]:
        """``(leaf index, cose, checkpoint, inclusion proof)`` of a stored message against a stored
        checkpoint (the latest by default): O(log n) stored hashes read."""
        cp = self.checkpoint(size)
        idx, cose = self._log_call(log.leaf_of, msg_id)
        if idx >= cp.size:
            raise log.LogError(
                f"message {msg_id.hex()} is leaf {idx}, not in the checkpoint of size {cp.size}"
            )
        proof = self._log_call(lambda db: prove_record(cp.size, idx, log.db_reader(db)))
        return idx, cose, cp, list(proof)

    def prove_consistency(
        self, old: int, new: int
    ) -> tuple[log.StoredCheckpoint, log.StoredCheckpoint, list[bytes]]:
        old_cp, new_cp = self.checkpoint(old), self.checkpoint(new)
        if old > new:
            raise log.LogError(f"old size {old} is larger than new size {new}")
        proof = self._log_call(lambda db: prove_tree(new, old, log.db_reader(db)))
        return old_cp, new_cp, list(proof)

    def audit_log(self, verifier: NoteVerifier | None) -> list[str]:
        """Recompute the log from the stored messages (streamed) and compare (collector/log.py ``audit``)."""
        size = self.log_size()
        count = self.count_messages()
        problems = []
        if count != size:
            problems.append(f"the store holds {count} messages but the log has {size} leaves")
        rows = self.iter_rows(
            "SELECT l.idx, m.id, m.cose FROM log_leaves l JOIN messages m ON m.id = l.message ORDER BY l.idx"
        )
        problems += self._log_call(
            lambda _db: log.audit(rows, self.read_hashes, size, self.checkpoints(), verifier)
        )
        return problems

    # -- reading ------------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"store {self.path}: {e}") from e

    def recall(self, dev: str, boot: int, seq: int) -> tuple[bytes, bytes] | None:
        """``(msg_id, prev)`` of a stored message (the chain verifier's lookup after a restart)."""
        rows = self._query(
            "SELECT msg_id, prev FROM messages WHERE dev = ? AND boot = ? AND seq = ?", (dev, boot, seq)
        )
        return (bytes(rows[0][0]), bytes(rows[0][1])) if rows else None

    def restore_heads(self) -> dict[str, list[tuple[int, int, bytes]]]:
        """dev -> [(boot, seq, msg_id)] for a chain verifier to restart from.

        The seq is the highest *stored* message at or below the stored head: a head that ends on
        seqs the device dropped has no msg_id of its own, and the next message names the dropped
        one as ``prev``, which the verifier must not compare against the head's.
        """
        out: dict[str, list[tuple[int, int, bytes]]] = {}
        for dev, boot, seq, msg_id in self._query(
            "SELECT h.dev, h.boot, m.seq, m.msg_id FROM heads h JOIN messages m"
            " ON m.dev = h.dev AND m.boot = h.boot AND m.seq = (SELECT MAX(seq) FROM messages"
            " WHERE dev = h.dev AND boot = h.boot AND seq <= h.seq) ORDER BY h.dev, h.boot"
        ):
            out.setdefault(dev, []).append((boot, seq, bytes(msg_id)))
        return out

    def heads(self) -> dict[str, list[tuple[int, int, bytes]]]:
        """dev -> [(boot, seq, msg_id)] of every stored head."""
        out: dict[str, list[tuple[int, int, bytes]]] = {}
        for dev, boot, seq, msg_id in self._query(
            "SELECT dev, boot, seq, msg_id FROM heads ORDER BY dev, boot"
        ):
            out.setdefault(dev, []).append((boot, seq, bytes(msg_id)))
        return out

    def devices(self) -> list[dict[str, Any]]:
        cols = (
            "dev", "first_seen_ms", "last_seen_ms", "boot", "last_seq", "accepted", "rejected",
            "duplicates", "gaps", "drops", "info", "metrics", "metrics_ms",
        )  # fmt: skip
        rows = self._query(f"SELECT {', '.join(cols)} FROM devices ORDER BY dev")  # noqa: S608 - constant columns
        out = []
        for row in rows:
            d = dict(zip(cols, row, strict=True))
            d["info"] = json.loads(d["info"]) if d["info"] else None
            d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
            out.append(d)
        return out

    def states(self) -> dict[str, dict[str, Any]]:
        rows = self._query("SELECT dev, state, boot, t_device, t_received FROM states")
        return {r[0]: {"state": r[1], "boot": r[2], "t": r[3], "t_received": r[4]} for r in rows}

    def quarantine_tally(self) -> dict[str, QuarantineCount]:
        """verdict -> rows kept and rows evicted by the bound."""
        if not self._tallied:
            rows = self._query("SELECT verdict, COUNT(*), 0 FROM quarantine GROUP BY verdict")
        else:
            rows = self._query(
                "SELECT verdict, kept, evicted FROM quarantine_tally WHERE kept > 0 OR evicted > 0"
            )
        return {v: QuarantineCount(k, e) for v, k, e in sorted(rows)}

    def quarantine_counts(self) -> dict[str, int]:
        """verdict -> every message ever quarantined with it (kept + evicted)."""
        return {v: c.total for v, c in self.quarantine_tally().items()}

    def quarantine_by_device(self) -> dict[str, int]:
        return dict(self._query("SELECT dev, COUNT(*) FROM quarantine WHERE dev IS NOT NULL GROUP BY dev"))

    def quarantine(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT id, t_received, topic, dev, verdict, reason, cose FROM quarantine"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("id", "t_received", "topic", "dev", "verdict", "reason", "cose")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def gaps(self, dev: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT dev, boot, first, last, source, why, t_ms FROM gaps"
        rows = self._query(sql + (" WHERE dev = ?" if dev else "") + " ORDER BY id", (dev,) if dev else ())
        keys = ("dev", "boot", "first", "last", "source", "why", "t_ms")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def messages(self, dev: str | None = None) -> Iterator[StoredMessage]:
        """Every stored message (of ``dev``), in (dev, boot, seq) order, streamed."""
        columns = "SELECT dev, boot, seq, kind, pipe, msg_id, prev, t_device, t_received, cose FROM messages"
        if dev:
            rows = self.iter_rows(columns + " WHERE dev = ? ORDER BY dev, boot, seq", (dev,))
        else:
            rows = self.iter_rows(columns + " ORDER BY dev, boot, seq")
        for r in rows:
            yield StoredMessage(*r)

    def count_messages(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM messages")[0][0])

    def models(self) -> dict[str, list[str]]:
        """dev -> model hashes (hex) of its stored results, most used first."""
        out: dict[str, list[str]] = {}
        for dev, model, _n in self._query(
            "SELECT dev, model, COUNT(*) AS n FROM messages WHERE model IS NOT NULL"
            " GROUP BY dev, model ORDER BY dev, n DESC"
        ):
            out.setdefault(dev, []).append(bytes(model).hex())
        return out

    def iter_rows(self, sql: str, args: Iterable[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Stream the rows of a read query in chunks of :data:`FETCH_ROWS` (memory stays flat)."""
        with self._lock:
            try:
                cur = self._db.execute(sql, tuple(args))
            except sqlite3.Error as e:
                raise StoreError(f"store {self.path}: {e}") from e
        try:
            while True:
                with self._lock:
                    chunk = cur.fetchmany(FETCH_ROWS)
                if not chunk:
                    return
                yield from chunk
        finally:
            cur.close()


def _check(c: Candidate, known: dict[int, tuple[bytes, bytes]]) -> tuple[Verdict | None, str]:
    """A candidate against its stored neighbours (``known``: seq -> (msg_id, prev) of its (dev, boot)),
    in the chain verifier's order (edge_protocol/chain.py), so that a collector sharing the store reaches
    the same verdict: its own seq first (DUPLICATE, EQUIVOCATION), then seq - 1 and seq + 1 (FORK)."""
    same = known.get(c.seq)
    if same is not None:
        if same[0] == c.msg_id:
            return Verdict.DUPLICATE, "already stored"
        return Verdict.EQUIVOCATION, f"boot {c.boot} seq {c.seq} is stored with another msg_id"
    before = known.get(c.seq - 1)
    if before is not None and before[0] != c.prev:
        return Verdict.FORK, f"prev does not match the stored message at seq {c.seq - 1}"
    after = known.get(c.seq + 1)
    if after is not None and after[1] != c.msg_id:
        return Verdict.FORK, f"the stored message at seq {c.seq + 1} names another prev"
    return None, ""


DEFAULT_STORE_NAME = "store.db"


def default_store_path(home_root: Path) -> Path:
    """``<fleet home>/store.db``: where ``fleet collect`` writes and status/stats/export read."""
    return Path(home_root) / DEFAULT_STORE_NAME
