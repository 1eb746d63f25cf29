"""The line protocol for quick sketches (docs/firmware_bridge.md "The wire format"): one sample per text line.

Two forms: keyed ``a=1.0,b=2.5`` (any order; the values are put in channel order) and bare CSV
``1.0,2.5`` (values in channel order). The channel names come from the caller (the agent's config).
Without them the first good line fixes the layout: its keys, or for bare CSV ``ch0, ch1, …``.

Invariants: a line that does not parse (not ASCII, a value that is not a finite number, keys that do
not match the channels, the wrong number of values) is counted in ``bad_lines`` and skipped; a line
longer than ``max_line`` bytes is counted in ``oversize`` and discarded up to the next newline; blank
lines are ignored. ``\\r\\n`` and ``\\n`` both end a line. Lines carry no timestamp, so ``t_us`` is
the host's monotonic clock (µs, mod 2**32) when the line was decoded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from firmware_bridge.errors import ConfigError
from firmware_bridge.frames import T_US_MODULUS
from firmware_bridge.hello import check_channels
from firmware_bridge.samples import Sample
from firmware_bridge.sanitize import printable

log = logging.getLogger(__name__)

# A line carries no more than a frame body does (docs/firmware_bridge.md: 1024 bytes); anything longer is a
# sketch printing something other than samples, or a missing newline.
MAX_LINE = 1024

_NEWLINE = 0x0A


@dataclass(frozen=True, slots=True)
class LineStats:
    """Cumulative line decoder counters (a snapshot)."""

    lines: int = 0
    bad_lines: int = 0
    oversize: int = 0
    bytes: int = 0


class _BadLine(ValueError):
    """Internal: why one line was skipped."""


class LineDecoder:
    """Streaming decoder of text lines into ``Sample``s. Not thread-safe; one reader uses it."""

    def __init__(
        self,
        channels: Sequence[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_line: int = MAX_LINE,
    ) -> None:
        self._channels = check_channels(list(channels)) if channels is not None else None
        if max_line < 1:
            raise ConfigError(f"max_line must be positive, not {max_line}")
        self._clock = clock
        self._max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        self._lines = 0
        self._bad_lines = 0
        self._oversize = 0
        self._bytes = 0
        self._warned = False

    @property
    def channels(self) -> tuple[str, ...] | None:
        """The channel names: given, learned from the first good line, or None before that."""
        return self._channels

    @property
    def lines(self) -> int:
        """Good lines decoded into samples."""
        return self._lines

    @property
    def bad_lines(self) -> int:
        """Lines counted and skipped because they did not parse."""
        return self._bad_lines

    @property
    def oversize(self) -> int:
        """Lines longer than ``max_line``, discarded."""
        return self._oversize

    @property
    def stats(self) -> LineStats:
        """A snapshot of the counters."""
        return LineStats(self._lines, self._bad_lines, self._oversize, self._bytes)

    def reset(self) -> None:
        """Forget a partial line (after the port was reopened); counters and channels stay."""
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Sample]:
        """Decode ``data`` (any split) and return the samples of the lines it completes."""
        data = bytes(data)
        self._bytes += len(data)
        samples: list[Sample] = []
        start = 0
        end = len(data)
        while start < end:
            stop = data.find(_NEWLINE, start)
            if stop < 0:
                if not self._discarding:
                    if len(self._buf) + end - start > self._max_line:
                        self._oversize += 1
                        self._discarding = True
                        self._buf.clear()
                    else:
                        self._buf += data[start:end]
                break
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + stop - start > self._max_line:
                self._oversize += 1
                self._buf.clear()
            else:
                self._buf += data[start:stop]
                raw = bytes(self._buf).rstrip(b"\r")
                self._buf.clear()
                sample = self._line(raw)
                if sample is not None:
                    samples.append(sample)
            start = stop + 1
        return samples

    def _line(self, raw: bytes) -> Sample | None:
        if not raw.strip():
            return None
        try:
            values = self._parse(raw)
        except _BadLine as exc:
            self._bad_lines += 1
            if not self._warned:
                self._warned = True
                log.warning("skipping a line that does not parse (%s): %s", exc, printable(raw))
            else:
                log.debug("skipping a line that does not parse (%s): %s", exc, printable(raw))
            return None
        self._lines += 1
        t_us = int(self._clock() * 1_000_000) % T_US_MODULUS
        return Sample(t_us, values, raw)

    def _parse(self, raw: bytes) -> tuple[float, ...]:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise _BadLine("not ASCII") from exc
        parts = text.split(",")
        if "=" in text:
            pairs = [part.partition("=") for part in parts]
            if any(not sep for _, sep, _ in pairs):
                raise _BadLine("mixes key=value and bare values")
            names = [name.strip() for name, _, _ in pairs]
            by_name = dict(zip(names, (_number(value) for _, _, value in pairs), strict=True))
            if len(by_name) != len(names):
                raise _BadLine("a key repeats")
            if self._channels is None:
                try:
                    self._channels = check_channels(names)
                except ConfigError as exc:
                    raise _BadLine(str(exc)) from exc
            if set(by_name) != set(self._channels):
                raise _BadLine(f"keys are not the channels {','.join(self._channels)}")
            return tuple(by_name[name] for name in self._channels)
        values = tuple(_number(part) for part in parts)
        if self._channels is None:
            try:
                self._channels = check_channels([f"ch{i}" for i in range(len(values))])
            except ConfigError as exc:
                raise _BadLine(str(exc)) from exc
        if len(values) != len(self._channels):
            raise _BadLine(f"{len(values)} values for {len(self._channels)} channels")
        return values


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise _BadLine("a value is not a number") from exc
    if not math.isfinite(value):
        raise _BadLine("a value is not finite")
    return value
