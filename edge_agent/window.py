"""Windowing: samples in, overlapping windows out. Pure: no I/O, no clock, no numpy.

A :class:`Windower` keeps the last ``size`` samples of the channels a pipeline selects. Every time
``size`` samples are buffered it emits a :class:`Window` and drops the oldest ``hop`` of them, so
consecutive windows overlap by ``size - hop`` samples and every sample lands in ``ceil(size/hop)``
windows at most.

Invariants:

* A window's rows are in arrival order; ``raws[i]`` are the exact bytes the device sent for
  ``rows[i]`` (the SAMPLE frame payload or the text line), so ``src`` (docs/protocol.md §3 key 12) is the
  BLAKE3 of ``b"".join(raws)``.
* A sample whose value count does not match the source's channel layout is skipped and counted,
  never padded or truncated.
* :meth:`Windower.reset` forgets the partial window: after a serial outage the samples on either side
  are not contiguous and must not share a window.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import blake3

from edge_agent.errors import ConfigError
from firmware_bridge.samples import Sample


@dataclass(frozen=True)
class Window:
    """``size`` rows of the selected, scaled channels, with the raw sample bytes they came from."""

    rows: tuple[tuple[float, ...], ...]
    raws: tuple[bytes, ...]
    first_t_us: int
    index: int  # 0 for the first window of this windower, rising by one

    def src_hash(self) -> bytes:
        """BLAKE3 of the raw sample payloads in order (docs/protocol.md §3 key 12)."""
        return blake3.blake3(b"".join(self.raws)).digest()


def channel_indices(wanted: Sequence[str], available: Sequence[str] | None) -> tuple[int, ...] | None:
    """Where each wanted channel sits in the source's samples.

    ``available`` is the source's channel names (from HELLO, or the line protocol's names); ``None``
    when the source did not name them yet, in which case samples must carry exactly the wanted
    channels in the configured order (returns ``None`` = identity).
    """
    if available is None:
        return None
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ConfigError(
            "channels",
            f"the source has no channel {missing[0]!r} (it sends {', '.join(available)})",
        )
    return tuple(available.index(c) for c in wanted)


@dataclass
class Windower:
    """Sliding windows of ``size`` samples every ``hop`` samples over the selected channels."""

    size: int
    hop: int
    n_channels: int
    indices: tuple[int, ...] | None = None
    scale: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()
    skipped: int = 0  # samples with the wrong number of values, or non-finite values
    _rows: list[tuple[float, ...]] = field(default_factory=list)
    _raws: list[bytes] = field(default_factory=list)
    _times: list[int] = field(default_factory=list)
    _emitted: int = 0
    _row_fn: Callable[[tuple[float, ...]], tuple[float, ...] | None] | None = None
    _row_for: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.hop <= self.size:
            raise ConfigError("hop", f"hop {self.hop} must be in 1..window ({self.size})")
        if self.indices is not None and len(self.indices) != self.n_channels:
            raise ConfigError("channels", "channel index count does not match the channel count")
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if value and len(value) != self.n_channels:
                raise ConfigError(name, f"needs {self.n_channels} values, one per channel")

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def select(self, indices: tuple[int, ...] | None) -> None:
        """Change the channel mapping (a new HELLO); a partial window of the old layout is dropped."""
        if indices != self.indices:
            self.indices = indices
            self.reset()

    def reset(self) -> None:
        self._rows.clear()
        self._raws.clear()
        self._times.clear()

    def _selector(self) -> Callable[[tuple[float, ...]], tuple[float, ...] | None]:
        """A per-sample function: select, scale, check; built once per layout (the hot path)."""
        n = self.n_channels
        idx = self.indices
        identity = idx is None or idx == tuple(range(n))
        getter = operator.itemgetter(*idx) if idx is not None and not identity else None
        need = (max(idx) + 1) if idx is not None else n
        scaled = bool(self.scale or self.offset)
        sc = self.scale or (1.0,) * n
        of = self.offset or (0.0,) * n
        isfinite = math.isfinite

        def row(values: tuple[float, ...]) -> tuple[float, ...] | None:
            if identity:
                if len(values) != n:
                    return None
                picked = values
            else:
                if len(values) < need:
                    return None
                got = getter(values)  # type: ignore[misc]
                picked = got if n > 1 else (got,)
            if scaled:
                picked = tuple(v * s + o for v, s, o in zip(picked, sc, of, strict=True))
            return picked if all(map(isfinite, picked)) else None

        return row

    def push(self, samples: Iterable[Sample]) -> list[Window]:
        """Add samples; return the windows they complete (usually none or one)."""
        if self._row_fn is None or self._row_for != self.indices:
            self._row_fn, self._row_for = self._selector(), self.indices
        row_fn = self._row_fn
        rows, raws, times = self._rows, self._raws, self._times
        out: list[Window] = []
        for s in samples:
            row = row_fn(s.values)
            if row is None:
                self.skipped += 1
                continue
            rows.append(row)
            raws.append(s.raw)
            times.append(s.t_us)
            if len(rows) >= self.size:
                out.append(
                    Window(
                        rows=tuple(rows[: self.size]),
                        raws=tuple(raws[: self.size]),
                        first_t_us=times[0],
                        index=self._emitted,
                    )
                )
                self._emitted += 1
                del rows[: self.hop]
                del raws[: self.hop]
                del times[: self.hop]
        return out
