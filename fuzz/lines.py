"""Fuzz target: the text line decoder (:class:`firmware_bridge.lines.LineDecoder`, docs/firmware_bridge.md).

The input is the bytes a sketch prints. It is fed whole and one byte at a time, to a decoder that
learns its channels from the first good line and to one configured with three channels.

``feed`` documents no error: a line that does not parse is counted and skipped. Properties: the
result does not depend on the split, every value is finite, and every sample has one value per
channel.
"""

from __future__ import annotations

import math

from firmware_bridge.lines import LineDecoder
from firmware_bridge.samples import Sample

CHANNELS = ("ax", "ay", "az")


def _clock() -> float:
    return 1.0  # t_us must not differ between the two feeds


def _feed(data: bytes, channels: tuple[str, ...] | None, bytewise: bool) -> tuple[list[Sample], LineDecoder]:
    decoder = LineDecoder(channels, clock=_clock)
    if not bytewise:
        return decoder.feed(data), decoder
    samples: list[Sample] = []
    for i in range(len(data)):
        samples += decoder.feed(data[i : i + 1])
    return samples, decoder


def one_input(data: bytes) -> None:
    for channels in (None, CHANNELS):
        samples, decoder = _feed(data, channels, bytewise=False)
        split, split_decoder = _feed(data, channels, bytewise=True)
        assert split == samples, "a byte-at-a-time feed gives other samples"
        assert split_decoder.stats == decoder.stats, "a byte-at-a-time feed counts otherwise"
        assert split_decoder.channels == decoder.channels
        for sample in samples:
            assert decoder.channels is not None
            assert len(sample.values) == len(decoder.channels), "a sample does not fill the channels"
            assert all(math.isfinite(v) for v in sample.values), "a value is not finite"
