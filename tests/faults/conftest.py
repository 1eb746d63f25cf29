"""Fixtures of the fault suite: a rig per test (see :mod:`tests.faults._harness`) and ``figure``, which
prints a test's figure on one ``FIGURE:`` line and repeats every figure in the terminal summary."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults._harness import Rig

_FIGURES: list[str] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    def emit(text: str) -> None:
        line = f"FIGURE: {text}"
        print(line, flush=True)
        _FIGURES.append(f"{request.node.nodeid}: {line}")

    return emit


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(devices: int = 1, **kw: Any) -> Rig:
        d = tmp_path / f"rig{len(rigs)}"
        d.mkdir()
        r = Rig(d, f"f{secrets.token_hex(3)}", devices, **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("fault-suite figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
