"""The chain verifier as a pure state machine (docs/protocol.md §6): verdicts, gaps, boots, restarts, any
order."""

from __future__ import annotations

import random

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.chain import ZERO_ID, ChainVerifier, GapReport, Head, Link
from edge_protocol.envelope import Verdict


def make_chain(dev: str, boots: list[int], salt: str = "") -> list[Link]:
    """A valid chain: boots with the given message counts, linked across boots."""
    links: list[Link] = []
    prev = ZERO_ID
    for b, n in enumerate(boots, start=1):
        for s in range(n):
            mid = blake3.blake3(f"{salt}{dev}/{b}/{s}".encode()).digest()
            links.append(Link(dev, b, s, prev, mid))
            prev = mid
    return links


def feed(v: ChainVerifier, links: list[Link], now: float = 0.0) -> list[Verdict]:
    return [v.observe(link, now).verdict for link in links]


def test_ordered_stream_is_accepted() -> None:
    v = ChainVerifier()
    chain = make_chain("d", [5, 3])
    assert feed(v, chain) == [Verdict.ACCEPTED] * 8
    assert v.heads("d") == [Head(1, 4, chain[4].msg_id), Head(2, 2, chain[7].msg_id)]


def test_duplicate_and_equivocation() -> None:
    v = ChainVerifier()
    chain = make_chain("d", [3])
    feed(v, chain)
    assert v.observe(chain[1], 0).verdict is Verdict.DUPLICATE
    twin = Link("d", 1, 1, chain[0].msg_id, b"\x01" * 32)
    assert v.observe(twin, 0).verdict is Verdict.EQUIVOCATION


def test_fork_detected_in_either_order() -> None:
    chain = make_chain("d", [3])
    bad = Link("d", 1, 2, b"\x02" * 32, b"\x03" * 32)  # prev does not name seq 1
    v = ChainVerifier()
    feed(v, chain[:2])
    assert v.observe(bad, 0).verdict is Verdict.FORK
    # the successor arrives first; then a seq-1 whose msg_id it does not name
    v = ChainVerifier()
    assert v.observe(chain[2], 0).verdict is Verdict.ACCEPTED
    impostor = Link("d", 1, 1, chain[0].msg_id, b"\x04" * 32)
    assert v.observe(impostor, 0).verdict is Verdict.FORK
    assert v.observe(chain[1], 0).verdict is Verdict.ACCEPTED


def test_gap_reported_after_reorder_timeout_only_once() -> None:
    v = ChainVerifier(reorder_timeout_s=10)
    chain = make_chain("d", [6])
    feed(v, [chain[0], chain[1], chain[4], chain[5]], now=100)
    assert v.expire(105) == []
    assert v.pending("d") == 2
    assert v.expire(110) == [GapReport("d", 1, 2, 3)]
    assert v.expire(200) == []
    assert v.heads("d")[0].seq == 5
    late = v.observe(chain[2], 201)
    assert late.verdict is Verdict.ACCEPTED
    assert late.late


def test_gap_record_covers_dropped_seqs() -> None:
    v = ChainVerifier(reorder_timeout_s=1)
    chain = make_chain("d", [8])
    feed(v, chain[:2])
    # seqs 2..5 dropped by the device (outbox full); seq 6 is its signed gap record
    assert v.observe(chain[6], 0, gap=(2, 5)).verdict is Verdict.ACCEPTED
    assert v.observe(chain[7], 0).verdict is Verdict.ACCEPTED
    assert v.expire(100) == []
    assert v.heads("d") == [Head(1, 7, chain[7].msg_id)]


def test_old_boot_backlog_after_new_birth() -> None:
    v = ChainVerifier()
    chain = make_chain("d", [4, 2])
    assert feed(v, chain[4:]) == [Verdict.ACCEPTED] * 2  # boot 2 first, its birth names boot 1's tail
    assert feed(v, chain[:4]) == [Verdict.ACCEPTED] * 4
    assert v.expire(10**6) == []


def test_birth_prev_rules() -> None:
    v = ChainVerifier()
    chain = make_chain("d", [3])
    feed(v, chain)
    # a boot-2 birth whose prev names a message of boot 2 itself is a fork
    odd = Link("d", 2, 0, chain[0].msg_id, b"\x05" * 32)
    assert v.observe(odd, 0).verdict is Verdict.ACCEPTED  # names boot 1: fine (a lost tail is a gap)
    loop = Link("d", 3, 0, odd.msg_id, b"\x06" * 32)
    assert v.observe(loop, 0).verdict is Verdict.ACCEPTED
    back = Link("d", 1, 0, ZERO_ID, b"\x07" * 32)
    assert v.observe(back, 0).verdict is Verdict.EQUIVOCATION
    fresh = Link("d", 4, 0, ZERO_ID, b"\x08" * 32)  # claims to be first, yet boots 1-3 are known
    assert v.observe(fresh, 0).verdict is Verdict.FORK
    into_future = Link("d", 5, 0, b"\x08" * 32, b"\x09" * 32)
    v.observe(Link("d", 6, 0, loop.msg_id, b"\x08" * 32), 0)
    assert v.observe(into_future, 0).verdict is Verdict.FORK


