"""SensorLink: a serial link to one microcontroller that keeps going when the port vanishes.

States and transitions (one thread drives everything through ``read_samples`` / ``read_frames``):

* ``open()``: CLOSED → CONNECTED; if the port cannot be opened, ``LinkError`` (or, with
  ``wait=True``, WAITING: a missing port is not an error, the link waits for it to appear).
* CONNECTED → WAITING when a read or write fails (USB unplugged, pty closed): the port is closed,
  ``outages`` counts one, and reopening is tried with exponential backoff and jitter, capped at
  ``reopen_backoff_max_s``. Repeated failures are logged once, then only counted.
* WAITING → CONNECTED when a reopen succeeds: ``reconnects`` counts one and ``outage_ms`` the time
  spent without the port.
* ``close()``: any state → CLOSED.

Ordering rules after every (re)open, frames protocol (docs/firmware_bridge.md "The wire format"):

1. Stale input is flushed, the decoder's partial frame and seq tracking are forgotten (counters stay).
2. PING is sent, then CONFIG with every setting given to ``send_config`` so far.
3. PING is repeated every ``PING_RETRY_S`` until a HELLO arrives, at most ``PING_TRIES`` times: an
   Arduino resets when its port opens and misses the first PING while its bootloader runs.
4. Every HELLO replaces ``hello`` and re-sends CONFIG: a HELLO nobody asked for means the
   microcontroller rebooted and lost its settings.

``read_samples(timeout_s)`` returns as soon as it has at least one sample, or ``[]`` when
``timeout_s`` has passed; it never raises because the port went away. It blocks no longer than
``timeout_s``, except that a PING or CONFIG write stuck behind hardware flow control may add up to
``WRITE_TIMEOUT_S`` (counted in ``write_timeouts``). Device strings (LOG, ERROR, HELLO) are
sanitised before they are logged.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Literal, Protocol

from firmware_bridge.errors import ConfigError, FrameError, HelloError, LinkError
from firmware_bridge.frames import (
    SEQ_MODULUS,
    Frame,
    FrameDecoder,
    FrameType,
    decode_error,
    decode_sample,
    encode_frame,
    sample_channels,
)
from firmware_bridge.hello import Hello, check_channels, parse_hello
from firmware_bridge.lines import LineDecoder
from firmware_bridge.samples import Sample
from firmware_bridge.sanitize import printable
from firmware_bridge.settings import format_settings

log = logging.getLogger(__name__)

WireProtocol = Literal["frames", "lines"]
PROTOCOLS: tuple[WireProtocol, ...] = ("frames", "lines")

# The first reopen comes quickly (a USB-serial adapter re-enumerates in ~50-500 ms), later ones back off.
REOPEN_BACKOFF_MIN_S = 0.05
# Default cap of the reopen backoff: a replugged sensor is found within 5 s without a busy loop.
REOPEN_BACKOFF_MAX_S = 5.0
# An Arduino's bootloader runs ~1-2 s after the port opens (DTR reset); a PING per second catches it.
PING_RETRY_S = 1.0
# After 5 unanswered PINGs the firmware is taken not to speak HELLO; samples are still read.
PING_TRIES = 5
# The most bytes taken from the OS per read: 4 KiB is the Linux tty flip buffer size.
READ_CHUNK = 4096
# PING and CONFIG are a few dozen bytes; a write that cannot finish in 0.5 s means flow control is
# stuck (RTS/CTS held), not a slow line: at 9600 baud 0.5 s moves 480 bytes.
WRITE_TIMEOUT_S = 0.5
# Events not drained are dropped oldest first beyond this many; each LOG frame makes one.
MAX_EVENTS = 256
# Rates pyserial and Linux tty drivers accept go up to a few Mbaud; 12 Mbaud covers USB full speed.
MAX_BAUD = 12_000_000


class SerialPort(Protocol):
    """The part of ``serial.Serial`` the link uses; tests pass in-memory fakes."""

    timeout: float | None

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


PortOpener = Callable[[str, int], SerialPort]


def open_serial(port: str, baud: int) -> SerialPort:
    """Open ``port`` (a device path or a pyserial URL such as ``loop://``) with pyserial.

    The port is locked exclusively, so a second reader fails instead of stealing half the bytes.
    """
    import serial  # lazy: the CLI's --help must not pay for it

    try:
        opened: SerialPort = serial.serial_for_url(
            port, baudrate=baud, timeout=0, write_timeout=WRITE_TIMEOUT_S, exclusive=True
        )
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot open {port}: {exc}", port=port, hint=_open_hint(exc)) from exc
    return opened


def _open_hint(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.EACCES:
        return "add the user to the 'dialout' group (then log in again), or check the device's mode"
    if code == errno.ENOENT:
        return "is the device plugged in? stable names are listed in /dev/serial/by-id/"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in str(exc).lower():
        return "another program has the port open (an agent, a monitor, a serial console?)"
    return "check the port path or URL and the baud rate"


class EventKind(str, Enum):
    """What a ``LinkEvent`` reports."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    HELLO = "hello"
    LOG = "log"
    DEVICE_ERROR = "device_error"


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something the caller may want to report; ``detail`` is sanitised device or OS text."""

    kind: EventKind
    at: float
    detail: str = ""


class SensorLink:
    """A reconnecting reader of one serial port speaking frames or lines (docs/firmware_bridge.md).

    One thread uses it. ``clock`` and ``sleep`` drive backoff and deadlines, ``opener`` opens the
    port (pyserial by default), ``rng`` draws the backoff jitter.
    """

    def __init__(
        self,
        port: str,
        baud: int = 115200,
        protocol: WireProtocol = "frames",
        channels: Sequence[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        reopen_backoff_max_s: float = REOPEN_BACKOFF_MAX_S,
        opener: PortOpener = open_serial,
        rng: random.Random | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if not 0 < baud <= MAX_BAUD:
            raise ConfigError(f"baud rate {baud} is outside 1..{MAX_BAUD}")
        if not reopen_backoff_max_s >= REOPEN_BACKOFF_MIN_S:
            raise ConfigError(f"reopen_backoff_max_s must be at least {REOPEN_BACKOFF_MIN_S} s")
        if not port:
            raise ConfigError("no serial port given", hint="e.g. /dev/ttyUSB0 or loop://")
        self._port_name = port
        self._baud = baud
        self._protocol: WireProtocol = protocol
        self._channels = check_channels(list(channels)) if channels is not None else None
        self._clock = clock
        self._sleep = sleep
        self._backoff_max = reopen_backoff_max_s
        self._opener = opener
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)

        self._frames = FrameDecoder()
        self._lines = LineDecoder(self._channels, clock=clock)
        self._port: SerialPort | None = None
        self._opened = False  # open() succeeded or is waiting; False again after close()
        self._hello: Hello | None = None
        self._layout: int | None = len(self._channels) if self._channels else None
        self._settings: dict[str, str] = {}
        self._out_seq = 0
        self._events: deque[LinkEvent] = deque(maxlen=MAX_EVENTS)

        self._hello_pending = False
        self._pings_this_open = 0
        self._next_ping = 0.0
        self._attempt = 0
        self._next_attempt = 0.0
        self._lost_at: float | None = None
        self._warned_mismatch: tuple[str, ...] | None = None
        self._warned_bad_hello = False
        self._warned_bad_sample = False
        self._warned_open = False

        self._counts: dict[str, int] = dict.fromkeys(
            (
                "samples",
                "bad_samples",
                "hellos",
                "bad_hellos",
                "logs",
                "device_errors",
                "unexpected_frames",
                "pings_sent",
                "configs_sent",
                "write_timeouts",
                "reconnects",
                "outages",
                "open_failures",
                "outage_ms",
                "channel_mismatch",
                "events_dropped",
            ),
            0,
        )

    # -- public surface ---------------------------------------------------------------------------

    @property
    def port(self) -> str:
        """The port path or URL this link reads."""
        return self._port_name

    @property
    def protocol(self) -> WireProtocol:
        """``"frames"`` or ``"lines"``."""
        return self._protocol

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._port is not None

    @property
    def hello(self) -> Hello | None:
        """The HELLO received on the current connection, or None before one arrives."""
        return self._hello

    @property
    def channels(self) -> tuple[str, ...] | None:
        """The configured channel names, else those of the last HELLO (frames) or first line (lines)."""
        if self._channels is not None:
            return self._channels
        if self._protocol == "lines":
            return self._lines.channels
        return self._hello.channels if self._hello is not None else None

    def open(self, *, wait: bool = False) -> None:
        """Open the port, send PING (and CONFIG). ``wait=True``: a missing port is retried later."""
        if self._opened:
            return
        try:
            port = self._opener(self._port_name, self._baud)
        except LinkError:
            if not wait:
                raise
            self._opened = True
            self._counts["open_failures"] += 1
            self._lost_at = self._clock()
            self._schedule_reopen()
            log.info("serial port %s is not there yet; waiting for it", self._port_name)
            return
        self._opened = True
        self._attach(port)

    def close(self) -> None:
        """Close the port; the link can be opened again with ``open``."""
        self._opened = False
        self._close_port()

    def __enter__(self) -> SensorLink:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def read_samples(self, timeout_s: float) -> list[Sample]:
        """Samples that arrived, waiting at most ``timeout_s`` for the first one; ``[]`` on timeout."""
        deadline = self._clock() + max(0.0, timeout_s)
        while True:
            samples = [
                self._to_sample(item) if isinstance(item, Frame) else item for item in self._pump(deadline)
            ]
            kept = [s for s in samples if s is not None]
            if kept or self._clock() >= deadline:
                return kept

    def read_frames(self, timeout_s: float) -> list[Frame]:
        """Every frame that arrived (frames protocol), waiting at most ``timeout_s`` for the first one.

        HELLO, LOG and ERROR are handled as ``read_samples`` handles them, then returned as well.
        """
        if self._protocol != "frames":
            raise LinkError("read_frames needs the frames protocol", port=self._port_name)
        deadline = self._clock() + max(0.0, timeout_s)
        frames: list[Frame] = []
        for item in self._pump(deadline):
            if isinstance(item, Frame):
                if item.type == FrameType.SAMPLE:
                    self._to_sample(item)  # counts samples and bad samples like read_samples
                frames.append(item)
        return frames

    def send_config(self, settings: Mapping[str, str]) -> None:
        """Send CONFIG ``key=value;…`` now (when connected) and again after every reopen and HELLO.

        Settings accumulate: a later call overrides the keys it names and keeps the others.
        """
        if self._protocol != "frames":
            raise ConfigError("CONFIG needs the frames protocol", hint="a line-protocol sketch only talks")
        merged = {**self._settings, **settings}
        payload = format_settings(merged).encode("utf-8")
        encode_frame(FrameType.CONFIG, 0, payload)  # raises FrameError now if it can never be sent
        self._settings = merged
        if self._port is not None:
            self._send_config()

    def drain_events(self) -> list[LinkEvent]:
        """Events since the last call, oldest first (at most MAX_EVENTS are kept)."""
        events = list(self._events)
        self._events.clear()
        return events

    def stats(self) -> dict[str, int]:
        """Cumulative counters of the frame decoder, the line decoder and the link."""
        frame_stats = self._frames.stats
        line_stats = self._lines.stats
        counts = {
            "frames": frame_stats.frames,
            "cobs_errors": frame_stats.cobs_errors,
            "crc_errors": frame_stats.crc_errors,
            "oversize": frame_stats.oversize + line_stats.oversize,
            "runts": frame_stats.runts,
            "lost": frame_stats.lost,
            "bytes": frame_stats.bytes + line_stats.bytes,
            "lines": line_stats.lines,
            "bad_lines": line_stats.bad_lines,
        }
        counts.update(self._counts)
        return counts

    # -- reading ------------------------------------------------------------------------------------

    def _pump(self, deadline: float) -> list[Frame | Sample]:
        """Read until something decodes or ``deadline`` passes; reopen the port when it is gone."""
        if not self._opened:
            raise LinkError("the link is not open", port=self._port_name, hint="call open() first")
        while True:
            now = self._clock()
            if self._port is None:
                self._try_reopen(now)
                if self._port is None:
                    wait = min(deadline, self._next_attempt) - now
                    if wait > 0:
                        self._sleep(wait)
                    if self._clock() >= deadline:
                        return []
                    continue
            self._maybe_ping(now)
            data = self._read(max(0.0, deadline - now))
            items = self._decode(data) if data else []
            if items or self._clock() >= deadline:
                return items

    def _read(self, timeout_s: float) -> bytes:
        port = self._port
        if port is None:
            return b""
        try:
            port.timeout = timeout_s
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(min(waiting, READ_CHUNK))
        except OSError as exc:  # serial.SerialException is an OSError
            self._lose(exc)
            return b""
        return data

    def _decode(self, data: bytes) -> list[Frame | Sample]:
        if self._protocol == "lines":
            return list(self._lines.feed(data))
        items: list[Frame | Sample] = []
        for frame in self._frames.feed(data):
            self._handle(frame)
            items.append(frame)
        return items

    def _handle(self, frame: Frame) -> None:
        kind = frame.type
        if kind == FrameType.SAMPLE:
            return
        if kind == FrameType.HELLO:
            self._on_hello(frame)
        elif kind == FrameType.LOG:
            self._counts["logs"] += 1
            text = printable(frame.payload)
            log.info("device %s: %s", self._port_name, text)
            self._event(EventKind.LOG, text)
        elif kind == FrameType.ERROR:
            self._counts["device_errors"] += 1
            try:
                code, message = decode_error(frame.payload)
            except FrameError:
                code, message = -1, frame.payload.hex()
            text = f"{code}: {printable(message)}"
            log.warning("device %s reports error %s", self._port_name, text)
            self._event(EventKind.DEVICE_ERROR, text)
        else:
            self._counts["unexpected_frames"] += 1
            log.debug("ignoring frame type 0x%02x from %s", kind, self._port_name)

    def _on_hello(self, frame: Frame) -> None:
        try:
            hello = parse_hello(frame.payload)
        except HelloError as exc:
            self._counts["bad_hellos"] += 1
            if not self._warned_bad_hello:
                self._warned_bad_hello = True
                log.warning("bad HELLO from %s (%s): %s", self._port_name, exc, printable(frame.payload))
            return
        self._counts["hellos"] += 1
        self._hello = hello
        self._hello_pending = False
        if self._channels is None:
            self._layout = len(hello.channels)
        elif hello.channels != self._channels:
            self._counts["channel_mismatch"] += 1
            if self._warned_mismatch != hello.channels:
                self._warned_mismatch = hello.channels
                log.warning(
                    "device %s reports channels %s, configured are %s; samples are read as configured",
                    self._port_name,
                    printable(",".join(hello.channels)),
                    ",".join(self._channels),
                )
        detail = f"fw={hello.firmware} ver={hello.version} ch={','.join(hello.channels)} hz={hello.hz:g}"
        log.info("device %s: %s", self._port_name, printable(detail))
        self._event(EventKind.HELLO, printable(detail))
        if self._settings:
            self._send_config()

    def _to_sample(self, frame: Frame) -> Sample | None:
        if frame.type != FrameType.SAMPLE:
            return None
        try:
            n = self._layout if self._layout is not None else sample_channels(frame.payload)
            t_us, values = decode_sample(frame.payload, n)
        except FrameError as exc:
            self._counts["bad_samples"] += 1
            if not self._warned_bad_sample:
                self._warned_bad_sample = True
                log.warning("skipping SAMPLE frames that do not match the channels: %s", exc)
            return None
        self._counts["samples"] += 1
        return Sample(t_us, values, frame.payload)

    # -- writing --------------------------------------------------------------------------------------

    def _send(self, frame_type: FrameType, payload: bytes = b"") -> bool:
        port = self._port
        if port is None:
            return False
        wire = encode_frame(frame_type, self._out_seq, payload)
        self._out_seq = (self._out_seq + 1) % SEQ_MODULUS
        try:
            port.write(wire)
        except OSError as exc:
            from serial import SerialTimeoutException  # already loaded when pyserial opened the port

            if isinstance(exc, SerialTimeoutException):
                self._counts["write_timeouts"] += 1
                log.warning("write to %s timed out; is flow control stuck?", self._port_name)
            else:
                self._lose(exc)
            return False
        return True

    def _send_config(self) -> None:
        if self._send(FrameType.CONFIG, format_settings(self._settings).encode("utf-8")):
            self._counts["configs_sent"] += 1

    def _maybe_ping(self, now: float) -> None:
        if not self._hello_pending or now < self._next_ping or self._protocol != "frames":
            return
        if self._pings_this_open >= PING_TRIES:
            self._hello_pending = False
            log.info("no HELLO from %s after %d PINGs; reading samples anyway", self._port_name, PING_TRIES)
            return
        if self._send(FrameType.PING):
            self._counts["pings_sent"] += 1
            self._pings_this_open += 1
            self._next_ping = now + PING_RETRY_S

    # -- connection state -------------------------------------------------------------------------------

    def _attach(self, port: SerialPort) -> None:
        now = self._clock()
        self._port = port
        self._hello = None
        self._frames.reset()
        self._lines.reset()
        try:
            port.reset_input_buffer()
        except OSError as exc:
            self._lose(exc)
            return
        if self._lost_at is not None:
            self._counts["reconnects"] += 1
            self._counts["outage_ms"] += round((now - self._lost_at) * 1000)
            log.info("serial port %s is back after %.1f s", self._port_name, now - self._lost_at)
            self._lost_at = None
        self._warned_open = False
        self._attempt = 0
        self._event(EventKind.CONNECTED, self._port_name)
        if self._protocol == "frames":
            self._hello_pending = True
            self._pings_this_open = 0
            self._next_ping = now
            self._maybe_ping(now)
            if self._settings and self._port is not None:
                self._send_config()

    def _lose(self, exc: BaseException) -> None:
        self._close_port()
        now = self._clock()
        self._counts["outages"] += 1
        self._lost_at = now
        self._attempt = 0
        self._schedule_reopen()
        reason = printable(str(exc))
        log.warning("serial port %s lost (%s); reopening with backoff", self._port_name, reason)
        self._event(EventKind.DISCONNECTED, reason)

    def _try_reopen(self, now: float) -> None:
        if now < self._next_attempt:
            return
        try:
            port = self._opener(self._port_name, self._baud)
        except LinkError as exc:
            self._counts["open_failures"] += 1
            if not self._warned_open:
                self._warned_open = True
                log.warning("cannot reopen %s yet (%s); retrying with backoff", self._port_name, exc)
            else:
                log.debug("cannot reopen %s yet (%s)", self._port_name, exc)
            self._attempt += 1
            self._schedule_reopen()
            return
        self._attach(port)

    def _schedule_reopen(self) -> None:
        """Exponential backoff with jitter: attempt n waits U(d/2, d), d = min(max, min_s * 2**n)."""
        delay = min(self._backoff_max, REOPEN_BACKOFF_MIN_S * 2 ** min(self._attempt, 30))
        self._next_attempt = self._clock() + self._rng.uniform(delay / 2, delay)

    def _close_port(self) -> None:
        port, self._port = self._port, None
        self._hello_pending = False
        if port is not None:
            try:
                port.close()
            except OSError as exc:
                log.debug("closing %s: %s", self._port_name, exc)

    def _event(self, kind: EventKind, detail: str) -> None:
        if len(self._events) == self._events.maxlen:
            self._counts["events_dropped"] += 1
        self._events.append(LinkEvent(kind, self._clock(), detail))
