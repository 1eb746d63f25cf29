"""One sensor sample as the link hands it on, whichever protocol carried it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """A reading of every channel at one instant.

    ``t_us`` is a free-running u32 microsecond counter that wraps every 2**32 µs (~71.6 min): the
    microcontroller's clock for frames (docs/firmware_bridge.md), the host's monotonic clock for text
    lines. Only differences (mod 2**32) are meaningful. ``raw`` is the SAMPLE frame payload or the text line
    without its line ending: the exact bytes the device sent, hashed into ``src`` (docs/protocol.md §3
    key 12).
    """

    t_us: int
    values: tuple[float, ...]
    raw: bytes
