"""HELLO parsing and the key=value;… settings text (docs/firmware_bridge.md "The wire format")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import ConfigError, HelloError
from firmware_bridge.frames import MAX_CHANNELS
from firmware_bridge.hello import MAX_CHANNEL_NAME, MAX_HZ, MAX_NAME_LEN, Hello, check_channels, parse_hello
from firmware_bridge.sanitize import MAX_LOGGED_TEXT, printable
from firmware_bridge.settings import MAX_KEY_LEN, MAX_VALUE_LEN, format_settings, parse_settings
from tests.firmware_bridge._support import frame_vectors


def test_hello_vector_parses() -> None:
    for _, doc in frame_vectors():
        vector = next(v for v in doc["single"] if v["name"] == "hello")
        hello = parse_hello(bytes.fromhex(vector["payload"]))
        assert hello == Hello("vibe-sim", "1.2.0", ("ax", "ay", "az"), 100.0)
        assert hello.to_payload() == bytes.fromhex(vector["payload"])


def test_keys_in_any_order_and_extra_keys_kept() -> None:
    hello = parse_hello(b"hz=0.5;board=esp32;ch=temp;ver=2;fw=env;")
    assert hello.hz == 0.5
    assert hello.channels == ("temp",)
    assert dict(hello.extra) == {"board": "esp32"}
    assert parse_hello(hello.to_payload()) == hello


def test_extra_is_read_only_and_hello_hashes() -> None:
    hello = Hello("a", "1", ("x",), 1.0, {"k": "v"})
    with pytest.raises(TypeError):
        hello.extra["k"] = "w"  # type: ignore[index]
    assert hash(hello) == hash(Hello("a", "1", ("x",), 1.0, {"k": "other"}))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"fw=a;ver=1;ch=x", "lacks hz"),
        (b"fw=a;ver=1;hz=1", "lacks ch"),
        (b"fw=a;ver=1;ch=x;hz=fast", "not a number"),
        (b"fw=a;ver=1;ch=x;hz=0", "outside"),
        (b"fw=a;ver=1;ch=x;hz=nan", "outside"),
        (b"fw=a;ver=1;ch=x;hz=1;hz=2", "twice"),
        (b"fw=a;ver=1;ch=x,x;hz=1", "repeat"),
        (b"fw=a;ver=1;ch=x,;hz=1", "invalid channel"),
        (b"fw=a;ver=1;ch=x;hz=1;junk", "no '='"),
        (b"\xff\xfe", "not UTF-8"),
        (b"fw=;ver=1;ch=x;hz=1", "firmware"),
        (b"fw=a\x1b[2J;ver=1;ch=x;hz=1", "control"),
    ],
)
def test_bad_hellos_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(HelloError, match=match):
        parse_hello(payload)


def test_hello_limits() -> None:
    name = "n" * MAX_NAME_LEN
    assert Hello(name, name, ("x",), MAX_HZ).firmware == name
    with pytest.raises(HelloError):
        Hello(name + "n", "1", ("x",), 1.0)
    with pytest.raises(HelloError):
        Hello("a", "1", ("x",), MAX_HZ * 2)
    assert check_channels(["c" * MAX_CHANNEL_NAME])
    with pytest.raises(ConfigError):
        check_channels(["c" * (MAX_CHANNEL_NAME + 1)])
    assert len(check_channels([f"c{i}" for i in range(MAX_CHANNELS)])) == MAX_CHANNELS
    with pytest.raises(ConfigError):
        check_channels([f"c{i}" for i in range(MAX_CHANNELS + 1)])
    with pytest.raises(HelloError):
        Hello("a", "1", ("x",), 1.0, {"hz": "2"})


def test_settings_round_trip_and_limits() -> None:
    assert parse_settings("hz=50;ch=ax,az") == {"hz": "50", "ch": "ax,az"}
    assert parse_settings(";;a=b=c;") == {"a": "b=c"}
    assert format_settings({"hz": "50", "cond": "bearing"}) == "hz=50;cond=bearing"
    format_settings({"k" * MAX_KEY_LEN: "v" * MAX_VALUE_LEN})
    with pytest.raises(ConfigError):
        format_settings({"k" * (MAX_KEY_LEN + 1): "v"})
    with pytest.raises(ConfigError):
        format_settings({"k": "v" * (MAX_VALUE_LEN + 1)})
    with pytest.raises(ConfigError, match="';'"):
        format_settings({"k": "a;b"})
    with pytest.raises(ConfigError):
        format_settings({"bad key": "v"})


@given(
    st.dictionaries(
        st.text("abcXYZ019_.-", min_size=1, max_size=MAX_KEY_LEN),
        st.text(st.characters(categories=("L", "N", "P", "S"), exclude_characters=";"), max_size=20),
        max_size=6,
    )
)
@settings(max_examples=200, deadline=None)
def test_settings_format_then_parse_is_identity(values: dict[str, str]) -> None:
    assert parse_settings(format_settings(values)) == values


def test_printable_neutralises_device_text() -> None:
    assert printable(b"ok\x1b[31mred\r\nfake log line") == "ok\ufffd[31mred\ufffd\ufffdfake log line"
    assert printable("x" * (MAX_LOGGED_TEXT + 1)).endswith("\N{HORIZONTAL ELLIPSIS}")
    assert len(printable("x" * 10_000)) == MAX_LOGGED_TEXT + 1
    assert printable(b"\xff") == "\ufffd"
