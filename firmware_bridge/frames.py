"""Serial frames, docs/firmware_bridge.md: the encoder and a streaming decoder. Pure code: no I/O, no clock.

On the wire a frame is ``COBS(body) 0x00`` with ``body = type:u8 | seq:u8 | payload | crc:u32 LE``;
the CRC is CRC-32/ISO-HDLC (``zlib.crc32``) over ``type | seq | payload``.

Decoder invariants (``FrameDecoder``):

1. The buffer never holds more than the COBS encoding of a ``max_body``-byte body. A longer run of
   bytes without a delimiter is counted once as ``oversize`` and discarded up to the next ``0x00``.
2. Every non-empty run between delimiters is exactly one of: a good frame, a COBS error, an oversize
   body, a runt (a body shorter than type + seq + CRC), or a CRC error; each is counted once and
   decoding resumes after the next ``0x00`` (resynchronisation).
3. Empty runs (two delimiters in a row) are ignored and not counted. A partial frame at the end of a
   feed is kept for the next feed and not counted.
4. ``lost`` adds ``(seq - last_seq - 1) mod 256`` for each good frame after the first
   (docs/firmware_bridge.md: seq rises by one per frame from the microcontroller).
5. The result does not depend on how the input is split across ``feed`` calls.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

from cobs import cobs

from firmware_bridge.errors import FrameError

# docs/firmware_bridge.md "The wire format": "Body at most 1024 bytes".
MAX_BODY = 1024
# type:u8 + seq:u8 (docs/firmware_bridge.md "The wire format").
HEADER_LEN = 2
# crc:u32 LE (docs/firmware_bridge.md "The wire format").
CRC_LEN = 4
# The shortest body that can be a frame: header and CRC around an empty payload (a PING).
MIN_BODY = HEADER_LEN + CRC_LEN
# What is left of MAX_BODY for the payload.
MAX_PAYLOAD = MAX_BODY - MIN_BODY
# The frame delimiter (docs/firmware_bridge.md); COBS guarantees it never occurs inside an encoded body.
DELIMITER = 0
# seq is a u8 (docs/firmware_bridge.md "The wire format"), so it wraps at 256.
SEQ_MODULUS = 256
# SAMPLE payload: t_us:u32 LE, then one f32 LE per channel (docs/firmware_bridge.md "The wire format").
SAMPLE_TIME_LEN = 4
SAMPLE_VALUE_LEN = 4
# As many f32 values as fit in MAX_PAYLOAD after the timestamp: (1018 - 4) // 4 = 253.
MAX_CHANNELS = (MAX_PAYLOAD - SAMPLE_TIME_LEN) // SAMPLE_VALUE_LEN
# t_us is a u32 (docs/firmware_bridge.md): a free-running microsecond counter that wraps after about
# 71.6 minutes.
T_US_MODULUS = 1 << 32
# ERROR payload: code:u16 LE, then UTF-8 text (docs/firmware_bridge.md "The wire format").
ERROR_CODE_LEN = 2
ERROR_CODE_MAX = 0xFFFF


def max_wire_len(max_body: int = MAX_BODY) -> int:
    """The longest wire frame, delimiter excluded, for a body of ``max_body`` bytes.

    COBS adds one code byte per started block of 254 bytes (docs/field-notes.md "Serial").
    """
    return max_body + max(1, (max_body + 253) // 254)


class FrameType(IntEnum):
    """Frame types of docs/firmware_bridge.md. Values with the top bit set travel host → microcontroller."""

    HELLO = 0x01
    SAMPLE = 0x02
    LOG = 0x03
    ERROR = 0x04
    PING = 0x81
    CONFIG = 0x82


_TYPE_NAMES = {int(t): t.name for t in FrameType}


def type_name(frame_type: int) -> str:
    """``"SAMPLE"`` for 0x02; ``"0x7f"`` for a type docs/firmware_bridge.md does not define."""
    return _TYPE_NAMES.get(frame_type, f"0x{frame_type:02x}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``type`` is a plain int: a type the wire format does not define is passed on."""

    type: int
    seq: int
    payload: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFF:
            raise FrameError(f"frame type {self.type} is not a u8")
        if not 0 <= self.seq <= 0xFF:
            raise FrameError(f"frame seq {self.seq} is not a u8")
        if len(self.payload) > MAX_PAYLOAD:
            raise FrameError(f"frame payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")

    @property
    def type_name(self) -> str:
        """The docs/firmware_bridge.md name of the type (``"HELLO"``), or its hex value when unknown."""
        return type_name(self.type)


