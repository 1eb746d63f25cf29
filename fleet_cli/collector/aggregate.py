"""Aggregation of stored results (docs/collector.md "Commands reading the store"): pure functions, no I/O.

* per group (device, pipe, model hash or label) and per time window: count, label counts and shares,
  score mean / min / max / p50 / p95;
* fleet-wide consensus per window: each device's majority label in the window, then how many
  devices agree on the most common of those;
* freshness per device (last seen, online, gaps, drops) is :func:`device_online` plus the store.

Windows are aligned to multiples of the window length since the epoch, on the collector's receive
time (the device clock is advisory, docs/protocol.md §3). Percentiles are nearest-rank.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edge_protocol.state import Presence, State, online

# Longest window / look-back a duration may name (a year); longer is a typo.
MAX_DURATION_S = 366 * 24 * 3600
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
SPARK = "▁▂▃▄▅▆▇█"


class By(str, enum.Enum):
    DEVICE = "device"
    PIPE = "pipe"
    MODEL = "model"
    LABEL = "label"

    def __str__(self) -> str:
        return self.value


def parse_duration(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` -> seconds; ValueError otherwise."""
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h or 1d")
    if not 0 < total <= MAX_DURATION_S:
        raise ValueError(f"{text!r} is out of range (more than 0, at most 366 days)")
    return total


def parse_since(text: str, now_ms: int) -> int:
    """A look-back (``10m``) or an ISO 8601 time (``2026-05-01T12:00``, UTC unless it says) -> ms."""
    try:
        return now_ms - int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (10m, 2h) nor an ISO time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty); the collector's latency
    percentiles use it too."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Point:
    """One stored result, as aggregation needs it."""

    dev: str
    pipe: str
    model: str  # hex
    label: str | None
    score: float | None
    t_ms: int

    def key(self, by: By) -> str:
        if by is By.DEVICE:
            return self.dev
        if by is By.PIPE:
            return self.pipe
        if by is By.MODEL:
            return self.model
        return self.label if self.label is not None else "(none)"


@dataclass
class _Acc:
    count: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)

    def add(self, p: Point) -> None:
        self.count += 1
        if p.label is not None:
            self.labels[p.label] += 1
        if p.score is not None:
            self.scores.append(p.score)

    def summary(self) -> dict[str, Any]:
        scores = sorted(self.scores)
        n_lab = sum(self.labels.values())
        return {
            "count": self.count,
            "labels": dict(self.labels.most_common()),
            "label_shares": {k: round(v / n_lab, 4) for k, v in self.labels.most_common()} if n_lab else {},
            "score": {
                "n": len(scores),
                "mean": sum(scores) / len(scores) if scores else None,
                "min": scores[0] if scores else None,
                "max": scores[-1] if scores else None,
                "p50": percentile(scores, 50),
                "p95": percentile(scores, 95),
            },
        }


class Aggregator:
    """Feed points one at a time (memory: per group and window, the scores only)."""

    def __init__(self, window_s: float, by: By = By.DEVICE) -> None:
        if window_s <= 0:
            raise ValueError("the window must be positive")
        self.window_ms = max(1, int(window_s * 1000))
        self.by = by
        self._groups: dict[tuple[str, int], _Acc] = {}
        self._totals: dict[str, _Acc] = {}
        self._series: Counter[int] = Counter()
        self._dev_labels: dict[int, dict[str, Counter[str]]] = {}

    def window_of(self, t_ms: int) -> int:
        return t_ms - t_ms % self.window_ms

    def add(self, p: Point) -> None:
        w = self.window_of(p.t_ms)
        k = p.key(self.by)
        self._groups.setdefault((k, w), _Acc()).add(p)
        self._totals.setdefault(k, _Acc()).add(p)
        self._series[w] += 1
        if p.label is not None:
            self._dev_labels.setdefault(w, {}).setdefault(p.dev, Counter())[p.label] += 1

    def groups(self) -> list[dict[str, Any]]:
        return [
            {"key": k, "window_start_ms": w, **acc.summary()} for (k, w), acc in sorted(self._groups.items())
        ]

    def totals(self) -> list[dict[str, Any]]:
        return [{"key": k, **acc.summary()} for k, acc in sorted(self._totals.items())]

    def series(self, start_ms: int | None = None, end_ms: int | None = None) -> list[tuple[int, int]]:
        """(window start, results) for every window from start to end, zeros included."""
        if not self._series and start_ms is None:
            return []
        lo = self.window_of(start_ms) if start_ms is not None else min(self._series)
        hi = self.window_of(end_ms) if end_ms is not None else max(self._series)
        return [(w, self._series.get(w, 0)) for w in range(lo, hi + 1, self.window_ms)]

    def consensus(self) -> list[dict[str, Any]]:
        """Per window: devices reporting, the label most devices' majority agrees on, how many agree."""
        out = []
        for w in sorted(self._dev_labels):
            per_dev = self._dev_labels[w]
            majority = Counter(_majority(c) for c in per_dev.values())
            label, agree = sorted(majority.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            out.append(
                {
                    "window_start_ms": w,
                    "devices": len(per_dev),
                    "label": label,
                    "agree": agree,
                    "share": round(agree / len(per_dev), 4),
                }
            )
        return out


def _majority(labels: Counter[str]) -> str:
    """The device's most frequent label in the window; ties broken by name, so the result is stable."""
    return sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def sparkline(values: list[int]) -> str:
    """Unicode block sparkline, scaled to the maximum; zeros show as the lowest block."""
    if not values:
        return ""
    top = max(values)
    if top == 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, (v * (len(SPARK) - 1) + top - 1) // top)] for v in values)


def device_online(state: dict[str, Any] | None, current_boot: int | None) -> str:
    """``online``, ``offline`` or ``unknown`` (no state seen) for a state row of the store
    (``Store.states``), by the one rule of :func:`edge_protocol.state.online`."""
    if state is None:
        return "unknown"
    presence = Presence.ONLINE if state.get("state") == Presence.ONLINE.value else Presence.OFFLINE
    boot = state.get("boot")
    counts = online(State(presence, boot if isinstance(boot, int) else None, None), current_boot)
    return "online" if counts else "offline"
