"""The demo's collector: the real in-process :class:`~fleet_cli.collector.service.Collector`, and a read-only
view of its counters and store for the live table (which attack got which verdict)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_protocol.keys import read_private_key
from fleet_cli.collector.config import CollectorConfig
from fleet_cli.collector.service import Collector
from fleet_cli.mqtt import Protocol

if TYPE_CHECKING:
    from fleet_cli.demo import AttackRecord, Demo

# The demo shows results within a fraction of a second: commit often, ack often.
DEMO_BATCH_DELAY_S = 0.05
DEMO_ACK_INTERVAL_S = 0.5
DEMO_REORDER_TIMEOUT_S = 10.0


def start_collector(demo: Demo) -> Collector:
    mqtt = demo.mqtt
    username = password = None
    if demo.broker_kind == "mosquitto":
        user = demo.home.config.collector_user
        creds = demo._registry.user_credentials(user)
        username, password = creds.username, creds.password
    config = CollectorConfig(
        fleet=demo.home.fleet,
        store_path=demo.store_path,
        host=mqtt["host"],
        port=mqtt["port"],
        username=username,
        password=password,
        tls_ca=demo.home.ca_cert if mqtt.get("tls_ca") else None,
        protocol=Protocol.V311 if demo.broker_kind == "embedded" else Protocol.AUTO,
        client_id="demo-collector",
        batch_max_delay_s=DEMO_BATCH_DELAY_S,
        ack_interval_s=DEMO_ACK_INTERVAL_S,
        reorder_timeout_s=DEMO_REORDER_TIMEOUT_S,
    )
    collector = Collector(config, demo._registry, read_private_key(demo.home.collector_key))
    collector.start()
    return collector


def _store(demo: Demo) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{demo.store_path}?mode=ro", uri=True, timeout=1.0, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    return conn


def latest_result_raw(demo: Demo, dev: str) -> bytes | None:
    """A genuine stored result of ``dev`` (the attacker replays it)."""
    with _store(demo) as conn:
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
    _demo: Demo

    def verdict_of_attack(self, attack: AttackRecord) -> str | None:
        """What the collector decided about an injected message: its quarantine verdict, or
        DUPLICATE when the bytes are stored exactly once and the duplicate count rose after it."""
        with _store(self._demo) as conn:
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


def collector_view(demo: Demo) -> CollectorView:
    s = demo.collector.snapshot() if demo.collector is not None else None
    if s is None:
        return CollectorView(0, {}, 0, 0.0, 0, None, None, {}, demo)
    devices: dict[str, dict[str, Any]] = {}
    last_labels: dict[str, str] = {}
    try:
        with _store(demo) as conn:
            for dev, label in conn.execute(
                "SELECT dev, label FROM messages"
                " WHERE id IN (SELECT max(id) FROM messages WHERE kind = 1 GROUP BY dev)"
            ):
                last_labels[dev] = label or ""
            gaps = dict(conn.execute("SELECT dev, gaps FROM devices").fetchall())
            rejected = dict(conn.execute("SELECT dev, rejected FROM devices").fetchall())
    except sqlite3.Error:
        gaps, rejected = {}, {}
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
        _demo=demo,
    )
