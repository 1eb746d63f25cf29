"""Prometheus metrics of a running collector (``fleet collect --metrics-port P``).

A private :class:`prometheus_client.CollectorRegistry` per collector, never the process-global one,
so that several collectors in one process (tests, ``fleet demo``) do not clash.

Exposed (all prefixed ``edgeseal_collector_``):

* ``messages_total{verdict}`` — counter: every message decided, by verdict (ACCEPTED, DUPLICATE,
  BAD_SIGNATURE, ...);
* ``ingest_rate`` — gauge: accepted messages per second over the last batch interval;
* ``batch_seconds`` — histogram: time to commit one batch to the store;
* ``batch_size`` — histogram: messages per batch;
* ``devices_online`` — gauge: devices whose last state is online (docs/protocol.md §5 boot rule);
* ``gap_seqs_total`` — counter: seqs reported missing after the reorder timeout;
* ``quarantine_size`` — gauge: rows in the quarantine table (the store's, whoever wrote them);
* ``quarantine_evicted`` — gauge: quarantine rows evicted since the store was created, by the bound or
  by hand (monotonic; each is still counted per verdict in the store, ``fleet status`` shows them);
* ``quarantine_max_rows`` — gauge: the bound (``fleet collect --quarantine-max``);
* ``queue_depth`` — gauge: messages received and not yet decided;
* ``internal_errors_total`` — counter: messages whose handling raised an exception (each was still
  quarantined or counted; the collector went on). Anything above 0 is a bug worth reporting.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from fleet_cli.collector.store import Batch, CommitResult

# Commit times from sub-millisecond (a lone message) to a stuck disk.
BATCH_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000)


class CollectorMetrics:
    def __init__(self, *, quarantine_kept: int, quarantine_evicted: int, quarantine_max: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        p = "edgeseal_collector_"
        self.messages = Counter(
            p + "messages_total", "Messages decided, by verdict.", ["verdict"], registry=self.registry
        )
        self.rate = Gauge(
            p + "ingest_rate", "Accepted messages per second (last interval).", registry=self.registry
        )
        self.batch_seconds = Histogram(
            p + "batch_seconds", "Time to commit one batch.", buckets=BATCH_BUCKETS_S, registry=self.registry
        )
        self.batch_size = Histogram(
            p + "batch_size", "Messages per batch.", buckets=SIZE_BUCKETS, registry=self.registry
        )
        self.online = Gauge(
            p + "devices_online", "Devices whose last state is online.", registry=self.registry
        )
        self.gaps = Counter(
            p + "gap_seqs_total", "Seqs missing after the reorder timeout.", registry=self.registry
        )
        self.quarantine = Gauge(
            p + "quarantine_size", "Rows in the quarantine table.", registry=self.registry
        )
        self.evicted = Gauge(
            p + "quarantine_evicted",
            "Quarantine rows evicted (raw bytes deleted, still counted) since the store was created.",
            registry=self.registry,
        )
        self.quarantine_max = Gauge(
            p + "quarantine_max_rows", "The quarantine table's bound (rows).", registry=self.registry
        )
        self.queue = Gauge(p + "queue_depth", "Messages received, not yet decided.", registry=self.registry)
        self.internal_errors = Counter(
            p + "internal_errors_total",
            "Messages whose handling raised (each still quarantined or counted).",
            registry=self.registry,
        )
        self.quarantine.set(quarantine_kept)
        self.evicted.set(quarantine_evicted)
        self.quarantine_max.set(quarantine_max)
        self._mark = time.monotonic()
        self._accepted_since_mark = 0

    def observe_batch(
        self, batch: Batch, result: CommitResult, elapsed_s: float, online: int, queue_depth: int
    ) -> None:
        stored = len(result.stored)
        dups = sum(batch.duplicates.values()) + len(result.duplicates)
        if stored:
            self.messages.labels("ACCEPTED").inc(stored)
        if dups:
            self.messages.labels("DUPLICATE").inc(dups)
        rejected = [*batch.rejected, *result.conflicts]
        for r in rejected:
            self.messages.labels(r.verdict.value).inc()
        if result.quarantine is not None:  # the store's figures: right with several collectors too
            self.quarantine.set(result.quarantine.kept)
            self.evicted.set(result.quarantine.evicted)
        gap_seqs = sum(g.last - g.first + 1 for g in result.gaps)
        if gap_seqs:
            self.gaps.inc(gap_seqs)
        self.batch_seconds.observe(elapsed_s)
        self.batch_size.observe(stored + dups + len(rejected))
        self.online.set(online)
        self.queue.set(queue_depth)
        self._accepted_since_mark += stored
        now = time.monotonic()
        if now - self._mark >= 1.0:
            self.rate.set(self._accepted_since_mark / (now - self._mark))
            self._mark = now
            self._accepted_since_mark = 0

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``addr:port`` in a daemon thread; returns the server (``shutdown()``)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
