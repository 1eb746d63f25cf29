"""Sets of seqs kept as ranges (docs/protocol.md §6: a verifier keeps missing and covered seqs as
ranges, so that a hostile jump of seq costs it nothing).

:class:`Spans` holds sorted, disjoint, non-adjacent inclusive ranges in two parallel lists, so that
membership and "where does this run end" cost one bisection, and adding a range costs a bisection
plus the ranges it swallows. No operation costs work proportional to the width of a range.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

Span = tuple[int, int]  # an inclusive range of seqs


class Spans:
    """Sorted, disjoint, non-adjacent inclusive ranges of integers."""

    __slots__ = ("_hi", "_lo")

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in spans:
            self.add(lo, hi)

    def add(self, lo: int, hi: int) -> None:
        """Add ``lo..hi`` (nothing if ``lo > hi``), merging the ranges it overlaps or touches."""
        if lo > hi:
            return
        i = bisect.bisect_left(self._lo, lo)
        if i > 0 and self._hi[i - 1] >= lo - 1:
            i -= 1
        j = bisect.bisect_right(self._lo, hi + 1)
        if j > i:
            lo = min(lo, self._lo[i])
            hi = max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]

    def find(self, x: int) -> Span | None:
        """The range holding ``x``, or None."""
        i = bisect.bisect_right(self._lo, x) - 1
        if i >= 0 and x <= self._hi[i]:
            return (self._lo[i], self._hi[i])
        return None

    def __contains__(self, x: object) -> bool:
        return isinstance(x, int) and self.find(x) is not None

    def end(self, x: int) -> int:
        """The last integer of the run from ``x`` on that the ranges hold (``x - 1``: none holds ``x``)."""
        span = self.find(x)
        return x - 1 if span is None else span[1]

    def drop_below(self, cut: int) -> None:
        """Forget every range that ends below ``cut``."""
        i = bisect.bisect_left(self._hi, cut)
        del self._lo[:i], self._hi[:i]

    def gaps(self, lo: int, hi: int) -> list[Span]:
        """The runs of ``lo..hi`` that no range holds."""
        out: list[Span] = []
        cur = lo
        i = max(0, bisect.bisect_right(self._lo, lo) - 1)
        while cur <= hi and i < len(self._lo):
            a, b = self._lo[i], self._hi[i]
            i += 1
            if b < cur:
                continue
            if a > hi:
                break
            if a > cur:
                out.append((cur, a - 1))
            cur = b + 1
        if cur <= hi:
            out.append((cur, hi))
        return out

    def __iter__(self) -> Iterator[Span]:
        return zip(self._lo, self._hi, strict=True)

    def __len__(self) -> int:
        return len(self._lo)

    def __bool__(self) -> bool:
        return bool(self._lo)

    def __repr__(self) -> str:
        return f"Spans({list(self)!r})"
