"""Fault injection for the simulator: what a real serial line does to bytes.

``FaultConfig`` is the user's description (rates and intervals); ``FaultInjector`` applies the
byte-level faults to outgoing data with a seeded RNG, so a run is reproducible. Bit errors and byte
drops are independent per bit / per byte: the gap to the next fault is drawn from a geometric
distribution and carried across calls, which makes the result independent of how data is split.
Garbage bursts and disconnects are timed by the simulator.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from firmware_bridge.errors import ConfigError

# A bit error rate of 0.5 is a line carrying no information; beyond it flips are anti-correlated.
MAX_BER = 0.5
# Bursts of line noise (a motor starting, a loose ground) last a few characters; 64 bytes is ~0.7 ms
# at 921600 baud and enough to swallow two typical SAMPLE frames.
GARBAGE_MAX_LEN = 64
# An outage longer than an hour is not a glitch any more; it bounds the simulator's sleep.
MAX_DISCONNECT_S = 3600.0


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What goes wrong on the simulated line. Zero disables a fault.

    ber: probability that any one bit is flipped. drop_rate: probability that a byte is lost.
    garbage_every_s: seconds between bursts of random bytes. disconnect_every_s: seconds between
    simulated unplugs; each lasts disconnect_for_s seconds.
    """

    ber: float = 0.0
    drop_rate: float = 0.0
    garbage_every_s: float = 0.0
    disconnect_every_s: float = 0.0
    disconnect_for_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ber", "drop_rate", "garbage_every_s", "disconnect_every_s", "disconnect_for_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, not {value}")
        if self.ber > MAX_BER:
            raise ConfigError(f"bit error rate {self.ber} is above {MAX_BER}")
        if self.drop_rate >= 1:
            raise ConfigError(f"drop rate {self.drop_rate} must be below 1")
        if not 0 < self.disconnect_for_s <= MAX_DISCONNECT_S:
            raise ConfigError(f"disconnect_for_s must be in (0, {MAX_DISCONNECT_S:g}]")

    @property
    def corrupts(self) -> bool:
        """True when bytes are changed or dropped on their way out."""
        return self.ber > 0 or self.drop_rate > 0


def _gap(rng: random.Random, p: float) -> int:
    """Trials before the next success of probability ``p`` (geometric, support 0, 1, 2, …)."""
    if p >= 1:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log1p(-p))


class FaultInjector:
    """Applies bit flips and byte drops to a byte stream; counts what it did."""

    def __init__(self, config: FaultConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._bits_to_flip = _gap(rng, config.ber) if config.ber > 0 else -1
        self._bytes_to_drop = _gap(rng, config.drop_rate) if config.drop_rate > 0 else -1
        self.bit_flips = 0
        self.dropped_bytes = 0
        self.garbage_bytes = 0

    def corrupt(self, data: bytes) -> bytes:
        """``data`` after bit errors and byte drops."""
        if not self._config.corrupts or not data:
            return data
        out = bytearray(data)
        if self._bits_to_flip >= 0:
            bit = self._bits_to_flip
            nbits = len(out) * 8
            while bit < nbits:
                out[bit >> 3] ^= 1 << (bit & 7)
                self.bit_flips += 1
                bit += 1 + _gap(self._rng, self._config.ber)
            self._bits_to_flip = bit - nbits
        if self._bytes_to_drop >= 0:
            keep = bytearray()
            pos = 0
            index = self._bytes_to_drop
            while index < len(out):
                keep += out[pos:index]
                self.dropped_bytes += 1
                pos = index + 1
                index = pos + _gap(self._rng, self._config.drop_rate)
            keep += out[pos:]
            self._bytes_to_drop = index - len(out)
            out = keep
        return bytes(out)

    def garbage(self) -> bytes:
        """A burst of 1..GARBAGE_MAX_LEN random bytes (zeros included, as real noise has them)."""
        burst = self._rng.randbytes(self._rng.randint(1, GARBAGE_MAX_LEN))
        self.garbage_bytes += len(burst)
        return burst
