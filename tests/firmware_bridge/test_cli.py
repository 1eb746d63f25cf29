"""The firmware-bridge command, run as a user runs it: subprocesses over real pseudo-terminals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.cli import main
from tests.firmware_bridge._support import raw_pty, read_until, unwire, wire

CLI = [sys.executable, "-m", "firmware_bridge"]
HELLO, SAMPLE, LOG, ERROR, PING = 0x01, 0x02, 0x03, 0x04, 0x81


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("firmware-bridge ")
    for sub in ((), ("simulate",), ("monitor",)):
        result = run_cli(*sub, "--help")
        assert result.returncode == 0
        assert "usage:" in result.stdout


def test_cli_import_stays_light() -> None:
    code = (
        "import sys, firmware_bridge.cli, firmware_bridge.link, firmware_bridge.frames\n"
        "heavy = [m for m in ('serial', 'numpy', 'rich', 'typer', 'ai_edge_litert') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("monitor", "/dev/ttyDOES_NOT_EXIST"), "cannot open /dev/ttyDOES_NOT_EXIST"),
        (("simulate", "--hz", "5000"), "outside 50..1000"),
        (("simulate", "--profile", "seismic"), "unknown profile"),
        (("simulate", "--ber", "0.9"), "bit error rate"),
        (("simulate", "--condition", "wobble"), "condition"),
        (("monitor", "loop://", "--channels", ","), "names no channel"),
    ],
)
def test_bad_input_gives_one_error_line_not_a_traceback(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: ")
    assert message in first


def test_bad_option_values_are_usage_errors() -> None:
    result = run_cli("simulate", "--ber", "lots")
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("monitor", "x", "--count", "0").returncode == 2


def test_monitor_in_process_on_a_loop_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "loop://", "--count", "1", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"type": "PING", "seq": 0, "payload": ""}  # loop:// echoes our own PING
    assert lines[-1]["type"] == "STATS"
    assert lines[-1]["frames"] == 1


class Feeder:
    """Writes frames from an independent encoder, with noise, to a pty master until stopped."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.stop = threading.Event()
        self.received = b""
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        seq = 0
        os.set_blocking(self.master, False)
        while not self.stop.is_set():
            chunk = wire(HELLO, seq, b"fw=ext;ver=3;ch=a,b;hz=100") if seq % 50 == 0 else b""
            seq = (seq + 1) % 256
            chunk += wire(SAMPLE, seq, struct.pack("<Iff", seq * 10_000, seq, 0.5))
            seq = (seq + 1) % 256
            bad = bytearray(wire(SAMPLE, seq, struct.pack("<Iff", 1, 2, 3)))
            bad[5] ^= 0x04  # a bit error: this frame must be dropped
            chunk += bytes(bad) + b"\x55\xaa\x00"  # and a short burst of line noise
            seq = (seq + 1) % 256
            chunk += wire(LOG, seq, b"hello \x1b[31m log")
            seq = (seq + 1) % 256
            with contextlib.suppress(OSError):  # nobody has the port open yet (EIO), or it is full
                os.write(self.master, chunk)
            with contextlib.suppress(OSError):
                self.received += os.read(self.master, 4096)
            time.sleep(0.005)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, path = raw_pty()
    yield master, path
    os.close(master)


