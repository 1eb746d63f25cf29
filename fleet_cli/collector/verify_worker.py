"""Signature verification and strict decoding of device messages, in the collector or in a worker process.

The pure part of the collector's verification (docs/protocol.md §4): for a message on a device topic
whose device has a bound key, open the envelope with that key (structure, kid, Ed25519 signature, strict
canonical decoding, all by :func:`edge_protocol.envelope.open_envelope`), then check the payload against
the topic (``dev``, kind vs channel, pipe), a birth's key against the bound one and a gap record's range. No
registry, no chain, no store: those stay in the collector, which feeds the result to its chain verifier.

The answer is a named tuple, so that it crosses a process boundary cheaply and reads by name:

* :class:`Refused` ``(verdict, reason)`` for a rejection;
* :class:`Verified` for a message that passed: what the collector's chain verifier and store need,
  in the field order of :class:`fleet_cli.collector.store.Candidate` (which is ``dev, t_received, cose`` and
  then exactly these fields), so the collector builds a candidate as ``Candidate(dev, t, cose, *v)``.

:class:`VerifyPool` runs :func:`verify_bound` in worker processes
(``python -m fleet_cli.collector.verify_worker``), so the signature checks of a busy collector run
on another core than its MQTT network thread and store.
Work goes out in chunks of ``(dev, channel, pipe, key, cose)`` and comes back, per chunk and in order,
as a list of those tuples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from edge_protocol.envelope import EnvelopeError, Opened, Verdict, decode_unverified, open_envelope
from edge_protocol.keys import Verifier
from edge_protocol.payload import Key, Kind, to_json
from edge_protocol.topics import CHANNEL_OF_KIND
from fleet_cli.errors import FleetError

log = logging.getLogger(__name__)

# Verifier objects kept per worker process (a libsodium key object each, ~200 bytes); a fleet with
# more bound keys than this just rebuilds some of them (re-creating one costs a few µs).
VERIFIER_CACHE = 100_000
# How long a stopping pool waits for a worker process to exit before it terminates it.
JOIN_TIMEOUT_S = 5.0


class Verified(NamedTuple):
    """A message that passed (module docstring): :class:`fleet_cli.collector.store.Candidate` without the
    ``dev``, ``t_received`` and ``cose`` the collector already holds, in the same order."""

    boot: int
    seq: int
    kind: int
    pipe: str | None
    t_device: int
    model: bytes | None
    input: bytes | None
    out: str | None  # JSON of a result's out map, or of a reply's {id, reply}
    label: str | None
    score: float | None
    msg_id: bytes
    prev: bytes
    info: str | None  # birth: JSON of info
    public_key: bytes | None  # birth: the key it carries
    metrics: str | None  # heartbeat: JSON of metrics
    gap: tuple[int, int, int, str] | None  # gap record: (boot, from, to, why)


class Refused(NamedTuple):
    verdict: str  # a Verdict value
    reason: str


Answer = Verified | Refused
Item = tuple[str, str, "str | None", bytes, bytes]  # dev, channel value, pipe, bound key, cose


def _hex(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return to_json(value)  # anything else json cannot encode: to_json's answer (or its TypeError)


def _json(value: Any) -> str:
    """``json.dumps(to_json(value))``, the same text, with json's C encoder walking the value and only
    bytes coming back here (a third of the time: this runs once per result in the verify worker)."""
    return json.dumps(value, separators=(",", ":"), default=_hex)


def _gap(p: dict[int, Any]) -> tuple[int, int, int, str] | None:
    """(boot, from, to, why) of a gap record: seqs of its own boot below its own seq, or, with a
    ``boot`` key, seqs of an earlier boot (an outbox that overflowed after a restart; docs/protocol.md)."""
    g = p[Key.GAP]
    own_boot, own_seq = int(p[Key.BOOT]), int(p[Key.SEQ])
    lo, hi, boot = g.get("from"), g.get("to"), g.get("boot", own_boot)
    if type(lo) is not int or type(hi) is not int or type(boot) is not int or not 0 <= lo <= hi:
        return None
    if not 0 <= boot <= own_boot or (boot == own_boot and hi >= own_seq):
        return None
    why = g.get("why")
    return boot, lo, hi, why if isinstance(why, str) else ""


def check_opened(opened: Opened, dev: str, channel: str, pipe: str | None, bound: bytes | None) -> Answer:
    """The payload of a verified envelope against its topic, the bound key and its kind's rules."""
    kind = opened.kind
    if opened.dev != dev:
        return Refused(Verdict.TOPIC_MISMATCH.value, f"payload dev {opened.dev!r} on the topic of {dev!r}")
    expected = CHANNEL_OF_KIND.get(kind)
    if expected is None or expected.value != channel:
        return Refused(Verdict.TOPIC_MISMATCH.value, f"a {kind.name.lower()} on the {channel} channel")
    p = opened.payload
    if kind is Kind.RESULT and p[Key.PIPE] != pipe:
        return Refused(
            Verdict.TOPIC_MISMATCH.value, f"result of pipe {p[Key.PIPE]!r} on the topic of {pipe!r}"
        )
    if kind is Kind.BIRTH and bound is not None and p[Key.KEY] != bound:
        return Refused(Verdict.CLAIM_INVALID.value, "birth carries another key than the bound one")
    gap: tuple[int, int, int, str] | None = None
    if kind is Kind.GAP:
        gap = _gap(p)
        if gap is None:
            return Refused(
                Verdict.MALFORMED.value,
                "gap record without a valid {from, to} (below its own seq, or of an earlier boot)",
            )
    out = label = score = None
    info = metrics = None
    if kind is Kind.RESULT:
        out_map = p[Key.OUT]
        out = _json(out_map)
        lab = out_map.get("label")
        label = lab if isinstance(lab, str) else (str(lab) if type(lab) is int else None)
        sc = out_map.get("score")
        score = float(sc) if type(sc) in (int, float) and math.isfinite(sc) else None
    elif kind is Kind.BIRTH and Key.INFO in p:
        info = _json(p[Key.INFO])
    elif kind is Kind.HEARTBEAT:
        metrics = _json(p[Key.METRICS])
    elif kind is Kind.REPLY:
        out = _json({"id": p[Key.ID], "reply": p[Key.REPLY]})
    return Verified(
        int(p[Key.BOOT]),
        int(p[Key.SEQ]),
        int(kind),
        p.get(Key.PIPE),
        int(p[Key.T]),
        p.get(Key.MODEL),
        p.get(Key.INPUT),
        out,
        label,
        score,
        opened.msg_id,
        bytes(p[Key.PREV]),
        info,
        bytes(p[Key.KEY]) if kind is Kind.BIRTH else None,
        metrics,
        gap,
    )


