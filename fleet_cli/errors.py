"""The root error of the ``fleet`` command. Raised with a message and a hint; printed once by ``main``."""

from __future__ import annotations


class FleetError(Exception):
    """A problem the operator can act on. ``exit_code`` 2 means usage, 1 a failed check or operation."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code


class UsageError(FleetError):
    """Bad input from the command line (a malformed id, file or option)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, exit_code=2)
