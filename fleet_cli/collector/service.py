"""The collector: receive device messages over MQTT, verify, store, acknowledge (docs/collector.md;
docs/protocol.md §4 to §6).

Threads and hand-offs (docs/field-notes.md "paho-mqtt 2.x": one network thread, never block in a callback):

    paho network thread --on_message--> queue --> worker thread: verify, chain, batch,
                                                  commit, PUBACK, acks, republish

* The worker alone touches the chain verifier, the store and the registry cache.
* PUBACKs are sent by the worker *after* the batch holding the message has committed
  (``manual_ack``): a message the collector has not stored stays in the broker's persistent session.
  The broker's in-flight window (MQTT 5 Receive Maximum :data:`~fleet_cli.mqtt.RECEIVE_MAXIMUM`,
  Mosquitto ``max_inflight_messages`` for 3.1.1) therefore bounds the queue: a slow worker slows the
  broker down instead of dropping anything. The queue's own bound (:data:`QUEUE_MAX`) is the 16-bit
  packet-id space, which no broker can exceed for QoS 1; QoS 0 messages (none are expected) are
  dropped and counted once it is full.
* Verification of one message, in this order: size (TOO_LARGE), topic (TOPIC_MISMATCH), device in the
  registry (UNKNOWN_DEVICE), revoked (REVOKED), key — the bound key, or for an unbound device a birth
  whose claim matches the one-time token (CLAIM_INVALID), signature and strict decoding
  (UNKNOWN_KEY / BAD_SIGNATURE / MALFORMED, by :func:`edge_protocol.envelope.open_envelope`), payload
  ``dev`` and kind against the topic (TOPIC_MISMATCH), then the chain (DUPLICATE, EQUIVOCATION, FORK).
  The store re-checks each candidate against stored neighbours in the commit transaction, so several
  collectors sharing one store (``--share``) agree whatever the order and split.
* Acks (docs/protocol.md §5) say "every seq <= N of this boot is stored": N is the store's contiguous head of
  (dev, boot) after the commit (seqs the device itself reported dropped count as covered; seqs only
  reported missing by the reorder timeout do not, so the device keeps resending them). At most one ack
  per (dev, boot) every ``ack_interval_s``; a DUPLICATE (the device resending because an ack was lost)
  triggers a fresh ack.
* DUPLICATE is counted (per device in the store, per collector in the stats), not quarantined: the
  stored copy is byte-for-byte the same payload.
* The quarantine holds at most ``quarantine_max`` rows
  (:data:`~fleet_cli.collector.store.QUARANTINE_MAX_ROWS`); the store evicts the oldest rows of the
  devices holding the most and counts them per verdict. The
  first eviction of a run is logged once as a warning; the count is in the stats and the metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from edge_protocol.chain import ChainVerifier, Head
from edge_protocol.envelope import (
    Verdict,
    seal,
)
from edge_protocol.errors import ProtocolError
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import (
    Channel,
    agg_topic,
    device_topic,
    log_checkpoint_topic,
    parse_topic,
    verified_topic,
)
from fleet_cli.collector.aggregate import percentile
from fleet_cli.collector.config import (
    BURST_MAX,
    CHUNK_MAX_MESSAGES,
    EXPIRE_INTERVAL_S,
    MAX_LABELS_PER_DEVICE,
    OTHER_LABEL,
    QUEUE_MAX,
    RATE_WINDOW_S,
    STOP_DRAIN_S,
    CollectorConfig,
    CollectorError,
)
from fleet_cli.collector.intake import (
    Duplicate,
    Intake,
    Outcome,
    RegistryDirectory,
    Route,
    _sanitize,
)
from fleet_cli.collector.log import CHECKPOINT_INTERVAL_S
from fleet_cli.collector.stats import (
    CollectorStats,
    _Counters,
)
from fleet_cli.collector.store import (
    Batch,
    Candidate,
    CommitResult,
    GapRange,
    QuarantineCount,
    Rejected,
    StateUpdate,
    Store,
)
from fleet_cli.collector.verify_worker import (
    Answer,
    Item,
    VerifyPool,
)
from fleet_cli.errors import FleetError
from fleet_cli.mqtt.connection import Connection
from fleet_cli.registry import Registry

if TYPE_CHECKING:  # prometheus_client loads only with --metrics-port
    from edge_protocol.tlog import NoteSigner
    from fleet_cli.collector.metrics import CollectorMetrics

log = logging.getLogger(__name__)


# ---- the collector --------------------------------------------------------------------------


def _merge(results: list[CommitResult]) -> CommitResult:
    """Several commits' results as one (heads: the last one of each (dev, boot))."""
    heads = {(h.dev, h.boot): h for r in results for h in r.heads}
    quarantine = next((r.quarantine for r in reversed(results) if r.quarantine is not None), None)
    return CommitResult(
        [c for r in results for c in r.stored],
        [c for r in results for c in r.conflicts],
        [c for r in results for c in r.duplicates],
        list(heads.values()),
        [g for r in results for g in r.gaps],
        quarantine,
    )


