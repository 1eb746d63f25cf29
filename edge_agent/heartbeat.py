"""Heartbeat metrics (docs/protocol.md §3 key 16), read from /proc and /sys where they exist.

Every field is a finite number or a small map of them; a metric the system does not offer (no
thermal zone in a container) is left out rather than sent as a placeholder.

Fields: ``cpu`` (% of one core used by the agent since the last heartbeat), ``rss_mb``, ``temp_c``
(highest thermal zone), ``disk_free_mb`` (state dir's file system), ``uptime_s``, ``outbox_depth``,
``outbox_bytes``, ``lat_p50_us`` / ``lat_p95_us`` (inference, all pipelines), ``drops`` (outbox
overflow), ``errors`` (skipped windows), ``results``, and ``links``: per serial port the link counters
(``samples``, ``lost``, ``crc_errors``, ``cobs_errors``, ``bad_lines``, ``reconnects``, ``outages``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

# The link counters that go into a heartbeat; the rest stay in ``status``.
LINK_FIELDS = ("samples", "lost", "crc_errors", "cobs_errors", "bad_lines", "reconnects", "outages")
_THERMAL = Path("/sys/class/thermal")


def rss_mb() -> float:
    """Resident set size of this process in MiB (from /proc/self/status), 0.0 if unknown."""
    try:
        with Path("/proc/self/status").open(encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return 0.0


def temperature_c(root: Path = _THERMAL) -> float | None:
    """The highest thermal zone temperature in °C, None when /sys has none."""
    best: float | None = None
    try:
        zones = list(root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for zone in zones:
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        best = value if best is None else max(best, value)
    return None if best is None else round(best, 1)


class CpuMeter:
    """% of one core used by this process between two calls (``os.times`` user + system)."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float]:
        t = os.times()
        return (t.user + t.system, time.monotonic())

    def percent(self) -> float:
        now = self._sample()
        used = now[0] - self._last[0]
        elapsed = now[1] - self._last[1]
        self._last = now
        return round(100.0 * used / elapsed, 1) if elapsed > 0 else 0.0


def system_metrics(cpu: CpuMeter, state_dir: Path, started: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "cpu": cpu.percent(),
        "rss_mb": rss_mb(),
        "uptime_s": int(time.monotonic() - started),
    }
    temp = temperature_c()
    if temp is not None:
        metrics["temp_c"] = temp
    with contextlib.suppress(OSError):
        metrics["disk_free_mb"] = shutil.disk_usage(state_dir).free // (1024 * 1024)
    return metrics


def link_metrics(stats: dict[str, int]) -> dict[str, int]:
    return {k: int(stats[k]) for k in LINK_FIELDS if k in stats}