@pytest.mark.integration
def test_monitor_json_count_reads_an_independent_encoder_through_noise(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    with Feeder(master) as feeder:
        result = run_cli("monitor", path, "--count", "30", "--json", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    records: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 31
    assert {r["type"] for r in records[:-1]} <= {"HELLO", "SAMPLE", "LOG"}
    samples = [r for r in records if r["type"] == "SAMPLE"]
    assert samples
    for record in samples:
        assert record["values"] == [float(record["t_us"] // 10_000), 0.5]  # never the corrupted one
        assert isinstance(record["seq"], int)
    logs = [r for r in records if r["type"] == "LOG"]
    assert all(r["text"] == "hello \x1b[31m log" for r in logs)  # JSON escapes it: safe on a terminal
    assert "\x1b" not in result.stdout
    stats = records[-1]
    assert stats["type"] == "STATS"
    assert stats["crc_errors"] + stats["cobs_errors"] >= 1
    assert stats["frames"] >= 30
    assert unwire(feeder.received)[0] == (PING, 0, b"")  # the monitor PINGed the device


@pytest.mark.integration
def test_monitor_human_output_and_ctrl_c(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    with Feeder(master):
        proc = subprocess.Popen(
            [*CLI, "monitor", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    lines = [first, *out.splitlines()]
    assert lines[-1].startswith("counters: frames=")
    assert any(line.startswith("SAMPLE seq=") and "values=" in line for line in lines)
    assert any(line.startswith("LOG seq=") and "\ufffd[31m" in line for line in lines)  # sanitised
    assert "Traceback" not in err


@pytest.mark.integration
def test_monitor_timeout_without_enough_frames_fails_with_counters(pty_pair: tuple[int, str]) -> None:
    _, path = pty_pair
    started = time.monotonic()
    result = run_cli("monitor", path, "--count", "5", "--json", "--timeout", "0.5")
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[-1])["type"] == "STATS"
    assert result.stderr.startswith("error: 0 of 5 frames")


@pytest.mark.integration
def test_simulate_prints_its_path_and_an_independent_decoder_reads_it(tmp_path: Path) -> None:
    link = tmp_path / "ttySIM"
    proc = subprocess.Popen(
        [*CLI, "simulate", "--hz", "200", "--seed", "3", "--link", str(link), "--condition", "imbalance"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, wire(PING, 0))
            data = read_until(fd, lambda b: any(f[0] == HELLO for f in unwire(b)) and len(unwire(b)) > 20)
        finally:
            os.close(fd)
        frames = unwire(data)
        hello = next(f for f in frames if f[0] == HELLO)[2].decode()
        assert "ch=ax,ay,az" in hello
        assert "hz=200" in hello
        assert "cond=imbalance" in hello
        assert sum(1 for f in frames if f[0] == SAMPLE) > 10
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "counters: samples=" in err
    assert not link.exists()


@pytest.mark.integration
def test_simulate_and_monitor_together_over_lines(tmp_path: Path) -> None:
    link = tmp_path / "ttyENV"
    sim = subprocess.Popen(
        [
            *CLI,
            "simulate",
            "--profile",
            "environment",
            "--hz",
            "10",
            "--protocol",
            "lines",
            "--link",
            str(link),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        sim.stdout.readline()
        result = run_cli(
            "monitor", str(link), "--protocol", "lines", "--count", "3", "--json", "--timeout", "20"
        )
    finally:
        sim.terminate()
        sim.communicate(timeout=10)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in records] == ["SAMPLE"] * 3 + ["STATS"]
    assert all(len(r["values"]) == 3 and r["seq"] is None for r in records[:3])
    assert 10 < records[0]["values"][0] < 40  # a room temperature in degC
    assert records[-1]["lines"] >= 3


def test_firmware_command_copies_a_ready_sketch_folder(tmp_path: Path) -> None:
    result = run_cli("firmware", str(tmp_path))
    assert result.returncode == 0, result.stderr
    sketch = tmp_path / "edgeseal_imu"
    assert result.stdout.strip() == str(sketch)
    assert sorted(p.name for p in sketch.iterdir()) == [
        "edgeseal_frame.c",
        "edgeseal_frame.h",
        "edgeseal_imu.ino",
    ]
    again = run_cli("firmware", str(tmp_path))
    assert again.returncode == 1
    assert again.stderr.startswith("error: ")
    assert "--force" in again.stderr
    assert run_cli("firmware", str(tmp_path), "--force").returncode == 0


def test_bench_reports_the_figures_the_issue_asks_for() -> None:
    bench = Path(__file__).resolve().parents[2] / "bench" / "frames.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--frames", "3000", "--rounds", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout)
    assert figures["frames"] == 3000
    assert figures["corrupt_accepted"] == 0
    assert figures["good_decoded"] == figures["good_frames"]
    assert figures["decode_vs_921600_baud"] >= 10


def test_monitor_cuts_long_device_text() -> None:
    from firmware_bridge.cli import MONITOR_TEXT_MAX, _human

    line = _human({"type": "LOG", "seq": 1, "text": "x" * (MONITOR_TEXT_MAX + 500)})
    assert line == "LOG seq=1 text=" + "x" * MONITOR_TEXT_MAX + "\N{HORIZONTAL ELLIPSIS}"
