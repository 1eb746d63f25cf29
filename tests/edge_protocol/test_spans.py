"""Spans: sets of seqs as ranges, checked against a plain set of the same seqs."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.spans import Spans

ranges = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1])), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(ranges, st.integers(0, 70), st.integers(0, 70))
def test_spans_agree_with_a_set(added: list[tuple[int, int]], probe: int, cut: int) -> None:
    model: set[int] = set()
    spans = Spans()
    for lo, hi in added:
        spans.add(lo, hi)
        model |= set(range(lo, hi + 1))
    items = list(spans)
    assert all(a <= b for a, b in items)
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(items))  # disjoint, not adjacent
    assert {x for a, b in items for x in range(a, b + 1)} == model
    assert (probe in spans) == (probe in model)
    end = spans.end(probe)
    assert end == (
        max(x for x in range(probe, 80) if set(range(probe, x + 1)) <= model) if probe in model else probe - 1
    )
    assert {x for a, b in spans.gaps(0, 70) for x in range(a, b + 1)} == set(range(71)) - model
    spans.drop_below(cut)
    assert {x for a, b in spans for x in range(a, b + 1)} == {
        x for a, b in items if b >= cut for x in range(a, b + 1)
    }


def test_huge_ranges_cost_one_entry() -> None:
    s = Spans([(0, 2**53 - 1)])
    s.add(5, 2**40)
    assert list(s) == [(0, 2**53 - 1)]
    assert s.end(7) == 2**53 - 1
    assert s.gaps(0, 2**53) == [(2**53, 2**53)]
    assert len(s) == 1