@dataclass(frozen=True, slots=True)
class FrameStats:
    """Cumulative decoder counters (a snapshot)."""

    frames: int = 0
    cobs_errors: int = 0
    crc_errors: int = 0
    oversize: int = 0
    runts: int = 0
    lost: int = 0
    bytes: int = 0

    @property
    def dropped(self) -> int:
        """Bad frames of every kind: COBS errors, CRC errors, oversize bodies and runts."""
        return self.cobs_errors + self.crc_errors + self.oversize + self.runts


def frame_crc(body_without_crc: bytes | memoryview) -> int:
    """CRC-32/ISO-HDLC over ``type | seq | payload`` (docs/firmware_bridge.md "The wire format")."""
    return zlib.crc32(body_without_crc)


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """The wire bytes of one frame: ``COBS(body) + b"\\x00"`` (docs/firmware_bridge.md "The wire format")."""
    if not 0 <= frame_type <= 0xFF:
        raise FrameError(f"frame type {frame_type} is not a u8")
    if not 0 <= seq <= 0xFF:
        raise FrameError(f"frame seq {seq} is not a u8")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(
            f"payload of {len(payload)} bytes does not fit a frame",
            hint=f"a frame body is at most {MAX_BODY} bytes, so a payload at most {MAX_PAYLOAD}",
        )
    head = bytes((frame_type, seq)) + bytes(payload)
    body = head + zlib.crc32(head).to_bytes(CRC_LEN, "little")
    return bytes(cobs.encode(body)) + b"\x00"