def open_bound(fleet: str, dev: str, verifier: Verifier, payload: bytes) -> Opened:
    """Open with the device's bound key; an unknown kid is explained when the payload says more."""
    try:
        return open_envelope(payload, fleet, verifier)
    except EnvelopeError as e:
        if e.verdict is Verdict.UNKNOWN_KEY:
            try:
                o = decode_unverified(payload)
            except EnvelopeError:
                raise e from None
            if o.dev != dev:  # rejected either way; name the more telling cause
                raise EnvelopeError(
                    Verdict.TOPIC_MISMATCH, f"payload dev {o.dev!r} on the topic of {dev!r}"
                ) from None
            if o.kind is Kind.BIRTH:
                raise EnvelopeError(
                    Verdict.CLAIM_INVALID, "birth with another key than the bound one"
                ) from None
        raise


class Verifiers:
    """Bound key -> :class:`Verifier`, at most :data:`VERIFIER_CACHE` of them."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, Verifier] = {}

    def get(self, key: bytes) -> Verifier:
        v = self._by_key.get(key)
        if v is None:
            if len(self._by_key) >= VERIFIER_CACHE:
                self._by_key.clear()
            v = self._by_key[key] = Verifier(key)
        return v


def verify_bound(fleet: str, item: Item, verifiers: Verifiers) -> Answer:
    """Everything about one message of a device with a bound key that needs no state (module docstring)."""
    dev, channel, pipe, key, payload = item
    try:
        opened = open_bound(fleet, dev, verifiers.get(key), payload)
    except EnvelopeError as e:
        return Refused(e.verdict.value, e.reason)
    return check_opened(opened, dev, channel, pipe, key)


def verify_chunk(fleet: str, items: list[Item], verifiers: Verifiers) -> list[Answer]:
    return [verify_bound(fleet, item, verifiers) for item in items]


# ---- worker processes ---------------------------------------------------------------------------


def _worker_main(conn: Connection, fleet: str) -> None:
    """A worker process: answer chunks until an empty message (or the end of the pipe)."""
    # The collector handles SIGINT/SIGTERM and stops its workers itself; a worker lives as long as
    # its socket (the collector's exit, even by SIGKILL, closes it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    verifiers = Verifiers()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        items: list[Item] = pickle.loads(data) if data else []  # noqa: S301 - from our own parent only
        reply = pickle.dumps(verify_chunk(fleet, items, verifiers), pickle.HIGHEST_PROTOCOL) if data else b""
        try:
            conn.send_bytes(reply)
        except OSError:  # the collector is gone (even SIGKILLed): nothing to answer to
            return
        if not data:
            return


class VerifyWorkerError(FleetError):
    """A verify worker process could not be started."""


OnAnswers = Callable[[int, "list[Answer] | None"], None]
"""``on_answers(chunk_id, answers)``; ``answers`` is None when the worker died with the chunk."""


class VerifyPool:
    """``workers`` processes verifying chunks; answers are handed to ``on_answers`` from a reader thread
    per worker, for each worker in the order its chunks were submitted.

    The workers are plain ``python -m fleet_cli.collector.verify_worker`` processes talking over a socket pair
    (not ``multiprocessing``, whose "spawn" re-imports the caller's ``__main__`` and so would demand an
    ``if __name__ == "__main__"`` guard from every program that embeds a collector; "fork" is unsafe in
    a process that already runs threads).
    """

    def __init__(self, fleet: str, workers: int, on_answers: OnAnswers) -> None:
        if workers < 1:
            raise ValueError("a verify pool needs at least one worker")
        self._on_answers = on_answers
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        self._pending: list[list[int]] = []
        self._locks: list[threading.Lock] = []
        self._dead: list[bool] = []
        self._next = 0
        root = str(Path(__file__).resolve().parents[2])  # where fleet_cli and edge_protocol live
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        for _ in range(workers):
            ours, theirs = socket.socketpair()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fleet_cli.collector.verify_worker", str(theirs.fileno()), fleet],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            except OSError as e:
                ours.close()
                self.close()
                raise VerifyWorkerError(f"cannot start a verify worker: {e}") from e
            finally:
                theirs.close()
            self._conns.append(Connection(ours.detach()))
            self._procs.append(proc)
            self._pending.append([])
            self._locks.append(threading.Lock())
            self._dead.append(False)
        for i in range(workers):
            t = threading.Thread(
                target=self._read, args=(i,), name=f"collector-verify-reader-{i}", daemon=True
            )
            t.start()
            self._readers.append(t)

    def submit(self, chunk_id: int, items: list[Item]) -> None:
        """Send one chunk to the next worker (round robin); a dead worker answers None at once."""
        i = self._next
        self._next = (i + 1) % len(self._conns)
        with self._locks[i]:
            dead = self._dead[i]
            if not dead:
                self._pending[i].append(chunk_id)
        if dead:
            self._on_answers(chunk_id, None)
            return
        # If the worker is gone now, its reader reports every pending chunk (this one too) as lost.
        with contextlib.suppress(OSError):
            self._conns[i].send_bytes(pickle.dumps(items, pickle.HIGHEST_PROTOCOL))

    def _read(self, i: int) -> None:
        conn = self._conns[i]
        while True:
            try:
                data: bytes | None = conn.recv_bytes()
            except (EOFError, OSError):
                data = None
            if not data:
                with self._locks[i]:
                    self._dead[i] = True
                    lost, self._pending[i] = self._pending[i], []
                for chunk_id in lost:
                    self._on_answers(chunk_id, None)
                return
            answers: list[Answer] = pickle.loads(data)  # noqa: S301 - from our own child process only
            with self._locks[i]:
                chunk_id = self._pending[i].pop(0)
            self._on_answers(chunk_id, answers)

    def close(self) -> None:
        """Ask every worker to finish (answers still due are delivered first), then reap them."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send_bytes(b"")
        for t in self._readers:
            t.join(JOIN_TIMEOUT_S)
        for proc in self._procs:
            try:
                proc.wait(JOIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("verify worker %d did not exit; killing it", proc.pid)
                proc.kill()
                proc.wait(JOIN_TIMEOUT_S)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs, self._readers = [], [], []


def main(argv: list[str]) -> int:
    """``python -m fleet_cli.collector.verify_worker FD FLEET``: serve the collector on the inherited
    socket FD."""
    fd, fleet = int(argv[0]), argv[1]
    _worker_main(Connection(fd), fleet)
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: the answers are pickled, and their
    # classes (Verified, Refused) must be the importable module's, which the collector can load.
    from fleet_cli.collector import verify_worker  # noqa: PLW0406 - the importable module, not __main__

    sys.exit(verify_worker.main(sys.argv[1:]))
