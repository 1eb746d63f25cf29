"""The virtual microcontroller over real pseudo-terminals, read by an independent decoder."""

from __future__ import annotations

import errno
import itertools
import os
import random
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_bridge.errors import ConfigError, SimulatorError
from firmware_bridge.sim.faults import GARBAGE_MAX_LEN, FaultConfig, FaultInjector
from firmware_bridge.sim.simulator import HZ_LIMITS, TX_QUEUE_MAX, Simulator
from tests.firmware_bridge._support import read_until, unwire, wire

HELLO, SAMPLE, LOG, ERROR, PING, CONFIG = 0x01, 0x02, 0x03, 0x04, 0x81, 0x82


def open_reader(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY)


@pytest.fixture
def sim_factory() -> Iterator[list[Simulator]]:
    sims: list[Simulator] = []
    yield sims
    for sim in sims:
        sim.stop()


def start(sims: list[Simulator], **kwargs: object) -> tuple[Simulator, int]:
    sim = Simulator(**kwargs)  # type: ignore[arg-type]
    sims.append(sim)
    fd = open_reader(sim.start())
    return sim, fd


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    return unwire(data)


def has(kind: int, count: int = 1):  # type: ignore[no-untyped-def]
    return lambda buf: sum(1 for f in frames_of(buf) if f[0] == kind) >= count


@pytest.mark.integration
def test_vibration_frames_stream_in_real_time(sim_factory: list[Simulator]) -> None:
    sim, fd = start(sim_factory, profile="vibration", hz=400, seed=1)
    try:
        sim.set_condition("normal")
        data = read_until(fd, has(SAMPLE, 120), timeout_s=5)
    finally:
        os.close(fd)
    frames = frames_of(data)
    samples = [f for f in frames if f[0] == SAMPLE]
    assert len(samples) >= 120
    seqs = [f[1] for f in samples]
    assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(seqs))
    times = [struct.unpack_from("<I", f[2])[0] for f in samples]
    assert all(b - a == 2500 for a, b in itertools.pairwise(times))  # 400 Hz in sample time
    assert all(len(f[2]) == 4 + 3 * 4 for f in samples)
    assert sim.stats()["samples"] >= 120


@pytest.mark.integration
def test_ping_gets_hello_and_config_is_applied(sim_factory: list[Simulator]) -> None:
    sim, fd = start(sim_factory, profile="vibration", hz=100, seed=2)
    try:
        os.write(fd, wire(PING, 0) + wire(CONFIG, 1, b"hz=800;cond=imbalance") + wire(PING, 2))
        data = read_until(fd, lambda b: has(HELLO, 2)(b) and has(LOG, 2)(b), timeout_s=5)
        os.write(fd, wire(CONFIG, 3, b"hz=900;junk"))
        refused = read_until(fd, has(ERROR, 1), timeout_s=5)
        os.write(fd, wire(CONFIG, 4, b"hz=5000;cond=wobble;colour=red"))
        more = read_until(fd, has(ERROR, 3), timeout_s=5)
    finally:
        os.close(fd)
    frames = frames_of(data)
    hellos = [f[2].decode() for f in frames if f[0] == HELLO]
    assert any("hz=800" in h and "cond=imbalance" in h and "ch=ax,ay,az" in h for h in hellos)
    logs = [f[2].decode() for f in frames if f[0] == LOG]
    assert "config hz=800" in logs
    assert "cond=imbalance" in logs
    errors = [
        (int.from_bytes(f[2][:2], "little"), f[2][2:].decode()) for f in frames_of(refused) if f[0] == ERROR
    ]
    assert errors == [(1, "bad config: setting 'junk' has no '='")]  # the whole CONFIG is refused
    codes = [int.from_bytes(f[2][:2], "little") for f in frames_of(more) if f[0] == ERROR]
    assert codes == [3, 3, 2]
    assert sim.hello.hz == 800
    assert sim.stats()["pings"] == 2
    assert sim.stats()["bad_configs"] == 4


@pytest.mark.integration
def test_lines_protocol(sim_factory: list[Simulator]) -> None:
    _, fd = start(sim_factory, profile="environment", hz=10, protocol="lines", seed=3)
    try:
        data = read_until(fd, lambda b: b.count(b"\n") >= 3, timeout_s=5)
    finally:
        os.close(fd)
    line = data.split(b"\r\n")[0].decode()
    keys = [item.split("=")[0] for item in line.split(",")]
    assert keys == ["temp", "hum", "press"]
    assert all(float(item.split("=")[1]) == float(item.split("=")[1]) for item in line.split(","))


@pytest.mark.integration
def test_schedule_switches_condition_in_sample_time(sim_factory: list[Simulator]) -> None:
    _, fd = start(
        sim_factory, profile="vibration", hz=1000, seed=4, schedule=[(0.5, "bearing")], realtime=False
    )
    try:
        data = read_until(fd, lambda b: b"cond=bearing" in b and has(SAMPLE, 700)(b), timeout_s=10)
    finally:
        os.close(fd)
    frames = frames_of(data)
    switch = next(i for i, f in enumerate(frames) if f[0] == LOG and f[2] == b"cond=bearing")
    before = [struct.unpack_from("<I", f[2])[0] for f in frames[:switch] if f[0] == SAMPLE]
    assert before[-1] == pytest.approx(499_000, abs=1)  # the sample just before t = 0.5 s


