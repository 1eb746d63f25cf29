"""Serial frame figures (DESIGN §5): decode speed against the line, and robustness against bit errors.

1. Throughput: how many times faster than a 921600-baud line (8N1: 10 bit times per byte, so 92160
   bytes/s) the streaming decoder turns wire bytes into samples (frame decode + SAMPLE unpack). Fed in
   64-byte reads (what a reader polling every millisecond gets) and 4 KiB reads. Goal: >= 10x.
2. Robustness: N SAMPLE frames (default 100,000) pass a line with independent bit errors at a rate of
   1e-4. A frame counts as good when none of its bytes and not the delimiter before it was hit (line
   noise glued to a frame costs that frame only). Goals: no corrupt frame accepted, every good frame
   decoded, in particular every good frame right after a corrupt one.

    python bench/frames.py [--frames N] [--ber P] [--seed S] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_bridge.faults import FaultConfig, FaultInjector
from firmware_bridge.frames import FrameDecoder, FrameType, decode_sample, encode_frame

BAUD = 921_600
# 8N1: a start bit, 8 data bits, a stop bit.
BITS_PER_BYTE = 10
LINE_BYTES_PER_S = BAUD / BITS_PER_BYTE
CHANNELS = 3  # a 3-axis accelerometer, the vibration profile
GOAL_RATIO = 10.0


def make_frames(n: int, rng: random.Random) -> list[bytes]:
    """N SAMPLE frames with seq 0..255 repeating, t_us = 2500 * i (400 Hz), random values in g."""
    pack = struct.Struct(f"<I{CHANNELS}f").pack
    return [
        encode_frame(
            FrameType.SAMPLE,
            i % 256,
            pack((i * 2500) % 2**32, *(rng.uniform(-2.0, 2.0) for _ in range(CHANNELS))),
        )
        for i in range(n)
    ]


def decode_rate(stream: bytes, chunk: int, rounds: int) -> float:
    """Median wire bytes per second through FrameDecoder.feed + decode_sample, over ``rounds`` runs."""
    rates = []
    for _ in range(rounds):
        decoder = FrameDecoder()
        samples = 0
        start = time.perf_counter()
        for pos in range(0, len(stream), chunk):
            for frame in decoder.feed(stream[pos : pos + chunk]):
                decode_sample(frame.payload, CHANNELS)
                samples += 1
        elapsed = time.perf_counter() - start
        assert decoder.stats.dropped == 0
        rates.append(len(stream) / elapsed)
    return statistics.median(rates)


def robustness(frames: list[bytes], ber: float, seed: int) -> dict[str, int]:
    """Corrupt every frame independently at ``ber`` and check what the decoder accepts."""
    injector = FaultInjector(FaultConfig(ber=ber), random.Random(seed))
    corrupted = [injector.corrupt(wire) for wire in frames]
    hit = [a != b for a, b in zip(frames, corrupted, strict=True)]
    delimiter_hit = [c[-1] != 0 for c in corrupted]
    good = [not hit[i] and (i == 0 or not delimiter_hit[i - 1]) for i in range(len(frames))]
    after_corrupt = [good[i] and i > 0 and hit[i - 1] for i in range(len(frames))]

    decoder = FrameDecoder()
    stream = b"".join(corrupted)
    decoded = []
    for pos in range(0, len(stream), 4096):
        decoded += decoder.feed(stream[pos : pos + 4096])
    sent = {frames[i]: i for i in range(len(frames))}
    accepted_corrupt = 0
    seen: set[int] = set()
    for frame in decoded:
        index = sent.get(encode_frame(frame.type, frame.seq, frame.payload))
        if index is None:
            accepted_corrupt += 1
        else:
            seen.add(index)
    stats = decoder.stats
    return {
        "frames": len(frames),
        "bit_flips": injector.bit_flips,
        "corrupt_frames": sum(hit),
        "corrupt_accepted": accepted_corrupt,
        "good_frames": sum(good),
        "good_decoded": sum(1 for i in seen if good[i]),
        "merged_by_delimiter_hit": sum(
            1 for i in range(1, len(frames)) if not hit[i] and delimiter_hit[i - 1]
        ),
        "good_after_corrupt": sum(after_corrupt),
        "good_after_corrupt_decoded": sum(1 for i in seen if after_corrupt[i]),
        "dropped_counted": stats.dropped,
        "lost_counted": stats.lost,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--ber", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    frames = make_frames(args.frames, random.Random(args.seed))
    stream = b"".join(frames)
    rate_64 = decode_rate(stream, 64, args.rounds)
    rate_4k = decode_rate(stream, 4096, args.rounds)
    result: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "wire_bytes_per_frame": len(frames[0]),
        "decode_bytes_per_s": round(rate_64),
        "decode_frames_per_s": round(rate_64 / len(frames[0])),
        "decode_vs_921600_baud": round(rate_64 / LINE_BYTES_PER_S, 1),
        "decode_vs_921600_baud_4k_reads": round(rate_4k / LINE_BYTES_PER_S, 1),
        "ber": args.ber,
        **robustness(frames, args.ber, args.seed),
    }
    ok = (
        float(result["decode_vs_921600_baud"]) >= GOAL_RATIO  # type: ignore[arg-type]
        and result["corrupt_accepted"] == 0
        and result["good_decoded"] == result["good_frames"]
        and result["good_after_corrupt_decoded"] == result["good_after_corrupt"]
    )
    result["goals_met"] = ok
    if args.json:
        print(json.dumps(result))
    else:
        print(f"frames: {result['frames']} SAMPLE frames, {result['wire_bytes_per_frame']} wire bytes each")
        print(
            f"decode: {result['decode_bytes_per_s']:,} B/s = {result['decode_vs_921600_baud']}x "
            f"a 921600-baud line with 64-byte reads "
            f"({result['decode_vs_921600_baud_4k_reads']}x with 4 KiB reads); "
            f"goal >= {GOAL_RATIO:g}x"
        )
        print(
            f"BER {args.ber:g}: {result['bit_flips']} bit flips hit {result['corrupt_frames']} frames; "
            f"corrupt accepted {result['corrupt_accepted']} (goal 0); good decoded "
            f"{result['good_decoded']}/{result['good_frames']}; right after a corrupt frame "
            f"{result['good_after_corrupt_decoded']}/{result['good_after_corrupt']}"
        )
        print(f"decoder counted {result['dropped_counted']} dropped, {result['lost_counted']} lost by seq")
        print("goals met" if ok else "GOALS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
