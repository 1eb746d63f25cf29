"""The root error of broker_config; the CLI catches it once and prints its message and hint."""

from __future__ import annotations


class BrokerError(Exception):
    """Something about the broker set-up is wrong; ``hint`` tells the user what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