_STOP = object()

Raw = tuple[str, bytes, int, int, int]  # topic, payload, mid, qos, t_received (ms)


class _Answers:
    """A verify worker's answers to one chunk (None: the worker died with it)."""

    __slots__ = ("answers", "chunk_id")

    def __init__(self, chunk_id: int, answers: list[Answer] | None) -> None:
        self.chunk_id = chunk_id
        self.answers = answers


class _Chunk:
    """Messages taken in arrival order; those with a route wait for a verify worker's answers."""

    __slots__ = ("answers", "lost", "raws", "ready", "routes")

    def __init__(self) -> None:
        self.raws: list[Raw] = []
        self.routes: list[Route | None] = []
        self.answers: list[Answer] = []
        self.ready = False
        self.lost = False


class Collector:
    """Verify, store and acknowledge; see the module docstring."""

    def __init__(
        self,
        config: CollectorConfig,
        registry: Registry,
        collector_signer: Signer,
        clock: Callable[[], float] = time.monotonic,
        *,
        log_signer: NoteSigner | None = None,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        self.config = config
        # the fleet log's key (collector/log.py): with it, a signed checkpoint at most every interval
        self._log_signer = log_signer
        self._checkpoint_interval_s = checkpoint_interval_s
        self._registry = registry
        self._signer = collector_signer
        self._clock = clock
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._c = _Counters()
        self._accepting = False
        self._worker: threading.Thread | None = None
        self._link: Connection | None = None
        self._store: Store | None = None
        self._intake: Intake | None = None
        self._pool: VerifyPool | None = None
        self._in_pipeline = 0  # taken from the queue, not yet decided (chunks at the verify workers)
        self._error: str | None = None
        self._done = threading.Event()
        self._ack_due: dict[tuple[str, int], int] = {}  # (dev, boot) -> seq to ack
        self._ack_last: dict[tuple[str, int], float] = {}  # (dev, boot) -> when the last ack went
        self._metrics: CollectorMetrics | None = None
        self._metrics_server: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, restore the chain, connect and subscribe; returns once subscribed."""
        cfg = self.config
        store = Store(cfg.store_path, quarantine_max=cfg.quarantine_max)
        chain = ChainVerifier(cfg.reorder_timeout_s, recall=store.recall, keep_recent=cfg.chain_keep_recent)
        for dev, heads in store.restore_heads().items():
            chain.restore(dev, [Head(b, s, m) for b, s, m in heads])
        for d in store.devices():
            self._c.boots[d["dev"]] = d["boot"]
        for dev, st in store.states().items():
            self._c.states[dev] = (st["state"], st["boot"])
        self._store = store
        self._intake = Intake(cfg.fleet, RegistryDirectory(self._registry, self._clock), chain)
        if cfg.verify_workers > 0:
            self._pool = VerifyPool(
                cfg.fleet, cfg.verify_workers, lambda i, a: self._queue.put(_Answers(i, a))
            )
        if cfg.metrics_port is not None:
            from fleet_cli.collector.metrics import CollectorMetrics

            totals = QuarantineCount.sum(store.quarantine_tally().values())
            self._metrics = CollectorMetrics(
                quarantine_kept=totals.kept,
                quarantine_evicted=totals.evicted,
                quarantine_max=cfg.quarantine_max,
            )
            self._metrics_server = self._metrics.serve(cfg.metrics_port, cfg.metrics_addr)
        self._link = Connection(
            cfg.mqtt_settings(),
            subscriptions=cfg.filters(),
            on_raw=self._on_message,
            manual_ack=True,
            receive_maximum=cfg.receive_maximum,
        )
        self._accepting = True
        self._worker = threading.Thread(target=self._run, name="collector-worker", daemon=True)
        self._worker.start()
        try:
            self._link.connect()
        except BaseException:
            self._accepting = False
            self._queue.put(_STOP)
            self._worker.join()
            self._close_resources()
            raise
        log.info(
            "collecting fleet %s from %s:%d (MQTT %s%s)",
            cfg.fleet,
            cfg.host,
            cfg.port,
            self._link.protocol,
            f", shared group {cfg.share_group}" if cfg.share_group else "",
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages, commit the batch, PUBACK and ack what is stored, disconnect."""
        self._accepting = False
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(_STOP)
            worker.join(timeout)
            if worker.is_alive():
                log.error("the collector's worker did not finish within %.1f s", timeout)
        self._close_resources()

    def _close_resources(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (or a fatal error); then stop cleanly. For ``fleet collect``."""
        stop = threading.Event()

        def handler(signum: int, frame: object) -> None:
            stop.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.is_set() and not self._done.is_set():
                stop.wait(0.2)
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        if self._error is not None:
            raise CollectorError(f"the collector stopped: {self._error}")

    @property
    def failed(self) -> str | None:
        return self._error

    def chain_entries(self) -> int:
        """How many (boot, seq) the chain verifier holds in memory, all devices together (bounded by
        :data:`CHAIN_KEEP_RECENT` per device and boot)."""
        intake = self._intake
        if intake is None:
            return 0
        chain = intake.chain
        return sum(len(chain.snapshot(dev)) for dev in list(chain.devices()))

    # -- intake (paho's network thread: never block) ----------------------------------------------

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if not self._accepting:
            return  # not PUBACKed: it stays in the persistent session for the next start
        if self._queue.qsize() >= QUEUE_MAX:
            if qos == 0:
                with self._lock:
                    self._c.dropped_qos0 += 1
            else:  # cannot happen (see QUEUE_MAX); not PUBACKed, so redelivered after a reconnect
                log.error("collector queue full; message left unacknowledged at the broker")
            return
        self._queue.put((topic, payload, mid, qos, time.time_ns() // 1_000_000))

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a broken store or broker: stop, never ack what was not stored
            log.exception("collector worker failed")
            self._error = str(e) or type(e).__name__
        finally:
            self._done.set()

    def _loop(self) -> None:
        cfg = self.config
        clock = self._clock
        q = self._queue
        assert self._intake is not None
        intake = self._intake
        batch = Batch()
        mids: list[tuple[int, int]] = []
        started: float | None = None
        pending: deque[_Chunk] = deque()  # in arrival order
        waiting: dict[int, _Chunk] = {}  # chunk id -> chunk at a verify worker
        building = _Chunk()
        next_id = 0
        workers = cfg.verify_workers if self._pool is not None else 0
        next_expire = clock() + EXPIRE_INTERVAL_S
        next_agg = clock() + cfg.agg_interval_s
        next_log = clock() + cfg.log_interval_s
        next_checkpoint = clock() + self._checkpoint_interval_s if self._log_signer else math.inf

        def dispatch() -> None:
            nonlocal building, next_id
            chunk, building = building, _Chunk()
            items: list[Item] = [
                (r.dev, r.channel, r.pipe, r.key, raw[1])
                for raw, r in zip(chunk.raws, chunk.routes, strict=True)
                if r is not None
            ]
            pending.append(chunk)
            if not items or self._pool is None:
                chunk.ready = True
                return
            waiting[next_id] = chunk
            self._pool.submit(next_id, items)
            next_id += 1

        def answered(a: _Answers) -> None:
            nonlocal workers
            chunk = waiting.pop(a.chunk_id)
            chunk.ready = True
            if a.answers is None:
                chunk.lost = True
                if workers:
                    log.error(
                        "a verify worker exited; verifying in the collector's worker thread from now on"
                    )
                    workers = 0
            else:
                chunk.answers = a.answers

        stopping = False
        while True:
            now = clock()
            deadlines = [next_expire, next_agg, next_log, next_checkpoint]
            if started is not None:
                deadlines.append(started + cfg.batch_max_delay_s)
            if self._ack_due:
                deadlines.append(
                    min(self._ack_last.get(k, -math.inf) for k in self._ack_due) + cfg.ack_interval_s
                )
            timeout = max(0.0, min(deadlines) - now)
            try:
                items = [q.get(timeout=timeout) if timeout > 0 else q.get_nowait()]
            except queue.Empty:
                items = []
            # Take what else is queued already (up to a burst), so that the bookkeeping below runs once
            # per burst rather than once per message.
            with contextlib.suppress(queue.Empty):
                while items and len(items) < BURST_MAX:
                    items.append(q.get_nowait())
            for item in items:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Answers):
                    answered(item)  # also after _STOP: the drain below waits for these
                elif stopping:
                    pass  # taken after _STOP: not PUBACKed, so the broker keeps it for the next start
                elif type(item) is tuple:
                    raw = cast("Raw", item)
                    building.raws.append(raw)
                    building.routes.append(intake.route(raw[0], raw[1]) if workers else None)
                    self._in_pipeline += 1
                    if len(building.raws) >= CHUNK_MAX_MESSAGES:
                        dispatch()
            if stopping:
                break
            # A partial chunk goes when nothing else is waiting and a verify worker is idle (or there
            # is none): low latency when it is quiet, full chunks when it is busy.
            if building.raws and q.empty() and len(waiting) < max(workers, 1):
                dispatch()
            now = clock()
            while pending and pending[0].ready:
                chunk = pending.popleft()
                self._decide(chunk, now, batch, mids)
                if started is None and chunk.raws:
                    started = now
            if now >= next_expire:
                next_expire = now + EXPIRE_INTERVAL_S
                for g in intake.chain.expire(now):
                    batch.timeout_gaps.append(GapRange(g.dev, g.boot, g.first, g.last))
                if batch.timeout_gaps and started is None:
                    started = now
            if started is not None and (
                len(mids) >= cfg.batch_max_messages
                or now - started >= cfg.batch_max_delay_s
                or (q.empty() and not pending and not building.raws)
            ):
                self._flush(batch, mids)
                batch, mids, started = Batch(), [], None
            self._send_acks(force=False)
            if now >= next_agg:
                next_agg = now + cfg.agg_interval_s
                self._publish_aggregates()
            if now >= next_log:
                next_log = now + cfg.log_interval_s
                self._log_progress()
            if now >= next_checkpoint:
                next_checkpoint = now + self._checkpoint_interval_s
                self._checkpoint()
        # Stopping: whatever was taken is decided, committed, PUBACKed and acked before the disconnect;
        # chunks the verify workers do not answer in time are left to the broker (never PUBACKed).
        assert stopping
        if building.raws:
            dispatch()
        deadline = clock() + STOP_DRAIN_S
        while waiting and (left := deadline - clock()) > 0:
            try:
                item = q.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, _Answers):
                answered(item)
        now = clock()
        while pending and pending[0].ready:
            self._decide(pending.popleft(), now, batch, mids)
        if pending:
            log.warning(
                "stopping: %d messages not verified in time stay with the broker",
                sum(len(c.raws) for c in pending),
            )
        if not batch.empty() or mids:
            self._flush(batch, mids)
        self._send_acks(force=True)
        self._publish_aggregates()
        self._checkpoint()
        self._log_progress()

    def _decide(self, chunk: _Chunk, now: float, batch: Batch, mids: list[tuple[int, int]]) -> None:
        """Finish every message of a chunk, in arrival order, into ``batch``."""
        assert self._intake is not None
        intake = self._intake
        answers = iter(chunk.answers)
        for raw, route in zip(chunk.raws, chunk.routes, strict=True):
            topic, payload, mid, qos, t_rx = raw
            answer = next(answers) if route is not None and not chunk.lost else None
            try:
                if route is None or answer is None:
                    outcome = intake.judge(topic, payload, t_rx, now)
                else:
                    outcome = intake.conclude(topic, route.dev, answer, payload, t_received=t_rx, now=now)
            except Exception as e:  # no single message may stop the collector (docs/reliability.md)
                outcome = self._internal_error(topic, payload, t_rx, "verifying it", e)
            self._take(outcome, batch)
            if qos > 0:
                mids.append((mid, qos))
        with self._lock:
            self._c.received += len(chunk.raws)
        self._in_pipeline -= len(chunk.raws)

    def _internal_error(self, topic: str, payload: bytes, t_rx: int, doing: str, e: Exception) -> Rejected:
        """A message whose handling raised: quarantined as MALFORMED with the error, and counted. The
        first one of a run is logged with its traceback, later ones in one line each."""
        self._count_error(f"{doing} (a message on {_sanitize(topic)})", e)
        reason = f"internal error while {doing}: {type(e).__name__}: {e}"[:500]
        try:
            dev: str | None = parse_topic(topic).dev
        except Exception:
            dev = None
        return Rejected(topic, dev, Verdict.MALFORMED, reason, payload, t_rx)

    def _take(self, outcome: Outcome, batch: Batch) -> None:
        if isinstance(outcome, Candidate):
            batch.candidates.append(outcome)
        elif isinstance(outcome, Duplicate):
            batch.duplicates[outcome.dev] = batch.duplicates.get(outcome.dev, 0) + 1
            batch.touched.add((outcome.dev, outcome.boot))
        elif isinstance(outcome, StateUpdate):
            batch.states.append(outcome)
        else:
            if outcome.verdict not in (Verdict.EQUIVOCATION, Verdict.FORK):
                log.info(
                    "quarantined %s on %s: %s",
                    outcome.verdict.value,
                    _sanitize(outcome.topic),
                    _sanitize(outcome.reason, 200),
                )
            batch.rejected.append(outcome)

    def _flush(self, batch: Batch, mids: list[tuple[int, int]]) -> None:
        assert self._store is not None
        assert self._link is not None
        t0 = time.perf_counter()
        try:
            result = self._store.commit(batch)
        except Exception as e:
            result = self._commit_apart(batch, e)
        elapsed = time.perf_counter() - t0
        # only now: the messages are stored (or quarantined)
        self._link.ack_many([mid for mid, qos in mids if qos == 1])
        for mid, qos in mids:
            if qos > 1:
                self._link.ack(mid, qos)
        self._account(batch, result, elapsed)
        for h in result.heads:  # something arrived for each: new messages, or a resend wanting an ack
            self._ack_due[(h.dev, h.boot)] = h.seq
        if self.config.publish_verified:
            for c in result.stored:
                if c.kind == Kind.RESULT:
                    try:
                        self._publish_verified(c)
                    except Exception as e:  # the result is stored; only its republication is lost
                        self._count_error(f"republishing {c.dev} boot {c.boot} seq {c.seq}", e)

    def _count_error(self, doing: str, e: Exception) -> None:
        """Count an exception that one message caused (stats, metrics); log the first of a run with its
        traceback, later ones in a line each."""
        with self._lock:
            self._c.internal_errors += 1
            first = self._c.internal_errors == 1
        if self._metrics is not None:
            self._metrics.internal_errors.inc()
        log.error("internal error while %s: %s: %s", doing, type(e).__name__, _sanitize(str(e), 200),
                  exc_info=first)  # fmt: skip

    def _commit_apart(self, batch: Batch, error: Exception) -> CommitResult:
        """The batch's transaction failed: commit its parts one by one, so that one message the store
        cannot take (whatever the reason) is quarantined instead of stopping the collector. If even the
        quarantine row of a part cannot be written, the store itself is failing: raise, so that nothing
        is PUBACKed (the broker keeps it all for the next start)."""
        assert self._store is not None
        store = self._store
        log.warning("a batch of %d messages failed to commit (%s: %s); committing them one by one",
                    len(batch), type(error).__name__, _sanitize(str(error), 200))  # fmt: skip
        results: list[CommitResult] = []
        parts: list[tuple[Batch, Rejected | None]] = [
            (Batch(candidates=[c]), Rejected("", c.dev, Verdict.MALFORMED, "", c.cose, c.t_received))
            for c in batch.candidates
        ]
        parts += [(Batch(rejected=[r]), None) for r in batch.rejected]
        parts += [(Batch(states=[st]), None) for st in batch.states]
        parts += [(Batch(timeout_gaps=[g]), None) for g in batch.timeout_gaps]
        parts.append((Batch(duplicates=dict(batch.duplicates), touched=set(batch.touched)), None))
        for part, fallback in parts:
            try:
                results.append(store.commit(part))
                continue
            except Exception as e:
                what = f"storing {part.candidates[0].dev}" if part.candidates else "storing a batch part"
                if fallback is None:  # advisory parts (state, timeout gaps, counters): counted, dropped
                    if part.rejected:
                        raise  # a quarantine row the store cannot write: the store is failing
                    self._count_error(what, e)
                    continue
                self._count_error(what, e)
                reason = f"the store refused it: {type(e).__name__}: {e}"[:500]
                quarantined = Rejected(fallback.topic, fallback.dev, fallback.verdict, reason,
                                       fallback.cose, fallback.t_received)  # fmt: skip
                done = store.commit(Batch(rejected=[quarantined]))  # raises if the store is failing
                # a conflict: counted as rejected like the store's own refusals
                results.append(CommitResult([], [quarantined], [], done.heads, [], done.quarantine))
        return _merge(results)

    def _account(self, batch: Batch, result: CommitResult, elapsed: float) -> None:
        now = self._clock()
        with self._lock:
            c = self._c
            c.batches += 1
            c.accepted += len(result.stored)
            for s in result.stored:
                c.by_device[s.dev] = c.by_device.get(s.dev, 0) + 1
                if s.boot > c.boots.get(s.dev, -1):
                    c.boots[s.dev] = s.boot
                if s.kind == Kind.RESULT:
                    c.latency.append(float(s.t_received - s.t_device))
                    if s.label is not None:
                        labels = c.labels.setdefault(s.dev, {})
                        label = s.label
                        if label not in labels and len(labels) >= MAX_LABELS_PER_DEVICE:
                            label = OTHER_LABEL
                        labels[label] = labels.get(label, 0) + 1
            for r in [*batch.rejected, *result.conflicts]:
                c.rejected[r.verdict.value] = c.rejected.get(r.verdict.value, 0) + 1
            c.duplicates += sum(batch.duplicates.values()) + len(result.duplicates)
            evicted = sum(result.quarantine.evicted_now.values()) if result.quarantine else 0
            first_eviction = evicted > 0 and c.quarantine_evicted == 0
            c.quarantine_evicted += evicted
            c.gaps += sum(g.last - g.first + 1 for g in result.gaps)
            c.states_applied += len(batch.states)
            for st in batch.states:
                c.states[st.dev] = (st.state, st.boot)
            c.rate_marks.append((now, c.accepted))
            while len(c.rate_marks) > 2 and now - c.rate_marks[0][0] > RATE_WINDOW_S:
                c.rate_marks.popleft()
            online = c.online()
        if first_eviction:  # once per run: a flood would otherwise log a line per batch
            log.warning(
                "quarantine full (%d rows): evicting the oldest rows of the devices with the most;"
                " evicted rows are counted per verdict (fleet status)",
                self.config.quarantine_max,
            )
        for g in result.gaps:
            log.warning("gap: %s boot %d seqs %d-%d missing after %.0f s", g.dev, g.boot, g.first, g.last,
                        self.config.reorder_timeout_s)  # fmt: skip
        if self._metrics is not None:
            self._metrics.observe_batch(
                batch, result, elapsed, online, self._queue.qsize() + self._in_pipeline
            )

    def _send_acks(self, *, force: bool) -> None:
        if not self._ack_due or self._link is None:
            return
        now = self._clock()
        interval = self.config.ack_interval_s
        for key, seq in list(self._ack_due.items()):
            if not force and now - self._ack_last.get(key, -math.inf) < interval:
                continue
            dev, boot = key
            payload: dict[int, object] = {
                Key.V: 1,
                Key.DEV: dev,
                Key.BOOT: boot,
                Key.SEQ: seq,
                Key.T: time.time_ns() // 1_000_000,
                Key.KIND: int(Kind.ACK),
            }
            del self._ack_due[key]
            self._ack_last[key] = now
            try:
                sealed = seal(payload, self._signer, self.config.fleet)
                self._link.publish(device_topic(self.config.fleet, dev, Channel.ACK), sealed.cose, qos=1)
            except Exception as e:  # never expected (heads come from the store): counted, not fatal
                self._count_error(f"acking {dev} boot {boot}", e)

    def _publish_verified(self, c: Candidate) -> None:
        assert self._link is not None
        assert c.pipe is not None
        head = json.dumps(
            {
                "fleet": self.config.fleet,
                "dev": c.dev,
                "pipe": c.pipe,
                "boot": c.boot,
                "seq": c.seq,
                "t": c.t_device,
                "t_received": c.t_received,
                "msg_id": c.msg_id.hex(),
                "model": c.model.hex() if c.model else None,
                "input": c.input.hex() if c.input else None,
                "verdict": Verdict.ACCEPTED.value,
            },
            separators=(",", ":"),
        )
        body = head[:-1] + ',"out":' + (c.out or "null") + "}"
        self._link.publish(verified_topic(self.config.fleet, c.dev, c.pipe), body, qos=0)

    def _publish_aggregates(self) -> None:
        if self._link is None or not self._link.connected.is_set():
            return
        snap = self.snapshot()
        doc = {
            "fleet": self.config.fleet,
            "t": time.time_ns() // 1_000_000,
            "accepted": snap.accepted,
            "rejected": snap.rejected,
            "duplicates": snap.duplicates,
            "gaps": snap.gaps,
            "online": snap.online,
            "msgs_per_s": round(snap.msgs_per_s, 1),
            "latency_ms_p50": snap.latency_ms_p50,
            "latency_ms_p95": snap.latency_ms_p95,
            "devices": {
                dev: {"accepted": n, "labels": snap.labels_by_device.get(dev, {})}
                for dev, n in sorted(snap.stored_by_device.items())
            },
        }
        self._link.publish(agg_topic(self.config.fleet, "summary"), json.dumps(doc), qos=0, retain=True)

    def _checkpoint(self) -> None:
        """Sign a checkpoint if the log grew (store-wide: every collector's appends), store it and
        publish it retained. A failure is counted and logged; the next interval tries again."""
        if self._log_signer is None or self._store is None:
            return
        try:
            note = self._store.sign_checkpoint(self._log_signer)
        except (FleetError, ProtocolError) as e:  # StoreError, LogError; TlogError
            self._count_error("signing a log checkpoint", e)
            return
        if note is None or self._link is None or not self._link.connected.is_set():
            return
        self._link.publish(log_checkpoint_topic(self.config.fleet), note, qos=1, retain=True)

    def _log_progress(self) -> None:
        s = self.snapshot()
        evicted = f", {s.quarantine_evicted} quarantine rows evicted" if s.quarantine_evicted else ""
        log.info(
            "ingest: %d accepted (%.0f/s), rejected %s, %d duplicates, %d gap seqs, queue %d%s",
            s.accepted, s.msgs_per_s, s.rejected or "{}", s.duplicates, s.gaps, s.queue_depth, evicted,
        )  # fmt: skip

    # -- observing --------------------------------------------------------------------------------

    def snapshot(self) -> CollectorStats:
        """A consistent copy of the counters (thread-safe)."""
        with self._lock:
            c = self._c
            lat = sorted(c.latency)
            rate = 0.0
            if len(c.rate_marks) >= 2:
                (t0, n0), (t1, n1) = c.rate_marks[0], c.rate_marks[-1]
                rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            return CollectorStats(
                accepted=c.accepted,
                rejected=dict(c.rejected),
                duplicates=c.duplicates,
                stored_by_device=dict(c.by_device),
                labels_by_device={k: dict(v) for k, v in c.labels.items()},
                gaps=c.gaps,
                late=self._intake.late if self._intake else 0,
                latency_ms_p50=percentile(lat, 50),
                latency_ms_p95=percentile(lat, 95),
                msgs_per_s=rate,
                batches=c.batches,
                queue_depth=self._queue.qsize() + self._in_pipeline,
                online=c.online(),
                dropped_qos0=c.dropped_qos0,
                quarantine_evicted=c.quarantine_evicted,
                error=self._error,
                received=c.received,
                states=c.states_applied,
                internal_errors=c.internal_errors,
            )

    def wait_idle(self, timeout: float = 10.0, settle_s: float = 0.3) -> bool:
        """Wait until nothing new has been taken for ``settle_s`` (tests, demo). True if idle."""
        deadline = time.monotonic() + timeout
        last = (-1, -1, -1)
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            s = self.snapshot()
            cur = (s.accepted + sum(s.rejected.values()) + s.duplicates, s.batches, s.queue_depth)
            if cur != last:
                last, quiet_since = cur, time.monotonic()
            elif s.queue_depth == 0 and time.monotonic() - quiet_since >= settle_s:
                return True
            time.sleep(0.05)
        return False