def test_restart_from_stored_heads() -> None:
    chain = make_chain("d", [10])
    first = ChainVerifier()
    feed(first, chain[:6])
    heads = first.heads("d")

    stored = {(link.boot, link.seq): (link.msg_id, link.prev) for link in chain[:6]}
    second = ChainVerifier(recall=lambda dev, boot, seq: stored.get((boot, seq)))
    second.restore("d", heads)
    assert second.observe(chain[6], 0).verdict is Verdict.ACCEPTED
    assert second.observe(chain[5], 0).verdict is Verdict.DUPLICATE
    assert second.observe(chain[2], 0).verdict is Verdict.DUPLICATE
    assert second.observe(Link("d", 1, 3, chain[2].msg_id, b"\x0a" * 32), 0).verdict is Verdict.EQUIVOCATION
    assert second.observe(Link("d", 1, 7, b"\x0b" * 32, b"\x0c" * 32), 0).verdict is Verdict.FORK

    third = ChainVerifier()  # without recall: the head alone is known
    third.restore("d", heads)
    assert third.observe(chain[5], 0).verdict is Verdict.DUPLICATE
    assert third.observe(Link("d", 1, 6, b"\x0d" * 32, b"\x0e" * 32), 0).verdict is Verdict.FORK
    assert third.observe(chain[6], 0).verdict is Verdict.ACCEPTED


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=4),
    st.lists(st.integers(1, 8), min_size=1, max_size=3),
    st.randoms(use_true_random=False),
    st.integers(0, 20),
)
def test_shuffled_stream_with_duplicates_ends_in_same_state(
    boots_a: list[int], boots_b: list[int], rnd: random.Random, n_dups: int
) -> None:
    stream = make_chain("a", boots_a) + make_chain("b", boots_b)
    ordered = ChainVerifier(reorder_timeout_s=5)
    assert set(feed(ordered, stream)) == {Verdict.ACCEPTED}

    noisy = stream + [rnd.choice(stream) for _ in range(n_dups)]
    rnd.shuffle(noisy)
    shuffled = ChainVerifier(reorder_timeout_s=5)
    verdicts = feed(shuffled, noisy)
    assert verdicts.count(Verdict.ACCEPTED) == len(stream)
    assert verdicts.count(Verdict.DUPLICATE) == n_dups
    for dev in ("a", "b"):
        assert shuffled.snapshot(dev) == ordered.snapshot(dev)
        assert shuffled.heads(dev) == ordered.heads(dev)
    assert shuffled.expire(10**9) == ordered.expire(10**9) == []


@settings(max_examples=60, deadline=None)
@given(st.integers(50, 400), st.randoms(use_true_random=False))
def test_pruning_with_recall_decides_like_full_memory(n: int, rnd: random.Random) -> None:
    chain = make_chain("d", [n, 30])
    stored: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    full = ChainVerifier()
    pruned = ChainVerifier(recall=lambda dev, boot, seq: stored.get((boot, seq)), keep_recent=8)
    stream = chain + [rnd.choice(chain) for _ in range(40)]
    stream += [Link("d", 1, rnd.randrange(n - 1) + 1, b"\x0f" * 32, b"\x0e" * 32) for _ in range(5)]
    for link in stream:
        a = full.observe(link, 0)
        b = pruned.observe(link, 0)
        assert a.verdict is b.verdict, link
        if b.verdict is Verdict.ACCEPTED:
            stored[(link.boot, link.seq)] = (link.msg_id, link.prev)
    assert full.heads("d") == pruned.heads("d")
    assert len(pruned.snapshot("d")) < len(full.snapshot("d"))


def test_pruning_needs_recall() -> None:
    import pytest

    with pytest.raises(ValueError, match="recall"):
        ChainVerifier(keep_recent=10)


def test_huge_seq_jump_is_one_span_not_memory() -> None:
    """A signed (but hostile) jump of seq by 2^40 costs one span: no per-seq memory or time."""
    v = ChainVerifier(reorder_timeout_s=1)
    chain = make_chain("d", [2])
    feed(v, chain)
    far = Link("d", 1, 2**40, b"\x01" * 32, b"\x02" * 32)
    assert v.observe(far, 0).verdict is Verdict.ACCEPTED
    assert v.pending("d") == 2**40 - 2
    assert len(v._devices["d"].boots[1].missing) == 1  # one span, whatever its length
    assert v.observe(Link("d", 1, 2**40 + 1, far.msg_id, b"\x03" * 32), 0, gap=(0, 2**40)).verdict is (
        Verdict.ACCEPTED
    )
    assert v.expire(10) == []  # the device's own gap record covers the whole span
    assert v.pending("d") == 0
    assert v.heads("d")[0].seq == 2**40 + 1


def test_gap_record_for_an_earlier_boot() -> None:
    """Boot 1 sealed seqs 0..5, the outbox dropped 3..5 after a restart; boot 2's gap record says so."""
    v = ChainVerifier(reorder_timeout_s=1)
    chain = make_chain("d", [6, 2])
    feed(v, chain[:3])  # boot 1 seqs 0..2 arrive
    birth2, gap2 = chain[6], chain[7]
    assert v.observe(birth2, 0).verdict is Verdict.ACCEPTED
    assert v.observe(gap2, 0, gap=(1, 3, 5)).verdict is Verdict.ACCEPTED
    assert v.expire(100) == []
    assert [h.seq for h in v.heads("d")] == [5, 1]
    # a record cannot cover a later boot, nor its own seq
    v2 = ChainVerifier(reorder_timeout_s=1)
    feed(v2, chain[:1])
    v2.observe(chain[2], 0, gap=(2, 0, 10))
    assert v2.expire(100) == [GapReport("d", 1, 1, 1)]


def test_partially_covered_span_reports_the_rest() -> None:
    v = ChainVerifier(reorder_timeout_s=1)
    chain = make_chain("d", [10])
    feed(v, [chain[0], chain[9]], now=0)  # 1..8 missing
    v.observe(chain[5], 0)  # 5 arrives: 1..4 and 6..8 missing
    v.observe(Link("d", 1, 10, chain[9].msg_id, b"\x07" * 32), 0, gap=(2, 3))
    assert v.expire(5) == [GapReport("d", 1, 1, 1), GapReport("d", 1, 4, 4), GapReport("d", 1, 6, 8)]