@pytest.mark.integration
def test_bit_errors_garbage_and_drops_are_survivable(sim_factory: list[Simulator]) -> None:
    faults = FaultConfig(ber=1e-3, drop_rate=1e-3, garbage_every_s=0.05)
    sim, fd = start(sim_factory, profile="vibration", hz=1000, seed=5, faults=faults, realtime=False)
    try:
        data = read_until(fd, lambda b: len(b) > 60_000, timeout_s=10)
    finally:
        os.close(fd)
    stats = sim.stats()
    assert stats["bit_flips"] > 0
    assert stats["dropped_bytes"] > 0
    frames = frames_of(data)
    good = [f for f in frames if f[0] == SAMPLE]
    assert len(good) > 1000
    # every frame that decodes is one the simulator made: its timestamp is a multiple of 1000 µs
    assert all(struct.unpack_from("<I", f[2])[0] % 1000 == 0 for f in good)


@pytest.mark.integration
def test_unplug_closes_the_pty_and_a_new_one_comes_back(sim_factory: list[Simulator], tmp_path: Path) -> None:
    link = tmp_path / "ttySIM"
    sim, fd = start(sim_factory, profile="vibration", hz=200, seed=6, link=link)
    first = os.path.realpath(link)
    read_until(fd, has(SAMPLE, 5), timeout_s=5)
    sim.unplug(0.3)
    deadline = time.monotonic() + 5
    gone: int | None = None
    while time.monotonic() < deadline and gone is None:
        try:
            if not os.read(fd, 4096):
                gone = 0
        except OSError as exc:
            gone = exc.errno
    os.close(fd)
    assert gone in (0, errno.EIO)  # the slave side of a closed pty reads EOF or EIO
    deadline = time.monotonic() + 5
    while not link.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert link.is_symlink()
    fd = open_reader(str(link))
    try:
        assert has(SAMPLE, 5)(read_until(fd, has(SAMPLE, 5), timeout_s=5))
    finally:
        os.close(fd)
    assert sim.stats()["disconnects"] == 1
    assert sim.slave_path == os.path.realpath(link)
    del first


@pytest.mark.integration
def test_stop_cleans_up(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    sim = Simulator(hz=50, link=link)
    with sim:
        assert sim.running
        assert link.is_symlink()
    assert not sim.running
    assert not link.exists()
    assert sim.slave_path is None
    sim.stop()  # twice is fine


def test_link_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(SimulatorError, match="not a symlink"):
        Simulator(link=taken).start()
    assert taken.read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"profile": "seismic"},
        {"protocol": "morse"},
        {"hz": HZ_LIMITS["vibration"][1] + 1},
        {"hz": HZ_LIMITS["vibration"][0] - 1},
        {"profile": "environment", "hz": 11.0},
        {"schedule": [(1.0, "wobble")]},
        {"schedule": [(-1.0, "normal")]},
        {"profile": "environment", "schedule": [(1.0, "bearing")]},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Simulator(**kwargs)  # type: ignore[arg-type]


def test_path_before_start_is_an_error() -> None:
    with pytest.raises(SimulatorError):
        _ = Simulator().path


# -- the fault injector (pure) ---------------------------------------------------------------------


def test_bit_error_rate_is_about_right() -> None:
    injector = FaultInjector(FaultConfig(ber=1e-3), random.Random(1))
    data = bytes(100_000)
    out = b"".join(injector.corrupt(data[i : i + 100]) for i in range(0, len(data), 100))
    flips = sum(bin(b).count("1") for b in out)
    assert flips == injector.bit_flips
    assert 700 < flips < 900  # 800 expected


def test_drop_rate_is_about_right() -> None:
    injector = FaultInjector(FaultConfig(drop_rate=0.01), random.Random(2))
    out = injector.corrupt(bytes(100_000))
    assert len(out) == 100_000 - injector.dropped_bytes
    assert 850 < injector.dropped_bytes < 1150


def test_no_faults_no_change() -> None:
    injector = FaultInjector(FaultConfig(), random.Random(3))
    assert injector.corrupt(b"abc") == b"abc"
    assert 1 <= len(injector.garbage()) <= GARBAGE_MAX_LEN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ber": 0.6},
        {"ber": -1.0},
        {"drop_rate": 1.0},
        {"disconnect_for_s": 0.0},
        {"garbage_every_s": float("nan")},
    ],
)
def test_fault_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FaultConfig(**kwargs)


@pytest.mark.integration
def test_a_reader_that_stalls_costs_whole_frames_not_memory(sim_factory: list[Simulator]) -> None:
    """Time runs 100x fast: the catch-up cap skips samples, the full queue drops whole frames."""
    sim = Simulator(hz=1000, seed=9, clock=lambda: time.monotonic() * 100)
    sim_factory.append(sim)
    fd = open_reader(sim.start())  # opened, never read: the pty fills up
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = sim.stats()
            if stats["tx_overflow"] and stats["skipped"]:
                break
            time.sleep(0.05)
        assert stats["skipped"] > 0  # MAX_CATCH_UP_S
        assert stats["tx_overflow"] > 0  # TX_QUEUE_MAX
        assert len(sim._tx) <= TX_QUEUE_MAX  # bounded, whatever the reader does
        os.set_blocking(fd, False)
        data = read_until(fd, lambda b: len(b) > 200_000, timeout_s=5)
    finally:
        os.close(fd)
    seqs = [f[1] for f in frames_of(data) if f[0] == SAMPLE]
    gaps = sum((b - a - 1) % 256 for a, b in itertools.pairwise(seqs))
    assert gaps > 0  # the dropped frames show as lost seq
    assert all(struct.unpack_from("<I", f[2])[0] % 1000 == 0 for f in frames_of(data) if f[0] == SAMPLE)


def test_fault_duration_limit() -> None:
    from firmware_bridge.sim.faults import MAX_DISCONNECT_S

    assert FaultConfig(disconnect_for_s=MAX_DISCONNECT_S).disconnect_for_s == MAX_DISCONNECT_S
    with pytest.raises(ConfigError):
        FaultConfig(disconnect_for_s=MAX_DISCONNECT_S + 1)
