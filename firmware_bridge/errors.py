"""The error tree of firmware_bridge: one root, subclasses by where the fault lies.

``BridgeError`` is the only exception type the package raises on purpose. Foreign exceptions
(``serial.SerialException``, ``OSError``, ``struct.error``, ``cobs.DecodeError``) are converted at
the boundary with ``raise ... from``. Every error carries a one-line message and, where the user can
act on it, a ``hint``; the CLI prints both and exits non-zero.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every firmware_bridge error. ``hint`` says what the user can do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class FrameError(BridgeError):
    """Bytes that do not follow docs/firmware_bridge.md: a payload of the wrong size, a value out of range."""


class HelloError(FrameError):
    """A HELLO payload that is not ``fw=NAME;ver=X;ch=a,b,c;hz=N`` (docs/firmware_bridge.md)."""


class ConfigError(BridgeError):
    """A setting the caller supplied is invalid (a CONFIG key, a channel name, a rate, a fault rate)."""


class LinkError(BridgeError):
    """The serial port cannot be used: it cannot be opened, or the link is used while closed."""

    def __init__(self, message: str, *, port: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.port = port


class SimulatorError(BridgeError):
    """The virtual microcontroller cannot start (no pseudo-terminal, the --link path is taken)."""
