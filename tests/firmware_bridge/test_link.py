"""SensorLink, unit tier: in-memory ports and a fake clock (the pty tier is test_link_pty.py)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import serial

from firmware_bridge.errors import ConfigError, FrameError, LinkError
from firmware_bridge.frames import (
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    encode_error,
    encode_frame,
    encode_sample,
)
from firmware_bridge.link import (
    MAX_BAUD,
    MAX_EVENTS,
    PING_RETRY_S,
    PING_TRIES,
    READ_CHUNK,
    REOPEN_BACKOFF_MIN_S,
    EventKind,
    SensorLink,
)

HELLO = b"fw=test;ver=1;ch=ax,ay,az;hz=100"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


class FakePort:
    """A serial port in memory: reads what the test queued, blocks by advancing the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.timeout: float | None = None
        self.incoming = bytearray()
        self.written = bytearray()
        self.gone = False
        self.write_error: OSError | None = None
        self.closed = False
        self.flushed = 0

    @property
    def in_waiting(self) -> int:
        return len(self.incoming)

    def read(self, size: int = 1) -> bytes:
        if self.gone:
            raise serial.SerialException("device reports readiness to read but returned no data")
        if not self.incoming:
            self.clock.now += self.timeout or 0.0  # a blocking read that times out
            return b""
        data = bytes(self.incoming[:size])
        del self.incoming[:size]
        return data

    def write(self, data: bytes) -> int:
        if self.write_error is not None:
            raise self.write_error
        if self.gone:
            raise serial.SerialException("write failed: [Errno 5] Input/output error")
        self.written += data
        return len(data)

    def reset_input_buffer(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed = True

    def sent(self) -> list[Frame]:
        return FrameDecoder().feed(bytes(self.written))


class Opener:
    """Hands out ports; raises LinkError while ``unplugged``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.unplugged = False
        self.ports: list[FakePort] = []
        self.attempts: list[float] = []

    def __call__(self, port: str, baud: int) -> FakePort:
        self.attempts.append(self.clock.now)
        if self.unplugged:
            raise LinkError(f"cannot open {port}: [Errno 2] No such file or directory", port=port)
        self.ports.append(FakePort(self.clock))
        return self.ports[-1]

    @property
    def port(self) -> FakePort:
        return self.ports[-1]


def make_link(clock: FakeClock, opener: Opener, **kwargs: object) -> SensorLink:
    return SensorLink(
        "/dev/ttyFAKE",
        clock=clock,
        sleep=clock.sleep,
        opener=opener,
        rng=random.Random(7),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def opener(clock: FakeClock) -> Opener:
    return Opener(clock)


def sample_wire(seq: int, t_us: int, values: tuple[float, ...] = (0.5, -0.25, 1.0)) -> bytes:
    return encode_frame(FrameType.SAMPLE, seq, encode_sample(t_us, values))


def test_open_pings_and_hello_describes_the_device(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    assert link.connected
    assert opener.port.sent() == [Frame(FrameType.PING, 0, b"")]
    assert opener.port.flushed == 1
    opener.port.incoming += encode_frame(FrameType.HELLO, 0, HELLO) + sample_wire(1, 2500)
    samples = link.read_samples(0.1)
    assert [(s.t_us, s.values) for s in samples] == [(2500, (0.5, -0.25, 1.0))]
    assert samples[0].raw == encode_sample(2500, (0.5, -0.25, 1.0))
    assert link.hello is not None
    assert link.hello.channels == ("ax", "ay", "az")
    assert link.channels == ("ax", "ay", "az")
    stats = link.stats()
    assert stats["frames"] == 2
    assert stats["samples"] == 1
    assert stats["hellos"] == 1
    assert [e.kind for e in link.drain_events()] == [EventKind.CONNECTED, EventKind.HELLO]
    link.close()
    assert opener.port.closed
    assert not link.connected


def test_read_samples_never_blocks_past_its_timeout(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    start = clock.now
    assert link.read_samples(0.25) == []
    assert clock.now - start == pytest.approx(0.25)
    opener.port.gone = True
    opener.unplugged = True
    for timeout in (0.0, 0.01, 0.3, 2.0):
        start = clock.now
        assert link.read_samples(timeout) == []
        assert clock.now - start <= timeout + 1e-9


def test_vanished_port_is_reopened_with_backoff_and_the_outage_reported(
    clock: FakeClock, opener: Opener
) -> None:
    link = make_link(clock, opener, reopen_backoff_max_s=1.0)
    link.open()
    link.send_config({"cond": "bearing"})
    first = opener.port
    first.incoming += encode_frame(FrameType.HELLO, 0, HELLO)
    link.read_samples(0.01)
    first.gone = True
    opener.unplugged = True
    lost_at = clock.now
    assert link.read_samples(0.05) == []  # no exception: the port is gone
    assert not link.connected
    assert first.closed
    assert link.stats()["outages"] == 1
    while clock.now - lost_at < 5.0:
        assert link.read_samples(0.5) == []
    attempts = [t - lost_at for t in opener.attempts[1:]]
    gaps = [b - a for a, b in zip([0.0, *attempts], attempts, strict=False)]
    # exponential: U(d/2, d) with d = min(1.0, 0.05 * 2**n)
    for n, gap in enumerate(gaps):
        d = min(1.0, REOPEN_BACKOFF_MIN_S * 2**n)
        assert d / 2 - 1e-9 <= gap <= d + 0.5 + 1e-9  # + one read slice of slack
    assert max(gaps) <= 1.0 + 0.5
    assert len(gaps) < 20  # backoff, not a busy loop
    opener.unplugged = False
    back_at_least = clock.now
    while not link.connected:
        link.read_samples(0.2)
    second = opener.port
    assert second is not first
    assert clock.now - back_at_least <= 1.0 + 0.2 + 1e-9
    assert [f.type for f in second.sent()] == [FrameType.PING, FrameType.CONFIG]
    assert second.sent()[1].payload == b"cond=bearing"
    stats = link.stats()
    assert stats["reconnects"] == 1
    assert stats["outages"] == 1
    assert stats["open_failures"] == len(gaps)
    assert stats["outage_ms"] >= 5000
    assert link.hello is None  # a new connection: its HELLO is still to come
    second.incoming += encode_frame(FrameType.HELLO, 200, HELLO) + sample_wire(201, 7)
    assert [s.t_us for s in link.read_samples(0.1)] == [7]
    assert link.stats()["lost"] == 0  # the seq restarted with the new connection
    kinds = [e.kind for e in link.drain_events()]
    assert kinds.count(EventKind.DISCONNECTED) == 1
    assert kinds.count(EventKind.CONNECTED) == 2


def test_write_failure_is_an_outage_too(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    opener.port.gone = True
    link.send_config({"hz": "200"})  # no exception
    assert not link.connected
    assert link.stats()["outages"] == 1


def test_write_timeout_is_counted_not_an_outage(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    opener.port.write_error = serial.SerialTimeoutException("Write timeout")
    link.send_config({"hz": "200"})
    assert link.connected
    assert link.stats()["write_timeouts"] == 1


def test_first_open_failure_raises_unless_waiting(clock: FakeClock, opener: Opener) -> None:
    opener.unplugged = True
    with pytest.raises(LinkError):
        make_link(clock, opener).open()
    link = make_link(clock, opener)
    link.open(wait=True)
    assert not link.connected
    assert link.read_samples(0.2) == []
    opener.unplugged = False
    while not link.connected:
        link.read_samples(0.1)
    assert link.stats()["reconnects"] == 1


def test_ping_repeats_until_hello_then_stops(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    end = clock.now + PING_RETRY_S * (PING_TRIES + 3)
    while clock.now < end:
        link.read_samples(0.25)
    assert [f.type for f in opener.port.sent()] == [FrameType.PING] * PING_TRIES
    assert link.stats()["pings_sent"] == PING_TRIES


def test_hello_stops_the_pings_and_resends_config(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    link.send_config({"hz": "200"})
    link.send_config({"cond": "imbalance"})  # settings accumulate
    opener.port.incoming += encode_frame(FrameType.HELLO, 0, HELLO)
    link.read_samples(0.1)
    end = clock.now + 3 * PING_RETRY_S
    while clock.now < end:
        link.read_samples(0.25)
    sent = opener.port.sent()
    assert [f.type for f in sent] == [FrameType.PING, FrameType.CONFIG, FrameType.CONFIG, FrameType.CONFIG]
    assert sent[-1].payload == b"hz=200;cond=imbalance"
    assert [f.seq for f in sent] == [0, 1, 2, 3]
    assert link.stats()["configs_sent"] == 3


def test_send_config_refuses_bad_settings(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    with pytest.raises(ConfigError):
        link.send_config({"hz": "1;cond=x"})
    too_long = {f"k{i}": "v" * 200 for i in range(6)}  # each fits MAX_VALUE_LEN, together not a frame
    assert len(";".join(f"{k}={v}" for k, v in too_long.items())) > MAX_PAYLOAD
    with pytest.raises(FrameError, match="does not fit"):
        link.send_config(too_long)
    assert opener.port.sent() == [Frame(FrameType.PING, 0, b"")]  # nothing half-sent
    lines = make_link(clock, opener, protocol="lines")
    with pytest.raises(ConfigError, match="frames protocol"):
        lines.send_config({"hz": "1"})


def test_log_and_error_frames_become_sanitised_events(
    clock: FakeClock, opener: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    link = make_link(clock, opener)
    link.open()
    link.drain_events()
    opener.port.incoming += encode_frame(FrameType.LOG, 0, b"boot \x1b[2Jok\nFAKE")
    opener.port.incoming += encode_frame(FrameType.ERROR, 1, encode_error(7, "imu timeout"))
    opener.port.incoming += encode_frame(0x7F, 2, b"?")
    assert link.read_samples(0.05) == []
    events = link.drain_events()
    assert [(e.kind, e.detail) for e in events] == [
        (EventKind.LOG, "boot \ufffd[2Jok\ufffdFAKE"),
        (EventKind.DEVICE_ERROR, "7: imu timeout"),
    ]
    assert "\x1b" not in caplog.text
    stats = link.stats()
    assert (stats["logs"], stats["device_errors"], stats["unexpected_frames"]) == (1, 1, 1)


def test_events_are_bounded(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    for i in range(MAX_EVENTS + 10):
        opener.port.incoming += encode_frame(FrameType.LOG, i % 256, b"x")
    while link.read_frames(0.01):
        pass
    assert len(link.drain_events()) == MAX_EVENTS
    assert link.stats()["events_dropped"] == 11  # the CONNECTED event and ten logs


def test_configured_channels_win_over_a_disagreeing_hello(
    clock: FakeClock, opener: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    link = make_link(clock, opener, channels=["x", "y"])
    link.open()
    opener.port.incoming += encode_frame(FrameType.HELLO, 0, HELLO)
    opener.port.incoming += sample_wire(1, 1, (1.0, 2.0)) + sample_wire(2, 2)
    assert [s.values for s in link.read_samples(0.05)] == [(1.0, 2.0)]
    stats = link.stats()
    assert stats["channel_mismatch"] == 1
    assert stats["bad_samples"] == 1
    assert "reports channels ax,ay,az" in caplog.text


def test_without_hello_or_channels_the_sample_length_decides(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    opener.port.incoming += sample_wire(0, 5, (1.0,)) + encode_frame(FrameType.SAMPLE, 1, b"\x00" * 7)
    assert [s.values for s in link.read_samples(0.05)] == [(1.0,)]
    assert link.stats()["bad_samples"] == 1


def test_bad_hello_is_counted(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    opener.port.incoming += encode_frame(FrameType.HELLO, 0, b"fw=x")
    link.read_samples(0.05)
    assert link.hello is None
    assert link.stats()["bad_hellos"] == 1


def test_lines_protocol(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener, protocol="lines", channels=["a", "b"])
    link.open()
    assert opener.port.sent() == []  # a line sketch gets no PING
    opener.port.incoming += b"a=1,b=2\r\nnoise\r\n3,4\r\n"
    assert [s.values for s in link.read_samples(0.05)] == [(1.0, 2.0), (3.0, 4.0)]
    stats = link.stats()
    assert (stats["lines"], stats["bad_lines"]) == (2, 1)
    with pytest.raises(LinkError):
        link.read_frames(0.1)


def test_misuse_is_refused(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    with pytest.raises(LinkError, match="not open"):
        link.read_samples(0.1)
    with pytest.raises(ConfigError):
        SensorLink("x", protocol="morse")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SensorLink("x", baud=0)
    with pytest.raises(ConfigError):
        SensorLink("x", baud=MAX_BAUD + 1)
    with pytest.raises(ConfigError):
        SensorLink("x", reopen_backoff_max_s=0.0)
    with pytest.raises(ConfigError):
        SensorLink("")
    with pytest.raises(ConfigError):
        SensorLink("x", channels=["a", "a"])


def test_pyserial_loop_url_works_with_the_default_opener() -> None:
    with SensorLink("loop://") as link:
        frames = link.read_frames(1.0)  # loop:// echoes what is written: our own PING
        assert frames == [Frame(FrameType.PING, 0, b"")]
        assert link.stats()["unexpected_frames"] == 1


def test_pyserial_loop_url_carries_samples() -> None:
    port = serial.serial_for_url("loop://", timeout=0)
    opener: Callable[[str, int], serial.Serial] = lambda _p, _b: port  # noqa: E731
    with SensorLink("loop://", opener=opener) as link:
        port.write(encode_frame(FrameType.HELLO, 0, HELLO) + sample_wire(1, 99))
        samples: list[object] = []
        for _ in range(20):
            samples += link.read_samples(0.1)
            if samples:
                break
        assert [s.t_us for s in samples] == [99]  # type: ignore[attr-defined]
        assert link.hello is not None


def test_missing_device_gets_a_hint() -> None:
    with pytest.raises(LinkError) as info:
        SensorLink("/dev/ttyDOES_NOT_EXIST").open()
    assert info.value.hint is not None
    assert "plugged in" in info.value.hint
    assert info.value.port == "/dev/ttyDOES_NOT_EXIST"


def test_one_read_takes_at_most_read_chunk_bytes(clock: FakeClock, opener: Opener) -> None:
    link = make_link(clock, opener)
    link.open()
    burst = b"".join(sample_wire(i % 256, i) for i in range(1000))
    assert len(burst) > 2 * READ_CHUNK
    opener.port.incoming += burst
    link.read_samples(0.01)
    assert link.stats()["bytes"] == 1 + READ_CHUNK
