"""The demo's collector: the real in-process :class:`~fleet_cli.collector.service.Collector`, and a read-only
view of its counters and store for the live table (which attack got which verdict)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet_cli.collector.service import Collector

if TYPE_CHECKING:
    from fleet_cli.demo.run import AttackRecord


def _store(store_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=1.0, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    return conn


def latest_result_raw(store_path: Path, dev: str) -> bytes | None:
    """A genuine stored result of ``dev`` (the attacker replays it)."""
    with _store(store_path) as conn:
        row = conn.execute(
            "SELECT cose FROM messages WHERE dev = ? AND kind = 1 ORDER BY id DESC LIMIT 1", (dev,)
        ).fetchone()
    return bytes(row[0]) if row else None


@dataclass
class CollectorView:
    accepted: int
    rejected: dict[str, int]
    duplicates: int
    rate: float
    gaps: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    devices: dict[str, dict[str, Any]]
    _store_path: Path
    log_size: int = 0  # leaves in the fleet log (docs/log.md)
    checkpoint_size: int | None = None  # the tree size of the latest signed checkpoint

    def verdict_of_attack(self, attack: AttackRecord) -> str | None:
        """What the collector decided about an injected message: its quarantine verdict, or
        DUPLICATE when the bytes are stored exactly once and the duplicate count rose after it."""
        with _store(self._store_path) as conn:
            row = conn.execute(
                "SELECT verdict FROM quarantine WHERE cose = ? LIMIT 1", (attack.data,)
            ).fetchone()
            if row:
                return str(row[0])
            stored = conn.execute("SELECT count(*) FROM messages WHERE cose = ?", (attack.data,)).fetchone()[
                0
            ]
        if stored == 1 and self.duplicates > attack.duplicates_before:
            return "DUPLICATE"
        if stored > 1:
            return "STORED TWICE"
        return None


def collector_view(collector: Collector | None, store_path: Path) -> CollectorView:
    """The collector's counters, with each device's last label and counts from its store."""
    s = collector.snapshot() if collector is not None else None
    if s is None:
        return CollectorView(0, {}, 0, 0.0, 0, None, None, {}, store_path)
    devices: dict[str, dict[str, Any]] = {}
    last_labels: dict[str, str] = {}
    try:
        with _store(store_path) as conn:
            for dev, label in conn.execute(
                "SELECT dev, label FROM messages"
                " WHERE id IN (SELECT max(id) FROM messages WHERE kind = 1 GROUP BY dev)"
            ):
                last_labels[dev] = label or ""
            gaps = dict(conn.execute("SELECT dev, gaps FROM devices").fetchall())
            rejected = dict(conn.execute("SELECT dev, rejected FROM devices").fetchall())
            log_size = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_leaves").fetchone()[0])
            checkpoint = conn.execute("SELECT MAX(size) FROM log_checkpoints").fetchone()[0]
    except sqlite3.Error:
        gaps, rejected, log_size, checkpoint = {}, {}, 0, None
    for dev, n in s.stored_by_device.items():
        devices[dev] = {
            "accepted": n,
            "labels": s.labels_by_device.get(dev, {}),
            "last_label": last_labels.get(dev, ""),
            "gaps": gaps.get(dev, 0),
            "rejected": rejected.get(dev, 0),
        }
    return CollectorView(
        accepted=s.accepted,
        rejected=s.rejected,
        duplicates=s.duplicates,
        rate=s.msgs_per_s,
        gaps=s.gaps,
        latency_p50_ms=s.latency_ms_p50,
        latency_p95_ms=s.latency_ms_p95,
        devices=devices,
        _store_path=store_path,
        log_size=log_size,
        checkpoint_size=None if checkpoint is None else int(checkpoint),
    )
