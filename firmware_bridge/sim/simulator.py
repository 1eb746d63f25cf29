"""A virtual microcontroller on a pseudo-terminal, speaking frames of docs/firmware_bridge.md or text lines.

The simulator owns the master side of a pty; any serial reader opens the slave path (or the stable
``link`` symlink). A background thread does everything, in this order on each tick:

1. read host → microcontroller bytes: PING is answered with HELLO (frames protocol); CONFIG is
   applied (``hz=…``, ``cond=…``) and acknowledged with a LOG frame, or refused with an ERROR frame;
2. fire timed faults: a garbage burst, an unplug (the master is closed, so the reader sees the port
   vanish; after ``disconnect_for_s`` a new pty is opened and ``link`` re-pointed to it);
3. generate the samples that are due, applying the condition schedule (sample time), and queue
   their frames after bit errors / byte drops;
4. write what the pty accepts without blocking.

Like a real board: a HELLO is sent at boot, seq rises by one per frame (mod 256), t_us is the
board's own clock (µs, mod 2**32), the transmit queue is bounded (whole frames are dropped when it
is full, which the reader sees as lost seq), bytes written while no reader has the port open are
lost, and the board keeps running through an unplug (samples made meanwhile are lost).
With ``realtime=False`` samples are made as fast as the reader takes them, stamped with sample time.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import random
import select
import threading
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from firmware_bridge.errors import BridgeError, ConfigError, SimulatorError
from firmware_bridge.frames import (
    SEQ_MODULUS,
    T_US_MODULUS,
    FrameDecoder,
    FrameType,
    encode_error,
    encode_frame,
    encode_sample,
)
from firmware_bridge.hello import Hello, format_hz
from firmware_bridge.settings import parse_settings
from firmware_bridge.sim.faults import FaultConfig, FaultInjector

if TYPE_CHECKING:
    from firmware_bridge.sim.profiles import Profile

log = logging.getLogger(__name__)

FIRMWARE_NAME = "edgeseal-sim"
# Rates each profile accepts (Hz). Vibration: the 50-1000 Hz, the range of MEMS accelerometers
# such as the MPU-6050 and ADXL345 at their usual output data rates. Environment: slow drifting
# quantities; 10 Hz is already faster than a BME280 in its weather-monitoring mode.
HZ_LIMITS: dict[str, tuple[float, float]] = {"vibration": (50.0, 1000.0), "environment": (0.1, 10.0)}
# One tick of the simulator thread: a PING is answered within ~5 ms, and at 1000 Hz a tick carries
# five samples, so the thread wakes 200 times a second at most.
TICK_S = 0.005
# The transmit queue of a typical MCU serial driver plus a ring buffer in the sketch: 16 KiB. When
# full, new frames are dropped whole, as firmware with a ring buffer does.
TX_QUEUE_MAX = 16 * 1024
# In non-realtime mode samples are made until this much is queued, so the reader sets the pace.
TX_LOW_WATER = 4096
# After a stall (a suspended process, a slow CI box) at most this much sample time is caught up at
# once; older samples are skipped, as a board whose reader stalled would have overwritten them.
MAX_CATCH_UP_S = 0.25
# ERROR codes the simulator sends (the reference firmware uses the same ones).
ERR_BAD_CONFIG = 1
ERR_UNKNOWN_KEY = 2
ERR_OUT_OF_RANGE = 3

SimProtocol = Literal["frames", "lines"]


@dataclass(frozen=True, slots=True)
class _Unplug:
    seconds: float


@dataclass(frozen=True, slots=True)
class _SetCondition:
    name: str


_Command = _Unplug | _SetCondition


def _profiles() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from firmware_bridge.sim.profiles import CONDITIONS, PROFILE_NAMES

    return tuple(PROFILE_NAMES), tuple(CONDITIONS)


def _make_profile(name: str, hz: float | None, seed: int | None) -> Profile:
    from firmware_bridge.sim.profiles import make_profile

    return make_profile(name, hz=hz, seed=seed)


class Simulator:
    """A virtual microcontroller on a pty. ``start()`` returns the path to open; ``stop()`` ends it."""

    def __init__(  # noqa: PLR0917 (the positional order is the documented API)
        self,
        profile: str = "vibration",
        hz: float | None = None,
        protocol: SimProtocol = "frames",
        link: Path | None = None,
        seed: int | None = None,
        faults: FaultConfig = FaultConfig(),  # noqa: B008 (frozen, so one shared default is safe)
        schedule: Sequence[tuple[float, str]] = (),
        realtime: bool = True,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names, conditions = _profiles()
        if profile not in names:
            raise ConfigError(f"unknown profile {profile!r}", hint=f"choose one of {', '.join(names)}")
        if protocol not in ("frames", "lines"):
            raise ConfigError(f"protocol must be frames or lines, not {protocol!r}")
        if hz is not None:
            _check_hz(profile, hz)
        steps = sorted((float(t), name) for t, name in schedule)
        for t, name in steps:
            if not math.isfinite(t) or t < 0:
                raise ConfigError(f"schedule time {t} must be a finite number of seconds >= 0")
            if name not in conditions:
                raise ConfigError(
                    f"unknown condition {name!r}", hint=f"choose one of {', '.join(conditions)}"
                )
        self._profile_name = profile
        self._seed = seed
        self._profile = _make_profile(profile, hz, seed)
        for _, name in steps:
            _probe_condition(profile, name)
        while _starts_at_zero(steps):
            self._profile.set_condition(steps.pop(0)[1])  # the condition at power-on, before the HELLO
        self._protocol: SimProtocol = protocol
        self._link = Path(link) if link is not None else None
        self._faults = faults
        self._schedule = steps
        self._realtime = realtime
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 (simulated noise, not crypto)
        self._injector = FaultInjector(faults, self._rng)

        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards _slave_path and _counts for readers on other threads
        self._master: int | None = None
        self._slave_path: str | None = None
        self._error: BaseException | None = None

        self._seq = 0
        self._tx = bytearray()
        self._rx = FrameDecoder()
        self._sim_s = 0.0
        self._next_step = 0
        self._rate_start = 0.0
        self._rate_count = 0
        self._reader_absent = True
        self._back_at: float | None = None
        self._next_garbage = math.inf
        self._next_disconnect = math.inf
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "samples",
                "frames",
                "bytes_written",
                "pings",
                "configs",
                "bad_configs",
                "disconnects",
                "garbage_bursts",
                "tx_overflow",
                "skipped",
            ),
            0,
        )

    # -- public surface --------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where a reader opens the simulator: the ``link`` when given, else the current slave path."""
        if self._link is not None:
            return str(self._link)
        with self._lock:
            if self._slave_path is None:
                raise SimulatorError("the simulator is not started", hint="call start() first")
            return self._slave_path

    @property
    def slave_path(self) -> str | None:
        """The current /dev/pts/N (changes after every simulated unplug), None while unplugged."""
        with self._lock:
            return self._slave_path

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """What ended the background thread early, if anything."""
        return self._error

    @property
    def hello(self) -> Hello:
        """The HELLO the simulator sends now (it follows CONFIG changes)."""
        return Hello(
            firmware=FIRMWARE_NAME,
            version=_version(),
            channels=tuple(self._profile.channels),
            hz=self._profile.hz,
            extra={"profile": self._profile_name, "cond": self._profile.condition},
        )

    def start(self) -> str:
        """Open the pty, start the thread, return ``path``."""
        if self._thread is not None:
            raise SimulatorError("the simulator is already started")
        if self._link is not None and self._link.exists() and not self._link.is_symlink():
            raise SimulatorError(
                f"{self._link} exists and is not a symlink", hint="choose another --link path"
            )
        self._open_pty()
        now = self._clock()
        self._rate_start = now
        if self._faults.garbage_every_s > 0:
            self._next_garbage = now + self._faults.garbage_every_s
        if self._faults.disconnect_every_s > 0:
            self._next_disconnect = now + self._faults.disconnect_every_s
        if self._protocol == "frames":
            self._queue_frame(FrameType.HELLO, self.hello.to_payload())  # boot banner
        self._thread = threading.Thread(target=self._run, name=f"simulator-{self.path}", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        """Stop the thread, close the pty, remove the ``link``. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._close_pty()
        if self._link is not None and self._link.is_symlink():
            self._link.unlink()

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def unplug(self, seconds: float) -> None:
        """Simulate a USB unplug now, lasting ``seconds`` (the pty vanishes and comes back)."""
        FaultConfig(disconnect_for_s=seconds)  # validates the duration
        self._commands.put(_Unplug(seconds))

    def set_condition(self, name: str) -> None:
        """Switch the machine condition (``normal``, ``imbalance``, ``bearing``) from another thread."""
        _probe_condition(self._profile_name, name)
        self._commands.put(_SetCondition(name))

    def stats(self) -> dict[str, int]:
        """Counters: samples and frames made, bytes written, PINGs, CONFIGs, faults injected."""
        with self._lock:
            counts = dict(self._counts)
        counts["bit_flips"] = self._injector.bit_flips
        counts["dropped_bytes"] = self._injector.dropped_bytes
        counts["garbage_bytes"] = self._injector.garbage_bytes
        return counts

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = self._clock()
                self._take_commands(now)
                if self._master is None:
                    if self._back_at is not None and now >= self._back_at:
                        self._plug_in()
                    if self._realtime:
                        self._generate(now)  # the board runs on; what it makes is lost
                        self._tx.clear()
                    self._stop.wait(TICK_S)
                    continue
                self._read_input()
                self._timed_faults(now)
                if self._master is None:
                    continue
                self._generate(now)
                self._write()
                self._wait()
        except Exception as exc:  # the thread must not die silently
            self._error = exc
            log.exception("simulator %s stopped", self._slave_path)

    def _wait(self) -> None:
        master = self._master
        if master is None:
            return
        readable = [] if self._reader_absent else [master]
        writable = [master] if self._tx and not self._reader_absent else []
        timeout = TICK_S
        if not self._realtime and not self._reader_absent and len(self._tx) < TX_LOW_WATER:
            timeout = 0.0
        try:
            select.select(readable, writable, [], timeout)
        except (OSError, ValueError):
            self._stop.wait(TICK_S)

    def _take_commands(self, now: float) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Unplug):
                if self._master is not None:
                    self._unplug(now, command.seconds)
            else:
                self._set_condition(command.name)

    def _read_input(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            self._reader_absent = False
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._reader_absent = True  # no reader has the slave open (Linux reports EIO)
            return
        self._reader_absent = False
        for frame in self._rx.feed(data):
            if frame.type == FrameType.PING:
                with self._lock:
                    self._counts["pings"] += 1
                if self._protocol == "frames":
                    self._queue_frame(FrameType.HELLO, self.hello.to_payload())
            elif frame.type == FrameType.CONFIG:
                self._apply_config(frame.payload)

    def _apply_config(self, payload: bytes) -> None:
        with self._lock:
            self._counts["configs"] += 1
        try:
            settings = parse_settings(payload.decode("utf-8"))
        except (UnicodeDecodeError, BridgeError) as exc:
            self._refuse(ERR_BAD_CONFIG, f"bad config: {exc}")
            return
        _, conditions = _profiles()
        for key, value in settings.items():
            if key == "hz":
                try:
                    hz = float(value)
                    _check_hz(self._profile_name, hz)
                except (ValueError, ConfigError):
                    low, high = HZ_LIMITS[self._profile_name]
                    self._refuse(ERR_OUT_OF_RANGE, f"hz={value} outside {low:g}..{high:g}")
                    continue
                self._set_rate(hz)
            elif key == "cond":
                try:
                    self._set_condition(value)
                except ValueError:
                    self._refuse(ERR_OUT_OF_RANGE, f"cond={value} not one of {','.join(conditions)}")
                    continue
            else:
                self._refuse(ERR_UNKNOWN_KEY, f"unknown key {key}")
                continue
            self._log(f"config {key}={value}")

    def _refuse(self, code: int, text: str) -> None:
        with self._lock:
            self._counts["bad_configs"] += 1
        if self._protocol == "frames":
            self._queue_frame(FrameType.ERROR, encode_error(code, text[:200]))

    def _log(self, text: str) -> None:
        if self._protocol == "frames":
            self._queue_frame(FrameType.LOG, text.encode("utf-8"))

    def _set_condition(self, name: str) -> None:
        if name != self._profile.condition:
            self._profile.set_condition(name)
            self._log(f"cond={name}")

    def _set_rate(self, hz: float) -> None:
        condition = self._profile.condition
        seed = None if self._seed is None else self._seed + self._counts["configs"]
        self._profile = _make_profile(self._profile_name, hz, seed)
        self._profile.set_condition(condition)
        self._rate_start = self._clock()
        self._rate_count = 0

    def _timed_faults(self, now: float) -> None:
        if now >= self._next_garbage:
            self._next_garbage = now + self._faults.garbage_every_s
            self._tx += self._injector.garbage()
            with self._lock:
                self._counts["garbage_bursts"] += 1
        if now >= self._next_disconnect:
            self._unplug(now, self._faults.disconnect_for_s)
            self._next_disconnect = math.inf  # re-armed when the port comes back

    def _generate(self, now: float) -> None:
        hz = self._profile.hz
        if self._realtime:
            due = math.floor((now - self._rate_start) * hz) - self._rate_count
            limit = max(1, math.ceil(MAX_CATCH_UP_S * hz))
            if due > limit:
                with self._lock:
                    self._counts["skipped"] += due - limit
                self._rate_count += due - limit
                self._sim_s += (due - limit) / hz
                due = limit
        elif self._reader_absent and self._master is not None:
            due = 0
        else:
            due = max(0, math.ceil((TX_LOW_WATER - len(self._tx)) / 16))
        for _ in range(due):
            if self._master is not None and not self._realtime and len(self._tx) >= TX_LOW_WATER:
                break
            self._advance_schedule()
            values = tuple(self._profile.sample())
            t_us = round(self._sim_s * 1_000_000) % T_US_MODULUS
            self._sim_s += 1.0 / hz
            self._rate_count += 1
            with self._lock:
                self._counts["samples"] += 1
            if self._protocol == "frames":
                self._queue_frame(FrameType.SAMPLE, encode_sample(t_us, values))
            else:
                line = ",".join(
                    f"{name}={value:.6g}" for name, value in zip(self._profile.channels, values, strict=True)
                )
                self._queue(line.encode("ascii") + b"\r\n")

    def _advance_schedule(self) -> None:
        while self._next_step < len(self._schedule) and self._schedule[self._next_step][0] <= self._sim_s:
            self._set_condition(self._schedule[self._next_step][1])
            self._next_step += 1

    def _queue_frame(self, frame_type: FrameType, payload: bytes) -> None:
        wire = encode_frame(frame_type, self._seq, payload)
        self._seq = (
            self._seq + 1
        ) % SEQ_MODULUS  # a dropped frame still used its seq: the reader sees it lost
        with self._lock:
            self._counts["frames"] += 1
        self._queue(wire)

    def _queue(self, data: bytes) -> None:
        data = self._injector.corrupt(data)
        if len(self._tx) + len(data) > TX_QUEUE_MAX:
            with self._lock:
                self._counts["tx_overflow"] += 1
            return
        self._tx += data

    def _write(self) -> None:
        master = self._master
        if master is None or not self._tx:
            return
        try:
            written = os.write(master, self._tx)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            written = len(self._tx)  # nobody is listening: the bytes are gone, as on a real UART
        del self._tx[:written]
        with self._lock:
            self._counts["bytes_written"] += written

    # -- the pty -------------------------------------------------------------------------------------

    def _open_pty(self) -> None:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise SimulatorError(f"cannot open a pseudo-terminal: {exc}") from exc
        try:
            tty.setraw(slave)  # kept by the pty while the master is open: any reader gets raw bytes
            path = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._reader_absent = True
        self._rx.reset()
        with self._lock:
            self._slave_path = path
        if self._link is not None:
            temp = self._link.with_name(f".{self._link.name}.{os.getpid()}.tmp")
            temp.unlink(missing_ok=True)
            temp.symlink_to(path)
            temp.replace(self._link)  # atomic: a reader never sees the link missing halfway
        log.info("simulator on %s%s", path, f" (link {self._link})" if self._link else "")

    def _close_pty(self) -> None:
        master, self._master = self._master, None
        if master is not None:
            os.close(master)
        with self._lock:
            self._slave_path = None
        self._tx.clear()

    def _unplug(self, now: float, seconds: float) -> None:
        log.info("simulator %s: unplugged for %.1f s", self._slave_path, seconds)
        self._close_pty()
        if self._link is not None and self._link.is_symlink():
            self._link.unlink()  # like /dev/serial/by-id/…: the name goes away with the device
        self._back_at = now + seconds
        with self._lock:
            self._counts["disconnects"] += 1

    def _plug_in(self) -> None:
        self._back_at = None
        self._open_pty()
        if self._faults.disconnect_every_s > 0:
            self._next_disconnect = self._clock() + self._faults.disconnect_every_s


def _starts_at_zero(steps: list[tuple[float, str]]) -> bool:
    return bool(steps) and steps[0][0] <= 0.0


def _probe_condition(profile: str, name: str) -> None:
    """ConfigError unless a ``profile`` profile accepts the condition ``name``."""
    try:
        _make_profile(profile, None, 0).set_condition(name)
    except ValueError as exc:
        raise ConfigError(f"the {profile} profile has no condition {name!r}") from exc


def _check_hz(profile: str, hz: float) -> None:
    low, high = HZ_LIMITS[profile]
    if not (math.isfinite(hz) and low <= hz <= high):
        raise ConfigError(
            f"{profile} rate {format_hz(hz) if math.isfinite(hz) else hz} Hz is outside {low:g}..{high:g}"
        )


def _version() -> str:
    from firmware_bridge import version

    return version()
