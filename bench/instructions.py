"""Instruction counts under valgrind's callgrind: figures that do not drift with the machine's speed or load.

A benchmark in instruction mode re-runs itself under ``valgrind --tool=callgrind`` as a *worker*. The
worker sets everything up and warms it, then runs each measured side ``n`` times in a row, calling
:func:`mark` between sides. Callgrind is started with ``--dump-before=getppid`` and :func:`mark` calls
``os.getppid()`` (libc ``getppid``, called nowhere else in these benchmarks), so every mark closes one
profile dump holding the instructions executed since the previous one: interpreter start-up, imports and
set-up fall in the first dump, each side in its own. The first side is always an empty loop (``n`` calls
of a no-op lambda); its count, the loop and the mark, is subtracted from every other side, so what is
left is the instructions of the measured calls alone. Python's hash seed is fixed (``PYTHONHASHSEED=0``)
so the counts repeat from run to run.

Counts are of instructions executed in user space (callgrind's ``Ir``), not of time: they ignore cache
misses, branch mispredictions, system calls and other processes, which is the point (they are the same
on a slow, busy machine), and also the limit (a change that only moves memory traffic does not show).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

MARKER = "getppid"
EMPTY = "_empty"
WORKER_FLAG = "--instructions-worker"
# Valgrind runs Python ~50x slower; a worker that runs longer than this is stuck.
TIMEOUT_S = 600


def valgrind() -> str | None:
    return shutil.which("valgrind")


def valgrind_version() -> str | None:
    v = valgrind()
    if v is None:
        return None
    out = subprocess.run([v, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out.removeprefix("valgrind-") or None


def mark() -> None:
    """Close the current callgrind dump (callgrind runs with ``--dump-before=getppid``)."""
    os.getppid()


def run_sides(sides: dict[str, Callable[[], object]], n: int) -> None:
    """Worker side: the empty loop, then each side ``n`` times, a mark before the first and after each."""
    noop: Callable[[], object] = lambda: None  # noqa: E731
    ordered = {EMPTY: noop, **sides}
    for fn in ordered.values():  # warm up: first calls, caches, free lists
        for _ in range(max(1, n // 10)):
            fn()
    mark()
    for fn in ordered.values():
        for _ in range(n):
            fn()
        mark()


def _totals(path: Path) -> int:
    text = path.read_text(errors="replace")
    m = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(r"^summary:\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no totals in {path}")
    return int(m.group(1))


def measure(script: Path, args: Sequence[str], names: Sequence[str], n: int) -> dict[str, float]:
    """Run ``script --instructions-worker N *args`` under callgrind; instructions per call of each side.

    ``names`` are the sides the worker passes to :func:`run_sides`, in the same order.
    """
    vg = valgrind()
    if vg is None:
        raise SystemExit("instruction mode needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="edgeseal-callgrind-") as d:
        out = Path(d) / "cg.out"
        cmd = [
            vg, "--tool=callgrind", f"--callgrind-out-file={out}", f"--dump-before={MARKER}",
            "--dump-instr=no", "--dump-line=no", "--compress-strings=no",
            sys.executable, str(script), WORKER_FLAG, str(n), *args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S, check=False)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-5:])
            raise SystemExit(f"callgrind worker failed (exit {done.returncode}): {tail}")
        # cg.out.1 = start-up and set-up, cg.out.2.. = the sides in order, cg.out = the exit.
        dumps = sorted(Path(d).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        expected = len(names) + 2  # set-up, the empty loop, each side
        if len(dumps) != expected:
            raise SystemExit(
                f"callgrind wrote {len(dumps)} dumps, expected {expected}: is {MARKER} called elsewhere?"
            )
        counts = [_totals(p) for p in dumps[1:]]
    empty = counts[0]
    return {name: max(0.0, (c - empty) / n) for name, c in zip(names, counts[1:], strict=True)}


def worker_n(argv: list[str]) -> int | None:
    """``N`` when this process is an instruction worker (``--instructions-worker N``), and strip the flag."""
    if WORKER_FLAG not in argv:
        return None
    i = argv.index(WORKER_FLAG)
    n = int(argv[i + 1])
    del argv[i : i + 2]
    return n
