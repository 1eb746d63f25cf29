"""firmware_bridge.frames against docs/firmware_bridge.md and ../shared/vectors/frames.json."""

from __future__ import annotations

import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import BridgeError, FrameError
from firmware_bridge.frames import (
    MAX_BODY,
    MAX_CHANNELS,
    MAX_PAYLOAD,
    MIN_BODY,
    Frame,
    FrameDecoder,
    FrameStats,
    FrameType,
    decode_error,
    decode_sample,
    encode_error,
    encode_frame,
    encode_sample,
    max_wire_len,
    sample_channels,
    type_name,
)
from tests.firmware_bridge._support import frame_vectors, unwire, wire

VECTORS = frame_vectors()
SINGLES = [(label, v) for label, doc in VECTORS for v in doc["single"]]
STREAMS = [(label, v) for label, doc in VECTORS for v in doc["streams"]]


def _ids(items: list[tuple[str, dict[str, Any]]], key: str) -> list[str]:
    return [f"{label}:{v[key][:40]}" for label, v in items]


def test_vectors_come_from_both_places_when_shared_is_present() -> None:
    from tests.firmware_bridge._support import SHARED_VECTORS

    assert len(VECTORS) == (2 if (SHARED_VECTORS / "frames.json").is_file() else 1)
    assert SINGLES
    assert STREAMS


def feed_whole(wire_bytes: bytes) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    return decoder.feed(wire_bytes), decoder


def feed_bytewise(wire_bytes: bytes) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    frames = [f for i in range(len(wire_bytes)) for f in decoder.feed(wire_bytes[i : i + 1])]
    return frames, decoder


FEEDERS = [pytest.param(feed_whole, id="whole"), pytest.param(feed_bytewise, id="bytewise")]


@pytest.mark.parametrize(("label", "vector"), SINGLES, ids=_ids(SINGLES, "name"))
def test_single_vector_encodes_exactly(label: str, vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["payload"])
    assert encode_frame(vector["type"], vector["seq"], payload).hex() == vector["wire"]


@pytest.mark.parametrize(("label", "vector"), SINGLES, ids=_ids(SINGLES, "name"))
@pytest.mark.parametrize("feed", FEEDERS)
def test_single_vector_decodes(label: str, vector: dict[str, Any], feed: Any) -> None:
    frames, decoder = feed(bytes.fromhex(vector["wire"]))
    assert frames == [Frame(vector["type"], vector["seq"], bytes.fromhex(vector["payload"]))]
    assert decoder.stats.frames == 1
    assert decoder.stats.dropped == 0
    assert decoder.buffered == 0


@pytest.mark.parametrize(("label", "vector"), STREAMS, ids=_ids(STREAMS, "why"))
@pytest.mark.parametrize("feed", FEEDERS)
def test_stream_vector(label: str, vector: dict[str, Any], feed: Any) -> None:
    frames, decoder = feed(bytes.fromhex(vector["wire"]))
    assert [[f.type, f.seq, f.payload.hex()] for f in frames] == vector["frames"]
    assert decoder.stats.dropped == vector["dropped"]
    assert decoder.stats.frames == len(vector["frames"])
    assert decoder.stats.bytes == len(vector["wire"]) // 2


@pytest.mark.parametrize(("label", "vector"), STREAMS, ids=_ids(STREAMS, "why"))
def test_stream_vector_any_split(label: str, vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["wire"])
    rng = random.Random(len(data))
    for _ in range(20):
        decoder = FrameDecoder()
        frames: list[Frame] = []
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 64)
            frames += decoder.feed(data[pos : pos + step])
            pos += step
        assert [[f.type, f.seq, f.payload.hex()] for f in frames] == vector["frames"]
        assert decoder.stats.dropped == vector["dropped"]


def test_stream_vectors_agree_with_the_independent_decoder() -> None:
    for _, vector in STREAMS:
        got = [[t, s, p.hex()] for t, s, p in unwire(bytes.fromhex(vector["wire"]))]
        assert got == vector["frames"]


def test_corrupted_frame_counts_a_crc_error_and_the_seq_gap() -> None:
    vector = next(v for _, v in STREAMS if "corrupted byte" in v["why"])
    _, decoder = feed_whole(bytes.fromhex(vector["wire"]))
    assert decoder.stats == FrameStats(frames=3, crc_errors=1, lost=1, bytes=len(vector["wire"]) // 2)


def test_oversize_vector_is_counted_as_oversize() -> None:
    vector = next(v for _, v in STREAMS if "over 1024" in v["why"])
    for feed in (feed_whole, feed_bytewise):
        _, decoder = feed(bytes.fromhex(vector["wire"]))
        assert decoder.stats.oversize == 1
        assert decoder.stats.cobs_errors == decoder.stats.crc_errors == 0


def test_lost_frames_wrap_mod_256() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(2, 254, b"") + encode_frame(2, 255, b"") + encode_frame(2, 2, b""))
    assert decoder.stats.lost == 2  # 0 and 1 are missing


