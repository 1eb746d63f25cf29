"""The per-device chain verifier (docs/protocol.md §6).

A pure state machine: no I/O, no clock of its own (the caller passes ``now`` in seconds, any monotonic
scale). It is fed envelopes that already passed :func:`edge_protocol.envelope.open_envelope`, in ANY
order (shared subscriptions keep none), and decides, per device message ``(dev, boot, seq, prev, msg_id)``:

- ``DUPLICATE``: the same ``(dev, boot, seq)`` with the same msg_id was seen before (QoS 1 redelivery);
- ``EQUIVOCATION``: the same ``(dev, boot, seq)`` with a different msg_id (two signed histories);
- ``FORK``: ``prev`` disagrees with the msg_id stored for ``(boot, seq-1)``; or a stored ``(boot, seq+1)``
  names another ``prev``; or a birth's ``prev`` names a message of the same or a later boot, or is all
  zeros although earlier boots of the device are known;
- ``ACCEPTED`` otherwise.

Ordering rules it enforces, whatever the arrival order:

1. an accepted message never changes state already decided: a later contradiction is the later
   message's verdict (FORK or EQUIVOCATION), never a retraction;
2. old boots are not replays: a backlog from boot b-1 may arrive after boot b's birth;
3. a seq missing below the highest seq seen of its boot is reported as a GAP once it has been missing
   for ``reorder_timeout_s`` (see :meth:`ChainVerifier.expire`), unless the device's own signed gap
   record covers it. A reported gap is final: if the message comes later it is still ACCEPTED (the
   data is real and signed) and counted as ``late``.

State can be rebuilt after a restart from stored contiguous heads (:meth:`ChainVerifier.restore`). Below
a restored head the verifier no longer knows msg_ids; ``recall`` (an injected lookup, for example into
the collector's message store) answers for those, else a message at or below a restored head is judged
only against the head itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edge_protocol.envelope import Verdict
from edge_protocol.spans import Span, Spans

ZERO_ID = bytes(32)
# Spans of missing seqs one boot may hold (one per out-of-order hole); a device cannot grow it without bound.
MAX_PENDING_GAPS_PER_DEVICE = 100_000

Recall = Callable[[str, int, int], tuple[bytes, bytes] | None]
"""``recall(dev, boot, seq) -> (msg_id, prev)`` of a stored message, or None."""


@dataclass(frozen=True)
class Link:
    """What the chain needs of a device message."""

    dev: str
    boot: int
    seq: int
    prev: bytes
    msg_id: bytes


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    late: bool = False  # accepted after its seq had already been reported as a gap


@dataclass(frozen=True)
class GapReport:
    """Seqs ``first..last`` of ``boot`` that did not arrive within the reorder timeout."""

    dev: str
    boot: int
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Head:
    """The contiguous head of one boot: every seq ≤ ``seq`` is stored, reported or covered."""

    boot: int
    seq: int
    msg_id: bytes


class _Missing:
    """The missing spans of one boot, each with the time it was noticed, sorted by their first seq.

    A new span always lies above every earlier one (it starts above the highest seq seen) and is
    noticed no earlier, and a span that loses seqs keeps its time: so the spans are sorted by time
    too, and the ones due are a prefix. Every operation is a bisection plus the spans it changes.
    """

    __slots__ = ("_hi", "_lo", "_since")

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        self._since: list[float] = []

    def add(self, lo: int, hi: int, now: float) -> None:
        self._lo.append(lo)
        self._hi.append(hi)
        self._since.append(now)

    def remove(self, lo: int, hi: int) -> None:
        """Seqs ``lo..hi`` are no longer missing (arrived, or covered by a gap record)."""
        i = bisect.bisect_left(self._hi, lo)  # the first span ending at or above lo
        j = i
        pieces: list[tuple[int, int, float]] = []
        while j < len(self._lo) and self._lo[j] <= hi:
            a, b, since = self._lo[j], self._hi[j], self._since[j]
            if a < lo:
                pieces.append((a, lo - 1, since))
            if b > hi:
                pieces.append((hi + 1, b, since))
            j += 1
        if j > i:
            self._lo[i:j] = [p[0] for p in pieces]
            self._hi[i:j] = [p[1] for p in pieces]
            self._since[i:j] = [p[2] for p in pieces]

    def due(self, noticed_by: float) -> list[Span]:
        """Take the spans noticed at or before ``noticed_by``."""
        n = bisect.bisect_right(self._since, noticed_by)
        out = list(zip(self._lo[:n], self._hi[:n], strict=True))
        del self._lo[:n], self._hi[:n], self._since[:n]
        return out

    def __iter__(self) -> Iterator[Span]:
        return zip(self._lo, self._hi, strict=True)

    def __len__(self) -> int:
        return len(self._lo)


@dataclass
class _Boot:
    """One boot of one device. Missing, covered and reported seqs are kept as spans, never one entry
    per seq, so that a (signed, but hostile) jump of seq by 2^40 costs one span, not memory or time;
    and every look-up in them is a bisection, so that many holes cost no more than a few per message."""

    seen: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # seq -> (msg_id, prev)
    head: int = -1  # contiguous: every seq <= head is seen, covered by a gap record, or reported
    head_id: bytes | None = None
    top: int = -1  # highest seq seen
    covered: Spans = field(default_factory=Spans)  # seqs the device itself reported dropped
    reported: Spans = field(default_factory=Spans)  # seqs reported as GAP by the timeout
    missing: _Missing = field(default_factory=_Missing)  # spans of missing seqs, with when noticed
    floor: int = -1  # seqs <= floor may be absent from `seen` (restored or pruned): ask recall
    floor_id: bytes | None = None  # msg_id at seq == floor when it came from a restored head

    def unmiss(self, lo: int, hi: int) -> None:
        """Seqs ``lo..hi`` are no longer missing (arrived, or covered by a gap record)."""
        if self.missing:
            self.missing.remove(lo, hi)


@dataclass
class _Device:
    boots: dict[int, _Boot] = field(default_factory=dict)
    by_id: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # msg_id -> (boot, seq)


class ChainVerifier:
    """Chain state of every device of a fleet. See the module docstring for the rules."""

    def __init__(
        self, reorder_timeout_s: float = 30.0, recall: Recall | None = None, keep_recent: int | None = None
    ) -> None:
        """``keep_recent``: with ``recall``, keep only this many seqs below each boot's head in memory."""
        if keep_recent is not None and recall is None:
            raise ValueError("pruning (keep_recent) needs a recall function for what it forgets")
        self.reorder_timeout_s = reorder_timeout_s
        self._recall = recall
        self._keep = keep_recent
        self._devices: dict[str, _Device] = {}

    # -- state -----------------------------------------------------------------------------
    def _device(self, dev: str) -> _Device:
        d = self._devices.get(dev)
        if d is None:
            d = self._devices[dev] = _Device()
        return d

    def restore(self, dev: str, heads: list[Head]) -> None:
        """Start from stored contiguous heads (one per boot) after a restart."""
        d = self._device(dev)
        for h in heads:
            b = d.boots.setdefault(h.boot, _Boot())
            if h.seq > b.head:
                b.head = b.top = b.floor = h.seq
                b.head_id = b.floor_id = h.msg_id
                d.by_id[h.msg_id] = (h.boot, h.seq)

    def heads(self, dev: str) -> list[Head]:
        """The contiguous head of each boot of ``dev`` (what a store persists to restart from)."""
        d = self._devices.get(dev)
        if d is None:
            return []
        out = []
        for boot in sorted(d.boots):
            b = d.boots[boot]
            if b.head >= 0:
                head_id = b.head_id if b.head_id is not None else b.seen.get(b.head, (ZERO_ID, ZERO_ID))[0]
                out.append(Head(boot, b.head, head_id))
        return out

    def devices(self) -> Iterator[str]:
        return iter(self._devices)

    def snapshot(self, dev: str) -> dict[tuple[int, int], bytes]:
        """Every accepted ``(boot, seq) -> msg_id`` known in memory for ``dev`` (for tests and tools)."""
        d = self._devices.get(dev)
        if d is None:
            return {}
        return {(boot, s): ids[0] for boot, b in d.boots.items() for s, ids in b.seen.items()}

    # -- deciding --------------------------------------------------------------------------
    def _lookup(self, dev: str, d: _Device, boot: int, seq: int) -> tuple[bytes, bytes] | None:
        b = d.boots.get(boot)
        if b is not None:
            hit = b.seen.get(seq)
            if hit is not None:
                return hit
            if seq <= b.floor:
                if self._recall is not None:
                    return self._recall(dev, boot, seq)
                if seq == b.floor and b.floor_id is not None:
                    return (b.floor_id, b"")
        elif self._recall is not None:
            return self._recall(dev, boot, seq)
        return None

    def observe(
        self, link: Link, now: float, gap: tuple[int, int] | tuple[int, int, int] | None = None
    ) -> Decision:
        """Decide one device message. ``gap``: the ``(from, to)`` or ``(boot, from, to)`` of the
        device-signed gap record the message carries (see :meth:`_cover`)."""
        d = self._device(link.dev)
        b = d.boots.get(link.boot)

        known = self._lookup(link.dev, d, link.boot, link.seq)
        if known is not None:
            if known[0] == link.msg_id:
                return Decision(Verdict.DUPLICATE, f"boot {link.boot} seq {link.seq} seen before")
            return Decision(
                Verdict.EQUIVOCATION, f"boot {link.boot} seq {link.seq} signed twice, differently"
            )
        if b is not None and link.seq < b.floor and self._recall is None:
            return Decision(Verdict.DUPLICATE, f"boot {link.boot} seq {link.seq} is below the stored head")

        reason = self._fork_reason(link, d)
        if reason is not None:
            return Decision(Verdict.FORK, reason)

        if b is None:
            b = d.boots[link.boot] = _Boot()
        late = link.seq in b.reported
        b.seen[link.seq] = (link.msg_id, link.prev)
        d.by_id[link.msg_id] = (link.boot, link.seq)
        b.unmiss(link.seq, link.seq)
        if link.seq > b.top:
            if link.seq > b.top + 1 and len(b.missing) < MAX_PENDING_GAPS_PER_DEVICE:
                b.missing.add(b.top + 1, link.seq - 1, now)
            b.top = link.seq
        if gap is not None:
            self._cover(d, link, gap)
        self._advance(b)
        if self._keep is not None and len(b.seen) > 2 * self._keep + 16:
            self._prune(d, b)
        return Decision(Verdict.ACCEPTED, late=late)

    def _cover(self, d: _Device, link: Link, gap: tuple[int, int] | tuple[int, int, int]) -> None:
        """Record a device-signed gap: ``(from, to)`` of the record's own boot, or ``(boot, from, to)``
        for seqs of an earlier boot that the device dropped after restarting (its outbox kept them
        across the restart, then overflowed). A record never covers its own seq or later ones."""
        if len(gap) == 3:
            boot, lo, hi = gap
        else:
            boot, (lo, hi) = link.boot, gap
        if boot > link.boot or lo > hi:
            return
        if boot == link.boot:
            hi = min(hi, link.seq - 1)
        lo = max(lo, 0)
        if lo > hi:
            return
        b = d.boots.get(boot)
        if b is None:
            b = d.boots[boot] = _Boot()
        b.covered.add(lo, hi)
        b.unmiss(lo, hi)
        self._advance(b)

    def _prune(self, d: _Device, b: _Boot) -> None:
        """Forget seqs well below the contiguous head; ``recall`` answers for them from now on."""
        assert self._keep is not None
        cut = b.head - self._keep
        for s in [s for s in b.seen if s < cut]:
            mid = b.seen.pop(s)[0]
            d.by_id.pop(mid, None)
        b.covered.drop_below(cut)
        b.reported.drop_below(cut)
        if cut - 1 > b.floor:
            b.floor, b.floor_id = cut - 1, None

    def _fork_reason(self, link: Link, d: _Device) -> str | None:
        if link.seq > 0:
            before = self._lookup(link.dev, d, link.boot, link.seq - 1)
            if before is not None and before[0] != link.prev:
                return f"prev does not match the message at boot {link.boot} seq {link.seq - 1}"
        after = self._lookup(link.dev, d, link.boot, link.seq + 1)
        if after is not None and after[1] and after[1] != link.msg_id:
            return f"the message at boot {link.boot} seq {link.seq + 1} names another prev"
        if link.seq == 0:
            if link.prev == ZERO_ID:
                earlier = [boot for boot in d.boots if boot < link.boot]
                if earlier:
                    return "birth claims to be the device's first message, but earlier boots are known"
            else:
                where = d.by_id.get(link.prev)
                if where is not None and where[0] >= link.boot:
                    return f"birth's prev names a message of boot {where[0]}, not an earlier boot"
        return None

    @staticmethod
    def _advance(b: _Boot) -> None:
        s = b.head + 1
        while True:
            if s in b.seen:
                s += 1
                continue
            end = max(b.covered.end(s), b.reported.end(s))
            if end < s:
                break
            s = end + 1
        if s - 1 != b.head:
            b.head = s - 1
            hit = b.seen.get(b.head)
            b.head_id = hit[0] if hit is not None else b.head_id

    def expire(self, now: float) -> list[GapReport]:
        """Report seqs missing for longer than the reorder timeout (each once), as contiguous ranges."""
        reports: list[GapReport] = []
        for dev, d in self._devices.items():
            for boot in sorted(d.boots):
                b = d.boots[boot]
                if not b.missing:
                    continue
                due = b.missing.due(now - self.reorder_timeout_s)
                if not due:
                    continue
                for first, last in due:
                    for lo, hi in b.covered.gaps(first, last):
                        b.reported.add(lo, hi)
                        reports.append(GapReport(dev, boot, lo, hi))
                self._advance(b)
        return reports

    def pending(self, dev: str) -> int:
        """How many seqs of ``dev`` are missing but still within the reorder timeout."""
        d = self._devices.get(dev)
        if d is None:
            return 0
        return sum(hi - lo + 1 for b in d.boots.values() for lo, hi in b.missing)
