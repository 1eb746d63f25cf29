"""The root error of broker_config; the CLI catches it once and prints its message and hint."""

from __future__ import annotations


class BrokerError(Exception):
    """Something about the broker set-up is wrong; ``hint`` tells the user what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class BrokerConfigError(BrokerError):
    """The inputs to rendering are invalid: a bad account name, port, path or password hash."""


class BrokerFileError(BrokerError):
    """The rendered files cannot be written, or the broker's user cannot read them."""


class BrokerNotRunningError(BrokerError):
    """A reload or stop was asked for but no broker started by ``fleet broker start`` is running."""
