"""The line protocol (docs/firmware_bridge.md): keyed and bare CSV lines, bad lines counted and skipped."""

from __future__ import annotations

import pytest

from firmware_bridge.errors import ConfigError
from firmware_bridge.lines import MAX_LINE, LineDecoder, LineStats
from firmware_bridge.samples import Sample


def clock() -> float:
    return 12.5


def test_keyed_lines_in_channel_order() -> None:
    decoder = LineDecoder(["a", "b"], clock=clock)
    samples = decoder.feed(b"b=2.5,a=1.0\r\na=3,b=4\n")
    assert [s.values for s in samples] == [(1.0, 2.5), (3.0, 4.0)]
    assert samples[0].raw == b"b=2.5,a=1.0"
    assert samples[0].t_us == 12_500_000
    assert decoder.stats == LineStats(lines=2, bytes=len(b"b=2.5,a=1.0\r\na=3,b=4\n"))


def test_bare_csv_with_configured_channels_fed_bytewise() -> None:
    decoder = LineDecoder(["x", "y", "z"], clock=clock)
    data = b"1.0, 2.0,3e-1\n"
    samples = [s for i in range(len(data)) for s in decoder.feed(data[i : i + 1])]
    assert samples == [Sample(12_500_000, (1.0, 2.0, 0.3), b"1.0, 2.0,3e-1")]


@pytest.mark.parametrize(
    "line",
    [
        b"a=1,b=x",  # not a number
        b"a=1",  # a key missing
        b"a=1,b=2,c=3",  # a key too many
        b"a=1,a=2",  # repeated
        b"a=1,2",  # mixed forms
        b"1,2,3",  # wrong count
        b"a=nan,b=1",  # not finite
        b"1,inf",
        b"\xff\xfe",  # not ASCII
        b"MPU6050 ready",
    ],
)
def test_bad_lines_are_counted_and_skipped(line: bytes) -> None:
    decoder = LineDecoder(["a", "b"], clock=clock)
    samples = decoder.feed(line + b"\n1,2\n")
    assert [s.values for s in samples] == [(1.0, 2.0)]
    assert decoder.bad_lines == 1
    assert decoder.lines == 1


def test_blank_lines_are_ignored() -> None:
    decoder = LineDecoder(["a"], clock=clock)
    assert decoder.feed(b"\n\r\n  \n") == []
    assert decoder.stats == LineStats(bytes=6)


def test_layout_learned_from_the_first_good_line() -> None:
    keyed = LineDecoder(clock=clock)
    assert keyed.feed(b"garbage\nt=20.5,h=40\nh=41,t=21\n1,2,3\n")[1].values == (21.0, 41.0)
    assert keyed.channels == ("t", "h")
    assert keyed.bad_lines == 2
    bare = LineDecoder(clock=clock)
    assert [s.values for s in bare.feed(b"1,2\n3,4\n5\n")] == [(1.0, 2.0), (3.0, 4.0)]
    assert bare.channels == ("ch0", "ch1")
    assert bare.bad_lines == 1


def test_line_limit() -> None:
    decoder = LineDecoder(["a"], clock=clock)
    fits = b"a=" + b"0" * (MAX_LINE - 2)
    assert len(decoder.feed(fits + b"\n")) == 1
    assert decoder.feed(fits + b"0\n" + b"a=2\n") == [Sample(12_500_000, (2.0,), b"a=2")]
    assert decoder.oversize == 1
    for _ in range(10):
        decoder.feed(b"9" * 500)  # a run without newline is discarded, not buffered
    assert decoder.oversize == 2
    assert [s.values for s in decoder.feed(b"\na=3\n")] == [(3.0,)]


def test_reset_drops_the_partial_line() -> None:
    decoder = LineDecoder(["a"], clock=clock)
    decoder.feed(b"a=1")
    decoder.reset()
    assert [s.values for s in decoder.feed(b"a=2\n")] == [(2.0,)]


def test_t_us_wraps_like_the_firmware_clock() -> None:
    decoder = LineDecoder(["a"], clock=lambda: 2**32 / 1e6 + 1.0)
    assert decoder.feed(b"1\n")[0].t_us == 1_000_000


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        LineDecoder(["a", "a"])
    with pytest.raises(ConfigError):
        LineDecoder(["a"], max_line=0)