class FrameDecoder:
    """Streaming decoder: ``feed`` any split of the wire bytes, get the good frames back in order.

    See the module docstring for the invariants. Not thread-safe; one reader uses it.
    """

    def __init__(self, max_body: int = MAX_BODY) -> None:
        if not MIN_BODY <= max_body <= MAX_BODY:
            raise FrameError(f"max_body must be between {MIN_BODY} and {MAX_BODY}, not {max_body}")
        self._max_body = max_body
        self._max_wire = max_wire_len(max_body)
        self._buf = bytearray()
        self._discarding = False
        self._last_seq: int | None = None
        self._frames = 0
        self._cobs_errors = 0
        self._crc_errors = 0
        self._oversize = 0
        self._runts = 0
        self._lost = 0
        self._bytes = 0

    @property
    def stats(self) -> FrameStats:
        """A snapshot of the counters."""
        return FrameStats(
            frames=self._frames,
            cobs_errors=self._cobs_errors,
            crc_errors=self._crc_errors,
            oversize=self._oversize,
            runts=self._runts,
            lost=self._lost,
            bytes=self._bytes,
        )

    @property
    def buffered(self) -> int:
        """How many bytes of a partial frame are held (never more than the encoded ``max_body``)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget the partial frame and the last seq, keep the counters (after the port was reopened)."""
        self._buf.clear()
        self._discarding = False
        self._last_seq = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Decode ``data`` (any length, any split) and return the frames completed by it."""
        data = bytes(data)
        self._bytes += len(data)
        frames: list[Frame] = []
        buf = self._buf
        start = 0
        end = len(data)
        while start < end:
            stop = data.find(DELIMITER, start)
            if stop < 0:
                # No delimiter: keep the bytes for later, within the bound (invariant 1).
                if not self._discarding:
                    if len(buf) + end - start > self._max_wire:
                        self._oversize += 1
                        self._discarding = True
                        buf.clear()
                    else:
                        buf += data[start:end]
                break
            if self._discarding:
                # The delimiter ends the oversize run; resynchronised (invariant 2).
                self._discarding = False
            elif buf:
                if len(buf) + stop - start > self._max_wire:
                    self._oversize += 1
                else:
                    buf += data[start:stop]
                    frame = self._decode(bytes(buf))
                    if frame is not None:
                        frames.append(frame)
                buf.clear()
            elif stop > start:
                if stop - start > self._max_wire:
                    self._oversize += 1
                else:
                    frame = self._decode(data[start:stop])
                    if frame is not None:
                        frames.append(frame)
            start = stop + 1
        return frames

    def _decode(self, encoded: bytes) -> Frame | None:
        try:
            body = cobs.decode(encoded)
        except cobs.DecodeError:
            self._cobs_errors += 1
            return None
        size = len(body)
        if size > self._max_body:
            self._oversize += 1
            return None
        if size < MIN_BODY:
            self._runts += 1
            return None
        view = memoryview(body)
        if zlib.crc32(view[:-CRC_LEN]) != int.from_bytes(view[-CRC_LEN:], "little"):
            self._crc_errors += 1
            return None
        seq = body[1]
        if self._last_seq is not None:
            self._lost += (seq - self._last_seq - 1) % SEQ_MODULUS
        self._last_seq = seq
        self._frames += 1
        return Frame(body[0], seq, bytes(view[HEADER_LEN:-CRC_LEN]))


@lru_cache(maxsize=64)
def _sample_struct(n_channels: int) -> struct.Struct:
    return struct.Struct(f"<I{n_channels}f")


def _check_channels(n_channels: int) -> None:
    if not 1 <= n_channels <= MAX_CHANNELS:
        raise FrameError(
            f"a sample has 1 to {MAX_CHANNELS} channels, not {n_channels}",
            hint=f"{MAX_CHANNELS} f32 values and the timestamp fill a {MAX_BODY}-byte frame body",
        )


def encode_sample(t_us: int, values: tuple[float, ...] | list[float]) -> bytes:
    """A SAMPLE payload: ``t_us:u32 LE`` then one ``f32 LE`` per value (docs/firmware_bridge.md)."""
    _check_channels(len(values))
    if not 0 <= t_us < T_US_MODULUS:
        raise FrameError(f"t_us {t_us} is not a u32", hint="wrap it: t_us % 2**32")
    try:
        return _sample_struct(len(values)).pack(t_us, *values)
    except (struct.error, OverflowError, TypeError) as exc:
        raise FrameError(f"sample values do not fit f32: {exc}") from exc


def decode_sample(payload: bytes, n_channels: int) -> tuple[int, tuple[float, ...]]:
    """``(t_us, values)`` from a SAMPLE payload of ``n_channels`` channels (docs/firmware_bridge.md)."""
    _check_channels(n_channels)
    layout = _sample_struct(n_channels)
    if len(payload) != layout.size:
        raise FrameError(
            f"SAMPLE payload of {len(payload)} bytes does not hold {n_channels} channels "
            f"({layout.size} bytes expected)"
        )
    t_us, *values = layout.unpack(payload)
    return t_us, tuple(values)


def sample_channels(payload: bytes) -> int:
    """How many channels a SAMPLE payload carries, judged by its length alone."""
    n, rest = divmod(len(payload) - SAMPLE_TIME_LEN, SAMPLE_VALUE_LEN)
    if rest or not 1 <= n <= MAX_CHANNELS:
        raise FrameError(f"SAMPLE payload of {len(payload)} bytes is not t_us plus whole f32 values")
    return n


def encode_error(code: int, text: str) -> bytes:
    """An ERROR payload: ``code:u16 LE`` then UTF-8 text (docs/firmware_bridge.md "The wire format")."""
    if not 0 <= code <= ERROR_CODE_MAX:
        raise FrameError(f"error code {code} is not a u16")
    payload = code.to_bytes(ERROR_CODE_LEN, "little") + text.encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"ERROR text of {len(payload)} bytes does not fit a frame")
    return payload


def decode_error(payload: bytes) -> tuple[int, str]:
    """``(code, text)`` from an ERROR payload; undecodable UTF-8 is replaced, never raised."""
    if len(payload) < ERROR_CODE_LEN:
        raise FrameError(f"ERROR payload of {len(payload)} bytes has no u16 code")
    code = int.from_bytes(payload[:ERROR_CODE_LEN], "little")
    return code, payload[ERROR_CODE_LEN:].decode("utf-8", errors="replace")
