"""A short fuzzing run of every target in fuzz/ (issue 11), so that `make test` looks for new crashes.

With atheris each target runs for :data:`SECONDS` in a subprocess (``python -m fuzz.run``, which copies
the seed corpus to a temporary directory: the repository is not written); without it, hypothesis runs
the same ``one_input`` on :data:`HYPOTHESIS_EXAMPLES` random and mutated inputs. A crash fails the
test with the input in base64 and how to turn it into a regression test (docs/fuzzing.md).
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import TARGETS
from fuzz.run import Crash, atheris_available, hypothesis_run, seeds
from fuzz.seeds import write_all

ROOT = Path(__file__).resolve().parent.parent.parent
# Eight targets at 5 s each (and about 1.5 s of start-up each) keep the whole run near a minute.
SECONDS = 5
HYPOTHESIS_EXAMPLES = 1000


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzzing_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    if not atheris_available():
        crash = hypothesis_run(target, max_examples=HYPOTHESIS_EXAMPLES)
        assert crash is None, crash.report()
        return
    command = [sys.executable, "-m", "fuzz.run", target, "--engine", "atheris", "--seconds", str(SECONDS)]
    proc = subprocess.run(
        [*command, "--work", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS * 10 + 60,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Done " in proc.stdout, proc.stdout


def test_hypothesis_fallback_runs_and_reports_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback must keep working where atheris is installed too; a fake target shows a crash."""
    assert hypothesis_run("frames", max_examples=20) is None

    def crashes_on_zero(data: bytes) -> None:
        if b"\x00" in data:
            raise OverflowError("boom")

    monkeypatch.setattr("fuzz.run.load_target", lambda _name: crashes_on_zero)
    crash = hypothesis_run("lines", max_examples=200)
    assert crash is not None
    assert b"\x00" in crash.data
    assert "OverflowError: boom" in crash.detail


def test_crash_report_gives_the_input_and_a_hint() -> None:
    report = Crash("frames", b"\x00\xff", "Traceback ...").report()
    assert base64.b64encode(b"\x00\xff").decode() in report
    assert "tests/fuzz/test_regressions.py" in report
    assert "frames.one_input(b'\\x00\\xff')" in report


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_seeds(target: str) -> None:
    assert seeds(target), f"fuzz/corpus/{target}/ is empty: run python -m fuzz.seeds"


def test_committed_seeds_are_what_fuzz_seeds_makes(tmp_path: Path) -> None:
    """The corpus follows the vectors: after changing tests/vectors, run python -m fuzz.seeds."""
    write_all(tmp_path)
    made = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    corpus = ROOT / "fuzz" / "corpus"
    committed = {p.relative_to(corpus): p.read_bytes() for p in corpus.rglob("*") if p.is_file()}
    assert sorted(made) == sorted(committed)
    assert made == committed
