"""The reference firmware (firmware_bridge/firmware/*.c) compiled with the host compiler.

It must produce exactly the vectors' bytes, decode them, and its output must be read by the Python
decoder. The Arduino sketch is compiled and run against a tiny host stand-in for the Arduino core.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.frames import Frame, FrameDecoder, FrameType, decode_error, decode_sample, encode_frame
from firmware_bridge.hello import parse_hello
from tests.firmware_bridge._support import frame_vectors

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_bridge" / "firmware"
C_DIR = Path(__file__).resolve().parent / "c"
# Warnings are errors: the code must stay clean for avr-gcc and xtensa-gcc, which warn about more.
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wconversion", "-Wshadow"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

SINGLES = [v for _, doc in frame_vectors() for v in doc["single"]]
STREAMS = [v for _, doc in frame_vectors() for v in doc["streams"]]


def _compile(out: Path, *extra: str) -> Path:
    sources = sorted(str(p) for p in FIRMWARE.glob("*.c"))
    assert sources, "no C sources in firmware_bridge/firmware"
    cmd = ["gcc", *CFLAGS, *extra, f"-I{FIRMWARE}", *sources, str(C_DIR / "harness.c"), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a receive buffer as large as docs/firmware_bridge.md allows, so every vector can be decoded
    return _compile(tmp_path_factory.mktemp("fw") / "harness", "-DES_RX_MAX_BODY=1024u")


@pytest.fixture(scope="module")
def small_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(tmp_path_factory.mktemp("fw") / "harness_small")  # default ES_RX_MAX_BODY


def run(binary: Path, *args: str) -> str:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("vector", SINGLES, ids=[v["name"] for v in SINGLES])
def test_c_encoder_produces_the_vector_bytes(harness: Path, vector: dict[str, Any]) -> None:
    out = run(harness, "encode", str(vector["type"]), str(vector["seq"]), vector["payload"])
    assert out.strip() == vector["wire"]


@pytest.mark.parametrize("vector", SINGLES, ids=[v["name"] for v in SINGLES])
def test_c_decoder_reads_the_vector(harness: Path, vector: dict[str, Any]) -> None:
    lines = run(harness, "decode", vector["wire"]).splitlines()
    assert lines[0].split() + [""] * (3 - len(lines[0].split())) == [
        str(vector["type"]),
        str(vector["seq"]),
        vector["payload"],
    ]
    assert lines[1] == "dropped 0"


@pytest.mark.parametrize("vector", STREAMS, ids=[v["why"][:40] for v in STREAMS])
def test_c_decoder_handles_the_streams(harness: Path, vector: dict[str, Any]) -> None:
    lines = run(harness, "decode", vector["wire"]).splitlines()
    frames = [line.split() for line in lines if not line.startswith(("dropped", "oversize"))]
    assert [[int(f[0]), int(f[1]), f[2] if len(f) > 2 else ""] for f in frames] == vector["frames"]
    assert f"dropped {vector['dropped']}" in lines


def test_c_crc_is_crc32_iso_hdlc(harness: Path) -> None:
    assert run(harness, "crc", b"123456789".hex()).strip() == "cbf43926"  # the catalogue check value
    data = bytes(range(256)) * 3
    assert int(run(harness, "crc", data.hex()), 16) == zlib.crc32(data)


@pytest.mark.parametrize("size", [0, 1, 253, 254, 255, 508, 600])
def test_c_cobs_matches_the_cobs_package(harness: Path, size: int) -> None:
    from cobs import cobs

    for data in (bytes((i % 255) + 1 for i in range(size)), bytes(size), bytes(i % 7 for i in range(size))):
        encoded, decoded = run(harness, "cobs", data.hex()).splitlines()[:2] if data else ("01", "")
        if data:
            assert bytes.fromhex(encoded) == cobs.encode(data)
            assert bytes.fromhex(decoded) == data


def test_python_decodes_the_c_stream(harness: Path) -> None:
    wire = subprocess.run([str(harness), "stream", "500"], capture_output=True, check=True).stdout
    decoder = FrameDecoder()
    frames = decoder.feed(wire)
    assert decoder.stats.dropped == 0
    assert decoder.stats.lost == 0
    assert len(frames) == 503
    hello = parse_hello(frames[0].payload)
    assert (hello.firmware, hello.channels, hello.hz) == ("edgeseal-ref", ("ax", "ay", "az"), 400.0)
    assert frames[1] == Frame(FrameType.LOG, 1, b"boot ok")
    assert decode_error(frames[2].payload) == (2, "unknown key x")
    for i, frame in enumerate(frames[3:]):
        assert frame.seq == (i + 3) % 256
        t_us, values = decode_sample(frame.payload, 3)
        assert t_us == i * 2500
        assert values[0] == i * 0.5
        assert values[1] == -float(i)
        assert values[2] == pytest.approx(9.81, rel=1e-6)


def test_c_config_walker(harness: Path) -> None:
    out = run(harness, "config", "hz=50;;cond=imbalance;toolongkey=1;x;ch=ax,az;")
    assert out.splitlines() == ["hz=50", "cond=imbalance", "bad", "bad", "ch=ax,az"]


def test_default_receive_buffer_drops_long_frames(small_harness: Path) -> None:
    config = encode_frame(FrameType.CONFIG, 1, b"hz=1000;cond=imbalance")
    too_long = encode_frame(FrameType.CONFIG, 2, b"x" * 65)  # ES_RX_MAX_BODY is 64 by default
    lines = run(small_harness, "decode", (config + too_long + config).hex()).splitlines()
    assert lines[0] == f"130 1 {b'hz=1000;cond=imbalance'.hex()}"
    assert lines[1] == lines[0]
    assert "oversize 1" in lines


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_arduino_sketch_runs_against_a_host_arduino_core(tmp_path: Path) -> None:
    obj = tmp_path / "edgeseal_frame.o"
    subprocess.run(
        ["gcc", *CFLAGS, "-c", f"-I{FIRMWARE}", str(FIRMWARE / "edgeseal_frame.c"), "-o", str(obj)],
        check=True,
    )
    sketch = tmp_path / "sketch"
    stub = C_DIR / "arduino"
    build = subprocess.run(
        [
            "g++",
            "-std=gnu++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-x",
            "c++",
            "-include",
            "Arduino.h",  # what the Arduino build does to every .ino
            f"-I{stub}",
            f"-I{FIRMWARE}",
            str(FIRMWARE / "edgeseal_imu.ino"),
            "-x",
            "none",
            str(stub / "host_main.cpp"),
            str(obj),
            "-o",
            str(sketch),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    host = encode_frame(FrameType.PING, 0) + encode_frame(FrameType.CONFIG, 1, b"hz=200;foo=1;hz=20")
    wire = subprocess.run([str(sketch), "120", host.hex()], capture_output=True, check=True).stdout
    decoder = FrameDecoder()
    frames = decoder.feed(wire)
    assert decoder.stats.dropped == 0
    assert decoder.stats.lost == 0
    kinds = [f.type for f in frames]
    assert kinds[0] == FrameType.HELLO  # at boot
    assert kinds.count(FrameType.HELLO) == 2  # and in answer to the PING
    assert parse_hello(frames[0].payload).channels == ("ax", "ay", "az")
    assert FrameType.LOG in kinds  # hz=200 applied
    errors = [decode_error(f.payload) for f in frames if f.type == FrameType.ERROR]
    assert errors == [(2, "unknown key"), (3, "hz outside 50..1000")]
    samples = [decode_sample(f.payload, 3) for f in frames if f.type == FrameType.SAMPLE]
    assert len(samples) >= 10
    assert all(values == (0.5, -0.25, 1.0) for _, values in samples)
    times = [t for t, _ in samples]
    assert times == sorted(times)
