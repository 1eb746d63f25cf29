"""Helpers for the firmware_bridge tests: the frame vectors, an independent frame codec, raw ptys.

The codec here is written from docs/firmware_bridge.md without importing firmware_bridge, so tests that
check the simulator's output or feed the monitor do not test the package against itself.
"""

from __future__ import annotations

import json
import os
import pty
import time
import tty
import zlib
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve()
# CI lays ../shared beside the checkout; tests/vectors holds a copy so that a checkout alone tests too.
SHARED_VECTORS = _HERE.parents[2].parent / "shared" / "vectors"
LOCAL_VECTORS = _HERE.parents[1] / "vectors"


def frame_vector_files() -> list[Path]:
    """frames.json from every place it lives (the shared one when present, and the local copy)."""
    paths = [d / "frames.json" for d in (SHARED_VECTORS, LOCAL_VECTORS) if (d / "frames.json").is_file()]
    assert LOCAL_VECTORS / "frames.json" in paths, "tests/vectors/frames.json is missing"
    return paths


def frame_vectors() -> list[tuple[str, dict[str, Any]]]:
    """``(label, vectors)`` per file, the label naming where it came from."""
    return [
        (f"{p.parent.parent.name}/{p.parent.name}", json.loads(p.read_text())) for p in frame_vector_files()
    ]


def cobs_encode(data: bytes) -> bytes:
    """Textbook COBS (Cheshire & Baker 1999), independent of the cobs package.

    Each zero-free run becomes 0xFF blocks of 254 bytes and a last block of code len+1; the last run
    drops that last block when it is empty after a 0xFF block (nothing is left to encode).
    """
    out = bytearray()
    runs = data.split(b"\x00")
    for index, run in enumerate(runs):
        full, rest = divmod(len(run), 254)
        for block in range(full):
            out += b"\xff" + run[254 * block : 254 * (block + 1)]
        tail = run[254 * full :]
        if rest or not full or index < len(runs) - 1:
            out += bytes((len(tail) + 1,)) + tail
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """Textbook COBS decoding; None for invalid input."""
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0 or i + code > len(data):
            return None
        out += data[i + 1 : i + code]
        i += code
        if code != 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


def wire(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame on the wire, per docs/firmware_bridge.md "The wire format", without firmware_bridge."""
    head = bytes((frame_type, seq)) + payload
    return cobs_encode(head + zlib.crc32(head).to_bytes(4, "little")) + b"\x00"


def unwire(stream: bytes) -> list[tuple[int, int, bytes]]:
    """Every good ``(type, seq, payload)`` in a byte stream (docs/firmware_bridge.md), without the package."""
    frames = []
    for chunk in stream.split(b"\x00"):
        body = cobs_decode(chunk) if chunk else None
        if body is None or len(body) < 6 or len(body) > 1024:
            continue
        if zlib.crc32(body[:-4]) != int.from_bytes(body[-4:], "little"):
            continue
        frames.append((body[0], body[1], body[2:-4]))
    return frames


def raw_pty() -> tuple[int, str]:
    """A pseudo-terminal in raw mode: the master fd and the slave path (the slave fd is closed)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    return master, path


def read_until(fd: int, done: Any, timeout_s: float = 5.0) -> bytes:
    """Read ``fd`` (blocking allowed) until ``done(buffer)`` is true or the timeout passes."""
    import select

    buf = b""
    deadline = time.monotonic() + timeout_s
    while not done(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 0.1))
        if ready:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                time.sleep(0.01)
    return buf
