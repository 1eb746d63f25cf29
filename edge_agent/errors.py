"""The error tree of edge_agent: one root, subclasses by where the fault lies.

``AgentError`` is the only exception type the package raises on purpose; foreign exceptions
(``OSError``, ``sqlite3.Error``, ``tomllib.TOMLDecodeError``, TFLite's ``ValueError``/``RuntimeError``)
are converted at the boundary with ``raise ... from``. Every error has a one-line message and, where
the user can act on it, a ``hint``; the CLI prints both and exits non-zero.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every edge_agent error. ``hint`` says what the user can do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(AgentError):
    """The configuration file is missing, not TOML, or a key has a wrong value; ``key`` names it."""

    def __init__(self, key: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{key}: {problem}" if key else problem, hint=hint)
        self.key = key
        self.problem = problem


class ModelError(AgentError):
    """A model that does not load, or whose tensors do not fit the pipeline's window."""


class RuntimeMissing(ModelError):
    """Neither ai-edge-litert nor tflite-runtime can be imported."""


class InferenceError(AgentError):
    """One inference failed or gave an output that cannot be published (NaN, infinity)."""


class IdentityError(AgentError):
    """The state directory, the device key, the boot counter or the claim token cannot be used."""


class OutboxError(AgentError):
    """The durable outbox (SQLite) cannot be opened or written."""


class SessionError(AgentError):
    """The MQTT session cannot be set up (TLS files, credentials)."""