def test_reset_forgets_the_partial_frame_and_the_seq_but_keeps_counters() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(2, 10, b"x"))
    decoder.feed(encode_frame(2, 11, b"y")[:4])
    decoder.reset()
    assert decoder.buffered == 0
    frames = decoder.feed(encode_frame(2, 200, b"z"))
    assert frames == [Frame(2, 200, b"z")]
    assert decoder.stats.lost == 0
    assert decoder.stats.frames == 2


# -- limits: each named constant exceeded --------------------------------------------------------


def test_max_body_is_the_design_number() -> None:
    assert MAX_BODY == 1024
    assert MIN_BODY == 6
    assert MAX_PAYLOAD == 1018
    assert max_wire_len(MAX_BODY) == 1029


def test_payload_of_max_size_round_trips_and_one_more_byte_is_refused() -> None:
    payload = bytes(range(256)) * 3 + bytes(MAX_PAYLOAD - 768)
    assert len(payload) == MAX_PAYLOAD
    frames, _ = feed_bytewise(encode_frame(3, 7, payload))
    assert frames == [Frame(3, 7, payload)]
    with pytest.raises(FrameError, match="does not fit"):
        encode_frame(3, 7, payload + b"x")


def test_body_one_byte_over_max_is_dropped_as_oversize_even_when_cobs_is_short() -> None:
    head = bytes((3, 1)) + b"\x00" * (MAX_PAYLOAD + 1)  # zeros make COBS short: the body decides
    body = head + zlib.crc32(head).to_bytes(4, "little")
    from cobs import cobs

    encoded = cobs.encode(body) + b"\x00"
    assert len(encoded) - 1 <= max_wire_len()
    for feed in (feed_whole, feed_bytewise):
        frames, decoder = feed(encoded + encode_frame(2, 2, b"ok"))
        assert frames == [Frame(2, 2, b"ok")]
        assert decoder.stats.oversize == 1


def test_buffer_stays_bounded_without_delimiters() -> None:
    decoder = FrameDecoder()
    for _ in range(100):
        decoder.feed(b"\x41" * 100)
        assert decoder.buffered <= max_wire_len()
    assert decoder.stats.oversize == 1  # counted once per run, however long
    assert decoder.feed(b"\x00" + encode_frame(1, 0, b"fw=a;ver=1;ch=x;hz=1")) != []


def test_smaller_max_body_is_enforced() -> None:
    decoder = FrameDecoder(max_body=16)
    assert decoder.feed(encode_frame(2, 0, b"x" * 10)) == [Frame(2, 0, b"x" * 10)]
    assert decoder.feed(encode_frame(2, 1, b"x" * 11)) == []
    assert decoder.stats.oversize == 1


@pytest.mark.parametrize("max_body", [MIN_BODY - 1, MAX_BODY + 1])
def test_max_body_outside_the_design_range_is_refused(max_body: int) -> None:
    with pytest.raises(FrameError):
        FrameDecoder(max_body=max_body)


def test_runt_bodies_are_counted() -> None:
    decoder = FrameDecoder()
    from cobs import cobs

    assert decoder.feed(cobs.encode(b"\x02\x01\x00\x00\x00") + b"\x00") == []
    assert decoder.stats.runts == 1
    assert decoder.stats.dropped == 1


def test_cobs_error_is_counted() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x09\x01\x02\x00") == []  # code 9 promises 8 bytes, 2 follow
    assert decoder.stats.cobs_errors == 1


@pytest.mark.parametrize(("kind", "seq"), [(256, 0), (-1, 0), (1, 256), (1, -1)])
def test_type_and_seq_must_be_u8(kind: int, seq: int) -> None:
    with pytest.raises(FrameError):
        encode_frame(kind, seq, b"")
    with pytest.raises(FrameError):
        Frame(kind, seq, b"")


def test_frame_payload_limit_in_the_value_type() -> None:
    with pytest.raises(FrameError):
        Frame(2, 0, bytes(MAX_PAYLOAD + 1))


