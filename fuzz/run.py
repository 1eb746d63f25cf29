"""Run the fuzz targets: ``python -m fuzz.run [TARGET ...] [--seconds N]`` (every target when none is named).

Engines: atheris (libFuzzer, coverage-guided) when it can be imported, else hypothesis (random and
mutated seeds, no coverage feedback). With atheris each target runs in a child process, because
libFuzzer ends the process it runs in; the child works in ``<work>/<target>/``: ``corpus/`` (a copy of
``fuzz/corpus/<target>/``, so the repository is never written), ``crashes/`` (what libFuzzer saves)
and ``fuzz.log``. A crash is reported with the input in base64 and the traceback, and the exit status
is 1. See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fuzz import SCRATCH_ENV, TARGETS

CORPUS = Path(__file__).resolve().parent / "corpus"
# `make fuzz`: ten minutes a target unless FUZZ_SECONDS says otherwise.
SECONDS_ENV = "FUZZ_SECONDS"
DEFAULT_SECONDS = 600
# Python with every package imported and instrumented stays near 200 MiB; an input that needs five
# times that is a finding (libFuzzer reports it as out-of-memory), not a reason to let it swap.
DEFAULT_RSS_MB = 1024
# libFuzzer's -timeout, per input: every parser here answers in milliseconds.
INPUT_TIMEOUT_S = 30
# The longest input made up (libFuzzer's -max_len, hypothesis's binary size); the largest seed is
# about 1.5 KiB, and every limit a parser enforces (1 KiB lines and frame bodies) is below this.
MAX_LEN = 4096
# Hypothesis runs in batches of this many examples until the time is up (or once, in the tests).
HYPOTHESIS_BATCH = 500
# Packages whose code libFuzzer gets coverage from; tomllib/tomli and cobs are pure Python parsers the
# TOML and frame inputs must get through first.
INSTRUMENTED = (
    "edge_protocol",
    "edge_agent",
    "firmware_bridge",
    "fleet_cli",
    "broker_config",
    "tomllib",
    "tomli",
    "cobs",
)
_EXCEPTION_MARK = "=== Uncaught Python exception"

OneInput = Callable[[bytes], None]


def atheris_available() -> bool:
    """Whether atheris can be imported (it has wheels for x86_64 Linux and CPython up to 3.12 or so)."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def load_target(name: str) -> OneInput:
    """``fuzz.<name>.one_input``."""
    if name not in TARGETS:
        raise SystemExit(f"unknown fuzz target {name!r}; the targets are {', '.join(TARGETS)}")
    module = importlib.import_module(f"fuzz.{name}")
    one_input: OneInput = module.one_input
    return one_input


def seeds(name: str) -> list[bytes]:
    """The seed inputs of ``name``, from ``fuzz/corpus/<name>/``, in file name order."""
    directory = CORPUS / name
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()] if directory.is_dir() else []


@dataclass(frozen=True)
class Crash:
    """An input that made a target raise something it does not document."""

    target: str
    data: bytes
    detail: str  # the traceback, or what libFuzzer said

    def report(self) -> str:
        encoded = base64.b64encode(self.data).decode("ascii")
        return (
            f"fuzz target {self.target!r} crashed on an input of {len(self.data)} bytes.\n"
            f"input (base64): {encoded}\n"
            f"input (bytes):  {self.data!r}\n"
            f"{self.detail.rstrip()}\n"
            f"hint: add it to tests/fuzz/test_regressions.py as a regression test:\n"
            f"    def test_{self.target}_<what>() -> None:\n"
            f"        {self.target}.one_input({self.data!r})\n"
            f"then fix the parser (or mark the test xfail(strict=True) while its owner fixes it)."
        )


# -- hypothesis ---------------------------------------------------------------------------------------


def _mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, at, chunk in edits:
        i = at % (len(data) + 1)
        if op == 0:  # flip a bit
            if data:
                data[i % len(data)] ^= 1 << (chunk[0] % 8)
        elif op == 1:  # insert
            data[i:i] = chunk
        elif op == 2:  # overwrite
            data[i : i + len(chunk)] = chunk
        elif op == 3:  # delete
            del data[i : i + len(chunk)]
        elif op == 4:  # truncate
            del data[i:]
        else:  # repeat a slice
            data[i:i] = data[i : i + len(chunk) * 8]
    return bytes(data[:MAX_LEN])


