"""HELLO: the microcontroller's description of itself (docs/firmware_bridge.md "The wire format").

Payload: UTF-8 ``fw=NAME;ver=X;ch=a,b,c;hz=100``; keys in any order, more keys allowed (they land in
``Hello.extra``). ``fw``, ``ver``, ``ch`` and ``hz`` are required. ``ch`` names the SAMPLE channels in
payload order, so ``len(channels)`` is the number of f32 values in every SAMPLE that follows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from firmware_bridge.errors import ConfigError, HelloError
from firmware_bridge.frames import MAX_CHANNELS
from firmware_bridge.settings import format_settings, parse_settings

# A channel name becomes a key in the agent's pipeline config and in result payloads, where
# docs/protocol.md §3 caps text keys at 63 bytes; 32 characters of a safe alphabet leave room for a prefix.
MAX_CHANNEL_NAME = 32
# Firmware names and versions are shown to operators; 64 characters hold "name-board-variant" and a
# semantic version with build metadata.
MAX_NAME_LEN = 64
# No serial link carries more: at 921600 baud a one-channel SAMPLE (14 wire bytes) arrives at most
# ~6600 times a second. A larger rate is a broken HELLO, not a fast sensor.
MAX_HZ = 100_000.0

REQUIRED_KEYS = ("fw", "ver", "ch", "hz")
_CHANNEL = re.compile(r"[A-Za-z0-9_.\-]+")


def check_channels(channels: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The channel names as a tuple if each is valid and unique; ConfigError otherwise."""
    names = tuple(channels)
    if not 1 <= len(names) <= MAX_CHANNELS:
        raise ConfigError(f"a device has 1 to {MAX_CHANNELS} channels, not {len(names)}")
    for name in names:
        if not name or len(name) > MAX_CHANNEL_NAME or not _CHANNEL.fullmatch(name):
            raise ConfigError(
                f"invalid channel name {name[:MAX_CHANNEL_NAME]!r}",
                hint=f"channel names are 1-{MAX_CHANNEL_NAME} characters of A-Z a-z 0-9 _ . -",
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"channel names repeat: {','.join(names)}")
    return names


def format_hz(hz: float) -> str:
    """``"100"`` for 100.0, ``"0.5"`` for 0.5: the shortest text that reads back as the same float."""
    return str(int(hz)) if hz.is_integer() else repr(hz)


@dataclass(frozen=True, slots=True)
class Hello:
    """A parsed HELLO. ``extra`` holds every key beyond fw/ver/ch/hz, read-only."""

    firmware: str
    version: str
    channels: tuple[str, ...]
    hz: float
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for what, text in (("firmware", self.firmware), ("version", self.version)):
            if not text or len(text) > MAX_NAME_LEN or not text.isprintable():
                raise HelloError(f"HELLO {what} must be 1-{MAX_NAME_LEN} printable characters")
        try:
            object.__setattr__(self, "channels", check_channels(self.channels))
        except ConfigError as exc:
            raise HelloError(f"HELLO: {exc}") from exc
        if not (math.isfinite(self.hz) and 0 < self.hz <= MAX_HZ):
            raise HelloError(f"HELLO rate {self.hz} Hz is outside (0, {MAX_HZ:g}]")
        clash = set(self.extra) & set(REQUIRED_KEYS)
        if clash:
            raise HelloError(f"HELLO extra keys repeat required keys: {sorted(clash)}")
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def to_payload(self) -> bytes:
        """The HELLO payload bytes, required keys first."""
        settings = {"fw": self.firmware, "ver": self.version, "ch": ",".join(self.channels)}
        settings["hz"] = format_hz(self.hz)
        settings.update(self.extra)
        try:
            return format_settings(settings).encode("utf-8")
        except ConfigError as exc:
            raise HelloError(f"HELLO cannot be encoded: {exc}") from exc


def parse_hello(payload: bytes) -> Hello:
    """A typed ``Hello`` from a HELLO payload; HelloError names what is wrong."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HelloError("HELLO payload is not UTF-8") from exc
    try:
        settings = parse_settings(text)
    except ConfigError as exc:
        raise HelloError(f"HELLO payload is malformed: {exc}") from exc
    missing = [key for key in REQUIRED_KEYS if key not in settings]
    if missing:
        raise HelloError(
            f"HELLO lacks {', '.join(missing)}", hint="fw=NAME;ver=X;ch=a,b,c;hz=N (docs/firmware_bridge.md)"
        )
    try:
        hz = float(settings.pop("hz"))
    except ValueError as exc:
        raise HelloError("HELLO hz is not a number") from exc
    return Hello(
        firmware=settings.pop("fw"),
        version=settings.pop("ver"),
        channels=tuple(settings.pop("ch").split(",")),
        hz=hz,
        extra=settings,
    )