def test_errors_share_the_root() -> None:
    assert issubclass(FrameError, BridgeError)


def test_type_names() -> None:
    assert int(FrameType.PING) == 0x81
    assert type_name(0x82) == "CONFIG"
    assert type_name(0x7F) == "0x7f"
    assert Frame(4, 0, b"\x00\x00").type_name == "ERROR"


# -- payload codecs ---------------------------------------------------------------------------------


def test_sample_payload_matches_the_vector() -> None:
    vector = next(v for _, v in SINGLES if v["name"] == "sample")
    payload = bytes.fromhex(vector["payload"])
    assert decode_sample(payload, 3) == (123456, (0.5, -0.25, 9.8125))
    assert encode_sample(123456, (0.5, -0.25, 9.8125)) == payload
    assert sample_channels(payload) == 3


def test_sample_length_must_match_the_channels() -> None:
    payload = encode_sample(1, (1.0, 2.0))
    with pytest.raises(FrameError, match="does not hold 3 channels"):
        decode_sample(payload, 3)
    with pytest.raises(FrameError):
        sample_channels(payload + b"x")


def test_sample_limits() -> None:
    assert len(encode_sample(0, [0.0] * MAX_CHANNELS)) == 4 + 4 * MAX_CHANNELS <= MAX_PAYLOAD
    with pytest.raises(FrameError):
        encode_sample(0, [0.0] * (MAX_CHANNELS + 1))
    with pytest.raises(FrameError):
        encode_sample(0, [])
    with pytest.raises(FrameError, match="u32"):
        encode_sample(2**32, [0.0])
    with pytest.raises(FrameError, match="f32"):
        encode_sample(0, [1e300])
    with pytest.raises(FrameError):
        decode_sample(b"", MAX_CHANNELS + 1)


def test_error_payload_round_trip_and_vector() -> None:
    vector = next(v for _, v in SINGLES if v["name"] == "error")
    assert decode_error(bytes.fromhex(vector["payload"])) == (7, "imu timeout")
    assert encode_error(7, "imu timeout") == bytes.fromhex(vector["payload"])
    with pytest.raises(FrameError):
        encode_error(0x10000, "x")
    with pytest.raises(FrameError):
        decode_error(b"\x01")
    assert decode_error(b"\x01\x00\xff") == (1, "\ufffd")


# -- properties -------------------------------------------------------------------------------------

frames_st = st.builds(
    Frame,
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=MAX_PAYLOAD),
)


@given(frames=st.lists(frames_st, max_size=8), cuts=st.lists(st.integers(1, 300), max_size=20))
@settings(max_examples=150, deadline=None)
def test_round_trip_any_frames_any_split(frames: list[Frame], cuts: list[int]) -> None:
    data = b"".join(encode_frame(f.type, f.seq, f.payload) for f in frames)
    assert data == b"".join(wire(f.type, f.seq, f.payload) for f in frames)  # the independent encoder agrees
    decoder = FrameDecoder()
    got: list[Frame] = []
    pos = 0
    for cut in cuts:
        got += decoder.feed(data[pos : pos + cut])
        pos += cut
    got += decoder.feed(data[pos:])
    assert got == frames
    assert decoder.stats.dropped == 0


@given(payload=st.binary(max_size=64), seq=st.integers(0, 255), bit=st.integers(0, 10_000))
@settings(max_examples=300, deadline=None)
def test_any_single_bit_flip_is_never_accepted(payload: bytes, seq: int, bit: int) -> None:
    original = encode_frame(2, seq, payload)
    corrupt = bytearray(original)
    bit %= len(corrupt) * 8
    corrupt[bit // 8] ^= 1 << (bit % 8)
    follow = encode_frame(3, (seq + 1) % 256, b"next")
    frames = FrameDecoder().feed(bytes(corrupt) + follow)
    assert Frame(2, seq, payload) not in frames or bytes(corrupt) == original
    assert all(f in (Frame(2, seq, payload), Frame(3, (seq + 1) % 256, b"next")) for f in frames)
    if bit // 8 != len(corrupt) - 1:  # the delimiter survived: the next frame decodes
        assert frames[-1] == Frame(3, (seq + 1) % 256, b"next")


@given(noise=st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_noise_then_delimiter_never_costs_the_next_frame(noise: bytes) -> None:
    good = encode_frame(2, 9, struct.pack("<If", 1, 2.0))
    frames = FrameDecoder().feed(noise + b"\x00" + good)
    assert frames[-1] == Frame(2, 9, struct.pack("<If", 1, 2.0))