def hypothesis_run(name: str, *, max_examples: int, seconds: float | None = None) -> Crash | None:
    """Fuzz ``name`` with hypothesis: its seeds as they are, then random bytes and mutated seeds.

    One batch of ``max_examples``; with ``seconds``, batches until that much time has passed. Returns
    the first crash, shrunk by hypothesis, or None.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    one_input = load_target(name)
    corpus = seeds(name)
    failing: list[bytes] = []

    def check(data: bytes) -> None:
        try:
            one_input(data)
        except Exception:
            failing.append(data)
            raise

    for seed in corpus:
        try:
            check(seed)
        except Exception:
            return Crash(name, seed, traceback.format_exc())

    edit = st.tuples(st.integers(0, 5), st.integers(0, MAX_LEN), st.binary(min_size=1, max_size=16))
    inputs = st.binary(max_size=MAX_LEN)
    if corpus:
        mutated = st.builds(_mutate, st.sampled_from(corpus), st.lists(edit, max_size=8))
        inputs = st.one_of(inputs, mutated)

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def fuzz(data: bytes) -> None:
        check(data)

    end = None if seconds is None else time.monotonic() + seconds
    while True:
        try:
            fuzz()
        except Exception:
            return Crash(name, failing[-1] if failing else b"", traceback.format_exc())
        if end is None or time.monotonic() >= end:
            return None


# -- atheris ------------------------------------------------------------------------------------------


def _in_process(name: str, libfuzzer_args: list[str]) -> None:
    """Run libFuzzer on ``name`` in this process; it exits when done (status 0) or on a crash."""
    import atheris

    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        one_input = load_target(name)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def atheris_run(name: str, work: Path, seconds: int, extra: Sequence[str] = ()) -> Crash | None:
    """Fuzz ``name`` with atheris for ``seconds`` in a child process working in ``work/<name>/``."""
    home = work / name
    corpus = home / "corpus"
    crashes = home / "crashes"
    if (CORPUS / name).is_dir() and not corpus.exists():
        shutil.copytree(CORPUS / name, corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    args = [
        f"-max_total_time={seconds}",
        f"-rss_limit_mb={DEFAULT_RSS_MB}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *extra,
        str(corpus),
    ]
    log = home / "fuzz.log"
    env = {**os.environ, SCRATCH_ENV: str(home / "scratch")}
    # Run from the repository root so that `fuzz` and the packages import from this checkout.
    cwd = Path(__file__).resolve().parent.parent
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "fuzz.run", "--in-process", name, "--", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            check=False,
        )
    text = log.read_text(errors="replace")
    found = sorted(p for p in crashes.iterdir() if p.is_file())
    if proc.returncode == 0 and not found:
        done = [line for line in text.splitlines() if line.startswith("Done ")]
        print(f"{name}: {done[-1] if done else 'done'} (atheris)", flush=True)
        return None
    at = text.find(_EXCEPTION_MARK)
    detail = text[at:] if at >= 0 else text[-4000:]
    detail = "\n".join(detail.splitlines()[:80])
    data = found[0].read_bytes() if found else b""
    if not found:
        detail = f"libFuzzer exited with status {proc.returncode} and saved no input; log {log}:\n{detail}"
    return Crash(name, data, f"{found[0].name if found else ''}\n{detail}")


# -- command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n", 1)[0])
    parser.add_argument("targets", nargs="*", help=f"targets to run (default: all of {', '.join(TARGETS)})")
    parser.add_argument(
        "--seconds",
        type=int,
        default=int(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS)),
        help=f"time per target (default ${SECONDS_ENV}, else {DEFAULT_SECONDS})",
    )
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument(
        "--work",
        type=Path,
        help="atheris: where each target's corpus, crashes and log go (default: a new temporary directory)",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.epilog = "Options after -- go to libFuzzer (atheris only), e.g. -- -only_ascii=1."
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - 1] if "--" in argv else argv)
    # The parsers log what they skip; a fuzzer makes millions of such inputs, and the log is no finding.
    logging.getLogger().addHandler(logging.NullHandler())
    if args.in_process:
        _in_process(args.targets[0], extra)
        return 0  # not reached: libFuzzer exits
    targets = args.targets or list(TARGETS)
    for name in targets:
        load_target(name)  # an unknown name fails before anything runs
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "hypothesis"
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeseal-fuzz-"))
    if engine == "atheris":
        print(f"atheris: {len(targets)} target(s), {args.seconds} s each, work in {work}", flush=True)
    crashes: list[Crash] = []
    for name in targets:
        if engine == "atheris":
            crash = atheris_run(name, work, args.seconds, extra)
        else:
            crash = hypothesis_run(name, max_examples=HYPOTHESIS_BATCH, seconds=args.seconds)
            if crash is None:
                print(f"{name}: no crash in {args.seconds} s (hypothesis)", flush=True)
        if crash is not None:
            print(crash.report(), flush=True)
            crashes.append(crash)
    if crashes:
        print(f"{len(crashes)} of {len(targets)} target(s) crashed: {', '.join(c.target for c in crashes)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
