"""The durable outbox: sealing, the chain head and the append in one SQLite transaction.

Why it exists: paho keeps its session only in memory (docs/field-notes.md "paho-mqtt 2.x"), and a
broker's PUBACK is not proof of storage. Every device message is sealed *into* this outbox and published
from it; it leaves only when a collector's signed ack covers it (``fleet-ack``) or the broker acknowledged it
(``broker-ack``), docs/protocol.md §5.

Invariants (docs/protocol.md §6):

1. One chain per device: within a boot, seq rises by one for every device message, birth = 0;
   ``prev`` is the msg_id of the previous message, across boots too (the head survives restarts).
2. Sealing a message, appending it and moving the chain head happen in ONE transaction: after a
   ``kill -9`` at any moment the database holds either all three or none, so a sealed message is
   never lost and a seq is never reused. Nothing is published before its transaction committed.
3. The outbox is bounded in bytes. When a message does not fit, the oldest entries are dropped
   (down to :data:`LOW_WATER` of the bound, so drops come in batches) and, in the same transaction,
   a gap record is sealed per affected boot: ``{boot, from, to, n, why}``. Dropping an older gap
   record moves its coverage into the new one, so every sealed seq stays either stored, delivered,
   or inside the range of a gap record still on its way.
4. Entries are only ever dropped oldest first, so every key at or below :attr:`Outbox.drop_floor`
   is gone: the session skips them without a lookup.

The same database keeps the command replay cache and a few flags (enrolled). The cache's rule
(docs/agent.md "Commands"): an id is pruned only once its command is refused as expired by the same
clock reading (``exp + skew < now``), and pruning raises a durable *floor* to the highest exp it
pruned; a command whose exp is at or below the floor is refused like a replay. So an id is never
forgotten while its command could be accepted, and once forgotten its command stays refused whatever
the clock says later (set back, or a restart): the floor only moves up and is stored in the same
transaction as the prune. The floor holds exps the operator signed, not device clock readings, so a
clock that ran ahead and was set back refuses only commands expiring before some already pruned one.

All methods are thread-safe (one connection, one lock): pipelines seal, the session deletes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import Synchronous
from edge_agent.errors import IdentityError, OutboxError
from edge_protocol.envelope import seal
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind

log = logging.getLogger(__name__)

ZERO_ID = bytes(32)  # docs/protocol.md §6: prev of the device's very first message
# After an overflow, entries are dropped until the outbox is at 3/4 of its bound: one gap record per
# quarter of the outbox instead of one per message (each gap record costs ~200 bytes of the bound).
LOW_WATER = 0.75
# Room kept for the gap records sealed with an overflow: one ~200-byte envelope per affected boot;
# 4 KiB covers ~20 boots in one batch.
GAP_RESERVE = 4096
# Commands kept in the replay cache at most; expired ids are pruned first. The command TTL bound
# (commands.MAX_COMMAND_TTL_S) and the operator's rate keep the live set far below this.
MAX_REPLAY_IDS = 10_000
# The meta row holding the replay cache's floor: the highest exp (ms) ever pruned.
EXP_FLOOR_FLAG = "command_exp_floor"
WHY_FULL = "outbox full"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    boot INTEGER NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL,
    topic TEXT NOT NULL, retain INTEGER NOT NULL, cose BLOB NOT NULL, size INTEGER NOT NULL,
    cover_boot INTEGER, cover_from INTEGER, cover_to INTEGER, cover_n INTEGER,
    PRIMARY KEY (boot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS head (
    one INTEGER PRIMARY KEY CHECK (one = 0), boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    msg_id BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (id BLOB PRIMARY KEY, exp INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS commands_exp ON commands (exp);
"""


@dataclass(frozen=True)
class Draft:
    """A device message to seal: its kind, its kind-specific payload keys, where it goes."""

    kind: Kind
    body: Mapping[int, object]
    topic: str
    retain: bool = False


