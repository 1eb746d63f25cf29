from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from edge_agent.window import Windower, channel_indices
from firmware_bridge.samples import Sample
from tests.edge_agent._support import sample


@given(size=st.integers(1, 40), hop=st.integers(1, 40), n=st.integers(0, 200), chunk=st.integers(1, 17))
def test_window_count_and_contents(size: int, hop: int, n: int, chunk: int) -> None:
    hop = min(hop, size)
    w = Windower(size=size, hop=hop, n_channels=3)
    samples = [sample(i) for i in range(n)]
    windows = []
    for i in range(0, n, chunk):  # how samples are split must not matter
        windows += w.push(samples[i : i + chunk])
    expected = 0 if n < size else (n - size) // hop + 1
    assert len(windows) == expected
    for k, win in enumerate(windows):
        assert win.index == k
        part = samples[k * hop : k * hop + size]
        assert win.rows == tuple(s.values for s in part)
        assert win.src_hash() == blake3.blake3(b"".join(s.raw for s in part)).digest()


def test_channel_selection_and_scaling() -> None:
    idx = channel_indices(["az", "ax"], ("ax", "ay", "az"))
    assert idx == (2, 0)
    w = Windower(size=2, hop=2, n_channels=2, indices=idx, scale=(2.0, 1.0), offset=(0.0, -1.0))
    (win,) = w.push([Sample(0, (1.0, 2.0, 3.0), b"a"), Sample(1, (4.0, 5.0, 6.0), b"b")])
    assert win.rows == ((6.0, 0.0), (12.0, 3.0))
    with pytest.raises(ConfigError, match="'gz'"):
        channel_indices(["gz"], ("ax",))


def test_bad_samples_are_skipped_and_counted() -> None:
    w = Windower(size=2, hop=1, n_channels=3)
    out = w.push([Sample(0, (1.0, 2.0), b"x"), Sample(1, (float("nan"), 0.0, 0.0), b"y")])
    assert out == []
    assert w.skipped == 2
    assert w.buffered == 0


def test_reset_and_layout_change_drop_partial_window() -> None:
    w = Windower(size=4, hop=4, n_channels=3)
    w.push([sample(i) for i in range(3)])
    w.reset()
    assert w.buffered == 0
    w.push([sample(i) for i in range(3)])
    w.select((2, 1, 0))
    assert w.buffered == 0


def test_hop_bigger_than_window_refused() -> None:
    with pytest.raises(ConfigError):
        Windower(size=4, hop=5, n_channels=1)
