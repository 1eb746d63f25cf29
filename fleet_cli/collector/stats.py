"""What a running collector counts (:class:`CollectorStats`, a consistent copy of :class:`_Counters`)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fleet_cli.collector.aggregate import device_online
from fleet_cli.collector.config import (
    LATENCY_SAMPLES,
)

log = logging.getLogger(__name__)


# ---- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectorStats:
    accepted: int
    rejected: dict[str, int]  # verdict -> count (DUPLICATE not included)
    duplicates: int
    stored_by_device: dict[str, int]
    labels_by_device: dict[str, dict[str, int]]
    gaps: int  # seqs reported missing after the reorder timeout (and still missing from the store)
    late: int  # messages accepted after their seq had been reported as a gap
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    msgs_per_s: float
    batches: int
    queue_depth: int
    online: int
    dropped_qos0: int
    quarantine_evicted: int  # quarantine rows this collector's commits evicted (the bound)
    error: str | None
    # Every message taken from the broker is one of: accepted, a duplicate, rejected (quarantined:
    # received == accepted + duplicates + sum(rejected) + states once idle), or an applied state.
    received: int = 0
    states: int = 0  # advisory state messages applied
    internal_errors: int = 0  # messages whose handling raised; each was still quarantined

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "stored_by_device": dict(self.stored_by_device),
            "labels_by_device": {k: dict(v) for k, v in self.labels_by_device.items()},
            "gaps": self.gaps,
            "late": self.late,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "msgs_per_s": self.msgs_per_s,
            "batches": self.batches,
            "queue_depth": self.queue_depth,
            "online": self.online,
            "dropped_qos0": self.dropped_qos0,
            "quarantine_evicted": self.quarantine_evicted,
            "error": self.error,
            "received": self.received,
            "states": self.states,
            "internal_errors": self.internal_errors,
        }


@dataclass
class _Counters:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    by_device: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    gaps: int = 0
    batches: int = 0
    dropped_qos0: int = 0
    quarantine_evicted: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    rate_marks: deque[tuple[float, int]] = field(default_factory=deque)
    states: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    boots: dict[str, int] = field(default_factory=dict)
    received: int = 0
    states_applied: int = 0
    internal_errors: int = 0

    def online(self) -> int:
        """Devices that count as online by :func:`edge_protocol.state.online`."""
        return sum(
            device_online({"state": state, "boot": boot}, self.boots.get(dev)) == "online"
            for dev, (state, boot) in self.states.items()
        )
