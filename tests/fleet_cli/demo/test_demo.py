"""``fleet demo`` end to end, on both broker paths, as a user runs it: a subprocess, --json summary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _no_agents_left(workdir: Path) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return str(workdir) not in out


def _run_demo(tmp_path: Path, *args: str, timeout: float = 120) -> dict:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fleet_cli", "demo", "--json", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # the embedded broker reports an exception that escaped amqtt as one warning line; there must be none
    assert "internal amqtt error" not in proc.stderr, proc.stderr[-3000:]
    assert _no_agents_left(workdir)
    assert not workdir.exists(), "the demo removes its working directory"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_summary(summary: dict, devices: int) -> None:
    assert summary["accepted"] > 0
    assert set(summary["devices"]) == {f"dev-{i:02d}" for i in range(1, devices + 1)}
    for name, d in summary["devices"].items():
        assert d["accepted"] > 0, name
        assert set(d["labels"]) <= {"normal", "imbalance", "bearing"}
    # dev-01 is healthy, dev-03 has a bearing fault from the start: the shipped model must say so
    labels1, labels3 = summary["devices"]["dev-01"]["labels"], summary["devices"]["dev-03"]["labels"]
    assert max(labels1, key=labels1.get) == "normal"
    assert max(labels3, key=labels3.get) == "bearing"
    assert summary["latency_ms"]["p50"] is not None
    attacks = {a["expected"]: a for a in summary["attacks"]}
    assert set(attacks) == {"BAD_SIGNATURE", "UNKNOWN_KEY", "DUPLICATE"}
    assert all(a["caught"] for a in summary["attacks"]), summary["attacks"]
    assert summary["rejected"].get("BAD_SIGNATURE", 0) >= 1
    assert summary["rejected"].get("UNKNOWN_KEY", 0) >= 1
    assert "ACCEPTED" not in summary["rejected"]
    # the fleet log: every stored message a leaf, a checkpoint signed within the run (every 5 s)
    assert summary["log"]["tree_size"] > 0
    assert summary["log"]["checkpoint_size"] is not None
    assert 0 < summary["log"]["checkpoint_size"] <= summary["log"]["tree_size"]


def test_demo_with_mosquitto(tmp_path: Path) -> None:
    summary = _run_demo(tmp_path, "--devices", "3", "--duration", "14", "--broker", "mosquitto")
    assert summary["broker"] == "mosquitto"
    _check_summary(summary, 3)


def test_demo_with_embedded_broker(tmp_path: Path) -> None:
    summary = _run_demo(tmp_path, "--devices", "3", "--duration", "14", "--broker", "embedded")
    assert summary["broker"] == "embedded"
    _check_summary(summary, 3)


def test_demo_sigint_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet_cli", "demo", "--json", "--duration", "120", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(workdir.glob("agents/*/agent.log")):
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["accepted"] >= 0
    assert _no_agents_left(workdir)
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--devices", "0"], "--devices"),
        (["--devices", "500"], "--devices"),
        (["--duration", "1"], "--duration"),
        (["--broker", "rabbit"], "--broker"),
    ],
)
def test_demo_usage_errors(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet_cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    # the embedded broker reports an exception that escaped amqtt as one warning line; there must be none
    assert "internal amqtt error" not in proc.stderr, proc.stderr[-3000:]


def test_demo_bridge_error_is_one_line(tmp_path: Path) -> None:
    """A firmware_bridge error (here the simulator's: its pty link path is taken) is printed by
    fleet's main as an error line with its hint, exit 1, like every other package's error."""
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "tty-dev-01").write_text("not a pty link\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fleet_cli", "demo", "--json", "--devices", "1", "--duration", "5",
         "--broker", "embedded", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"error: {workdir / 'tty-dev-01'} exists and is not a symlink" in proc.stderr
    assert "hint: " in proc.stderr
    assert _no_agents_left(workdir)


def test_demo_keep_leaves_a_fleet_home_every_command_reads(tmp_path: Path) -> None:
    """After `fleet demo --keep --workdir W`, `--home W/fleet` is enough: the store is where
    `fleet collect` keeps it (fleet_cli.collector.store.default_store_path), not beside the fleet home."""
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fleet_cli", "demo", "--json", "--devices", "1", "--duration", "8",
         "--broker", "embedded", "--no-attack", "--keep", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    accepted = json.loads(proc.stdout.strip().splitlines()[-1])["accepted"]
    assert accepted > 0
    assert _no_agents_left(workdir)
    home = workdir / "fleet"

    def fleet(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "fleet_cli", *args, "--home", str(home)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    status = json.loads(fleet("status", "--json"))
    assert [(d["dev"], d["registry"]) for d in status["devices"]] == [("dev-01", "enrolled")]
    assert status["devices"][0]["accepted"] >= accepted
    records = [json.loads(line) for line in fleet("export").splitlines()]
    assert len(records) >= accepted  # every stored message (births, results, heartbeats)
    assert {r["dev"] for r in records if r["kind"] == "result"} == {"dev-01"}
    assert json.loads(fleet("stats", "--json"))
