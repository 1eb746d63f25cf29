"""Fuzz target: the serial frame decoder and the payload decoders behind it (docs/firmware_bridge.md).

The input is wire bytes from the microcontroller. It is fed to a :class:`FrameDecoder` whole and, to
a second one, one byte at a time, as a serial port may deliver it; each good frame's payload goes to
the decoder of its type, as :mod:`firmware_bridge.link` does: ``parse_hello`` (HELLO),
``sample_channels`` and ``decode_sample`` (SAMPLE), ``decode_error`` (ERROR), ``parse_settings``
(CONFIG, which a device never sends but the simulator parses).

``feed`` documents no error at all (bad frames are counted); the payload decoders raise
:class:`BridgeError` subclasses. Properties, from the decoder's docstring: the result does not depend
on the split (invariant 5), the buffer stays within its bound (invariant 1), and every good frame
encodes back to bytes that decode to it.
"""

from __future__ import annotations

from firmware_bridge.errors import BridgeError
from firmware_bridge.frames import (
    Frame,
    FrameDecoder,
    FrameType,
    decode_error,
    decode_sample,
    encode_frame,
    max_wire_len,
    sample_channels,
)
from firmware_bridge.hello import parse_hello
from firmware_bridge.settings import parse_settings


def _payload(frame: Frame) -> None:
    try:
        if frame.type == FrameType.HELLO:
            parse_hello(frame.payload)
        elif frame.type == FrameType.SAMPLE:
            decode_sample(frame.payload, sample_channels(frame.payload))
        elif frame.type == FrameType.ERROR:
            decode_error(frame.payload)
        elif frame.type == FrameType.CONFIG:
            parse_settings(frame.payload.decode("utf-8"))
    except (BridgeError, UnicodeDecodeError):  # the simulator refuses a CONFIG that is not UTF-8
        pass


def one_input(data: bytes) -> None:
    whole = FrameDecoder()
    frames = whole.feed(data)
    assert whole.buffered <= max_wire_len(), "the buffer outgrew its bound"

    bytewise = FrameDecoder()
    split: list[Frame] = []
    for i in range(len(data)):
        split += bytewise.feed(data[i : i + 1])
        assert bytewise.buffered <= max_wire_len(), "the buffer outgrew its bound"
    assert split == frames, "a byte-at-a-time feed gives other frames"
    assert bytewise.stats == whole.stats, "a byte-at-a-time feed counts otherwise"

    for frame in frames:
        _payload(frame)
        assert FrameDecoder().feed(encode_frame(frame.type, frame.seq, frame.payload)) == [frame]