@dataclass(frozen=True)
class Entry:
    """A sealed message in the outbox."""

    boot: int
    seq: int
    kind: Kind
    topic: str
    retain: bool
    cose: bytes
    msg_id: bytes = b""

    @property
    def key(self) -> tuple[int, int]:
        return (self.boot, self.seq)


@dataclass(frozen=True)
class Head:
    boot: int
    seq: int
    msg_id: bytes


@dataclass(frozen=True)
class GapInfo:
    boot: int
    first: int
    last: int
    n: int


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    """SQLite-backed, byte-bounded store of sealed messages; the keeper of the device's chain head."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        synchronous: Synchronous = Synchronous.NORMAL,
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock_ms = clock_ms
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.value.upper()}")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT boot, seq, msg_id FROM head WHERE one = 0").fetchone()
            self._stored_head = Head(int(row[0]), int(row[1]), bytes(row[2])) if row else None
            b = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM entries").fetchone()
        except sqlite3.Error as e:
            raise OutboxError(f"cannot open outbox {self.path}: {e}") from e
        self._bytes = int(b[0])
        self._depth = int(b[1])
        self._signer: Signer | None = None
        self._dev = ""
        self._fleet = ""
        self._boot = 0
        self._next_seq = 0
        self._prev = self._stored_head.msg_id if self._stored_head else ZERO_ID
        self.drop_floor: tuple[int, int] = (-1, -1)
        self.dropped = 0  # entries dropped for lack of room since start
        self.gaps = 0  # gap records sealed since start

    # -- chain ------------------------------------------------------------------------------------

    @property
    def stored_head(self) -> Head | None:
        """The chain head found at open (the last message of an earlier boot), None for a new device."""
        return self._stored_head

    def start_boot(self, signer: Signer, dev: str, fleet: str, boot: int) -> None:
        """Begin sealing boot ``boot`` (seq 0 next). The boot must be above every stored one."""
        if self._stored_head is not None and boot <= self._stored_head.boot:
            raise IdentityError(
                f"boot {boot} is not above the chain head's boot {self._stored_head.boot}",
                hint="the boot counter file was reset or restored from a backup",
            )
        self._signer, self._dev, self._fleet, self._boot = signer, dev, fleet, boot
        self._next_seq = 0

    @property
    def boot(self) -> int:
        return self._boot

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _payload(self, draft: Draft, seq: int, prev: bytes, t_ms: int) -> dict[int, object]:
        payload: dict[int, object] = {
            Key.V: 1,
            Key.DEV: self._dev,
            Key.BOOT: self._boot,
            Key.SEQ: seq,
            Key.PREV: prev,
            Key.T: t_ms,
            Key.KIND: int(draft.kind),
        }
        payload.update(draft.body)
        return payload

    def seal_many(self, drafts: Sequence[Draft]) -> list[Entry]:
        """Seal and append drafts in one transaction; return the new entries (gap records included).

        A draft that cannot be sealed (EnvelopeError, e.g. a NaN) raises before anything is written.
        """
        if self._signer is None:
            raise OutboxError("start_boot() was not called")
        signer = self._signer
        with self._lock:
            seq, prev = self._next_seq, self._prev
            added_bytes = 0
            removed: list[tuple[int, int, int]] = []  # (boot, seq, size)
            out: list[Entry] = []
            rows: list[tuple[Any, ...]] = []
            t_ms = self._clock_ms()

            def add(draft: Draft, cover: GapInfo | None = None) -> int:
                nonlocal seq, prev, added_bytes
                sealed = seal(self._payload(draft, seq, prev, t_ms), signer, self._fleet)
                size = len(sealed.cose)
                out.append(
                    Entry(self._boot, seq, draft.kind, draft.topic, draft.retain, sealed.cose, sealed.msg_id)
                )
                rows.append(
                    (
                        self._boot,
                        seq,
                        int(draft.kind),
                        draft.topic,
                        int(draft.retain),
                        sealed.cose,
                        size,
                        cover.boot if cover else None,
                        cover.first if cover else None,
                        cover.last if cover else None,
                        cover.n if cover else None,
                    )
                )
                seq += 1
                prev = sealed.msg_id
                added_bytes += size
                return size

            try:
                self._db.execute("BEGIN IMMEDIATE")
                for draft in drafts:
                    add(draft)
                    if self._bytes + added_bytes - sum(r[2] for r in removed) > self.max_bytes:
                        for gap in self._drop_oldest(removed, added_bytes):
                            add(self._gap_draft(gap), gap)
                self._db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute(
                    "INSERT INTO head (one, boot, seq, msg_id) VALUES (0, ?, ?, ?) "
                    "ON CONFLICT(one) DO UPDATE SET boot = excluded.boot, seq = excluded.seq, "
                    "msg_id = excluded.msg_id",
                    (self._boot, seq - 1, prev),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            # Committed: only now does the in-memory view move on.
            self._next_seq, self._prev = seq, prev
            freed = sum(r[2] for r in removed)
            self._bytes += added_bytes - freed
            self._depth += len(rows) - len(removed)
            if removed:
                self.dropped += len(removed)
                self.drop_floor = max(self.drop_floor, *((b, s) for b, s, _ in removed))
                self.gaps += sum(1 for e in out if e.kind is Kind.GAP)
            return out

    def seal_one(self, draft: Draft) -> Entry:
        """Seal one draft; with an overflow the gap record(s) are sealed too and published on their own."""
        return self.seal_many([draft])[-1]

    def _gap_draft(self, gap: GapInfo) -> Draft:
        from edge_protocol.topics import Channel, device_topic

        body: dict[int, object] = {
            Key.GAP: {"boot": gap.boot, "from": gap.first, "to": gap.last, "n": gap.n, "why": WHY_FULL}
        }
        return Draft(Kind.GAP, body, device_topic(self._fleet, self._dev, Channel.GAP))

    def _drop_oldest(self, removed: list[tuple[int, int, int]], pending_bytes: int) -> list[GapInfo]:
        """Delete the oldest entries (inside the open transaction) until the low-water mark is reached."""
        target = int(self.max_bytes * LOW_WATER) - GAP_RESERVE
        current = self._bytes + pending_bytes - sum(r[2] for r in removed)
        ranges: dict[int, list[int]] = {}  # boot -> [first, last, n]
        cur = self._db.execute(
            "SELECT boot, seq, size, cover_boot, cover_from, cover_to, cover_n "
            "FROM entries ORDER BY boot, seq"
        )
        batch: list[tuple[int, int, int]] = []
        gone = {(r[0], r[1]) for r in removed}
        for boot, seq, size, cb, cf, ct, cn in cur:
            if current <= target:
                break
            if (boot, seq) in gone:
                continue
            batch.append((int(boot), int(seq), int(size)))
            current -= int(size)
            self._widen(ranges, int(boot), int(seq), int(seq), 1)
            if cb is not None:
                self._widen(ranges, int(cb), int(cf), int(ct), int(cn))
        cur.close()
        if current > target:
            # Everything stored is gone and the new messages alone exceed the bound: the bound is
            # below a handful of envelopes, which config refuses (MIN_OUTBOX_BYTES).
            log.warning("outbox bound %d bytes is too small for the messages being sealed", self.max_bytes)
        self._db.executemany("DELETE FROM entries WHERE boot = ? AND seq = ?", [(b, s) for b, s, _ in batch])
        removed.extend(batch)
        if batch:
            log.warning("outbox full (%d bytes): dropped %d oldest entries", self.max_bytes, len(batch))
        return [GapInfo(b, r[0], r[1], r[2]) for b, r in sorted(ranges.items())]

    @staticmethod
    def _widen(ranges: dict[int, list[int]], boot: int, first: int, last: int, n: int) -> None:
        r = ranges.get(boot)
        if r is None:
            ranges[boot] = [first, last, n]
        else:
            r[0], r[1], r[2] = min(r[0], first), max(r[1], last), r[2] + n

    # -- delivery ---------------------------------------------------------------------------------

    def ack_upto(self, boot: int, seq: int) -> int:
        """A collector's ack: every seq <= ``seq`` of ``boot`` is stored; delete those entries."""
        return self._delete("DELETE FROM entries WHERE boot = ? AND seq <= ? RETURNING size", (boot, seq))

    def ack_one(self, boot: int, seq: int) -> int:
        """Broker ack of one entry (``broker-ack`` delivery)."""
        return self._delete("DELETE FROM entries WHERE boot = ? AND seq = ? RETURNING size", (boot, seq))

    def _delete(self, sql: str, args: tuple[int, int]) -> int:
        with self._lock:
            try:
                sizes = [int(r[0]) for r in self._db.execute(sql, args).fetchall()]
            except sqlite3.Error as e:
                raise OutboxError(f"outbox delete failed: {e}") from e
            self._bytes -= sum(sizes)
            self._depth -= len(sizes)
            return len(sizes)

    def pending(self, after: tuple[int, int] | None = None, limit: int = 256) -> list[Entry]:
        """Stored entries in chain order, strictly after ``after``."""
        b, s = after if after is not None else (-1, -1)
        with self._lock:
            rows = self._db.execute(
                "SELECT boot, seq, kind, topic, retain, cose FROM entries "
                "WHERE boot > ? OR (boot = ? AND seq > ?) ORDER BY boot, seq LIMIT ?",
                (b, b, s, limit),
            ).fetchall()
        return [Entry(int(r[0]), int(r[1]), Kind(r[2]), str(r[3]), bool(r[4]), bytes(r[5])) for r in rows]

    def contains(self, boot: int, seq: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM entries WHERE boot = ? AND seq = ?", (boot, seq)).fetchone()
        return row is not None

    # -- flags and the replay cache -----------------------------------------------------------------

    def get_flag(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_flag(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (name, value),
            )

    def remember_command(self, command_id: bytes, exp_ms: int, now_ms: int, *, skew_ms: int) -> bool | None:
        """Record a command id: True if new, False if it may have been seen, None if the cache is full.

        ``skew_ms`` is the skew the expiry check allows (``exp + skew_ms < now_ms`` is expired): ids
        are pruned by exactly that test, and a command at or below the floor (module docstring) is
        False too. A replay costs a few index look-ups whatever the cache holds; only a new id also
        counts it (at most :data:`MAX_REPLAY_IDS` rows).
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    fresh = self._remember(command_id, exp_ms, now_ms - skew_ms)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise OutboxError(f"replay cache failed: {e}") from e
            return fresh

    def _remember(self, command_id: bytes, exp_ms: int, expired_below: int) -> bool | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (EXP_FLOOR_FLAG,)).fetchone()
        floor = int(row[0]) if row else None
        (pruned,) = self._db.execute(
            "SELECT MAX(exp) FROM commands WHERE exp < ?", (expired_below,)
        ).fetchone()
        if pruned is not None:
            # The floor moves in the same transaction as the prune: no id is ever forgotten without it.
            floor = max(int(pruned), floor) if floor is not None else int(pruned)
            self._db.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (EXP_FLOOR_FLAG, str(floor)),
            )
            self._db.execute("DELETE FROM commands WHERE exp < ?", (expired_below,))
        if floor is not None and exp_ms <= floor:
            return False  # its id may have been pruned: refused whatever the clock says
        if self._db.execute("SELECT 1 FROM commands WHERE id = ?", (command_id,)).fetchone():
            return False
        (count,) = self._db.execute("SELECT COUNT(*) FROM commands").fetchone()
        if int(count) >= MAX_REPLAY_IDS:
            return None
        self._db.execute("INSERT INTO commands (id, exp) VALUES (?, ?)", (command_id, exp_ms))
        return True

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # pragma: no cover - closing never matters for durability
                log.debug("outbox close failed", exc_info=True)
