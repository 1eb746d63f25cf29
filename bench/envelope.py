"""Envelope cost against the signature itself: seal vs raw PyNaCl sign, open vs raw PyNaCl verify.

The signature is the physical limit; everything around it (CBOR, BLAKE3 ids, strict checks) should be
nearly free. Both sides are measured in the same run, in interleaved rounds, and reported as ratios of
medians, so the machine's speed and noise cancel out. Goals: open <= 1.3x verify, seal <= 1.6x sign.

With ``--instructions`` the same four sides are also counted in instructions under valgrind's callgrind
(bench/instructions.py), which does not drift with the machine's speed or load; both ratios are printed.

    python bench/envelope.py [--rounds N] [--ops N] [--instructions [--instr-ops N]] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import instructions  # type: ignore[import-not-found]
import nacl.signing

from edge_protocol.envelope import open_envelope, protected_header, seal, sig_structure
from edge_protocol.keys import Signer, Verifier

FLEET = "demo"
GOALS = {"open_ratio": 1.3, "seal_ratio": 1.6}
# Instruction mode: calls per side under callgrind (~10 s of valgrind start-up, then ~1 s per 100).
INSTR_OPS = 300


def result_payload(seq: int) -> dict[int, object]:
    """A typical result, the message a device sends most (about 300 bytes sealed)."""
    return {
        0: 1, 1: "dev-01", 2: 3, 3: seq, 4: bytes(32), 5: 1_790_000_000_000 + seq, 6: 1, 7: "vib",
        8: b"\x11" * 32, 9: b"\x22" * 32,
        10: {"label": "imbalance", "score": 0.9375, "values": [0.03125, 0.9375, 0.03125]},
        11: b"\x33" * 32, 12: b"\x44" * 32, 23: 1234,
    }  # fmt: skip


def per_op_us(fn: Callable[[], object], ops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - t0) / ops * 1e6


def make_sides() -> tuple[dict[str, Callable[[], object]], int]:
    """The four measured sides (raw sign, seal, raw verify, open) over one result, and its envelope size."""
    signer = Signer.from_seed(bytes(range(32)))
    verifier = Verifier(signer.public_key)
    raw_sk = nacl.signing.SigningKey(signer.seed)
    raw_vk = nacl.signing.VerifyKey(signer.public_key)
    payload = result_payload(7)
    sealed = seal(payload, signer, FLEET)
    to_sign = sig_structure(protected_header(signer.kid), FLEET, sealed.payload_bytes)
    signature = raw_sk.sign(to_sign).signature
    sides: dict[str, Callable[[], object]] = {
        "raw_sign": lambda: raw_sk.sign(to_sign),
        "seal": lambda: seal(payload, signer, FLEET),
        "raw_verify": lambda: raw_vk.verify(to_sign, signature),
        "open": lambda: open_envelope(sealed.cose, FLEET, verifier),
    }
    return sides, len(sealed.cose)


def instruction_figures(ops: int) -> dict[str, object]:
    """Instructions per call of each side under callgrind, and the two ratios."""
    ir = instructions.measure(Path(__file__), [], ["raw_sign", "seal", "raw_verify", "open"], ops)
    return {
        "open_ratio": round(ir["open"] / ir["raw_verify"], 3),
        "seal_ratio": round(ir["seal"] / ir["raw_sign"], 3),
        **{f"{k}_ir": round(v) for k, v in ir.items()},
        "ops": ops,
        "valgrind": instructions.valgrind_version(),
    }


def main() -> int:
    worker = instructions.worker_n(sys.argv)
    if worker is not None:  # running under callgrind for instruction_figures()
        instructions.run_sides(make_sides()[0], worker)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median is reported)")
    ap.add_argument("--ops", type=int, default=2000, help="operations per round and side")
    ap.add_argument("--instructions", action="store_true", help="also count instructions (callgrind)")
    ap.add_argument("--instr-ops", type=int, default=INSTR_OPS, help="calls per side under callgrind")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    sides, envelope_bytes = make_sides()
    for fn in sides.values():  # warm up caches and the allocator
        per_op_us(fn, args.ops // 10 or 1)
    samples: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            samples[name].append(per_op_us(fn, args.ops))
    med = {k: statistics.median(v) for k, v in samples.items()}
    out: dict[str, object] = {
        "open_ratio": round(med["open"] / med["raw_verify"], 3),
        "seal_ratio": round(med["seal"] / med["raw_sign"], 3),
        "open_us": round(med["open"], 2),
        "raw_verify_us": round(med["raw_verify"], 2),
        "seal_us": round(med["seal"], 2),
        "raw_sign_us": round(med["raw_sign"], 2),
        "envelope_bytes": envelope_bytes,
        "goals": GOALS,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "rounds": args.rounds,
        "ops_per_round": args.ops,
    }
    ir = instruction_figures(args.instr_ops) if args.instructions else None
    if ir is not None:
        out["instructions"] = ir
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"envelope of {envelope_bytes} bytes; time: median of {args.rounds} rounds x {args.ops} ops"
          + (f"; instructions: callgrind, {args.instr_ops} calls per side" if ir else ""))  # fmt: skip
    for side, base, label, base_label in (("open", "raw_verify", "open ", "raw verify"),
                                          ("seal", "raw_sign", "seal ", "raw sign  ")):  # fmt: skip
        goal = GOALS[f"{side}_ratio"]
        print(f"  {label} {out[f'{side}_us']:8.2f} us   {base_label} {out[f'{base}_us']:8.2f} us   "
              f"ratio {out[f'{side}_ratio']:.3f}  (goal <= {goal})")  # fmt: skip
        if ir:
            print(f"  {label} {ir[f'{side}_ir']:8,} Ir   {base_label} {ir[f'{base}_ir']:8,} Ir   "
                  f"ratio {ir[f'{side}_ratio']:.3f}  (goal <= {goal}, by instructions)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
