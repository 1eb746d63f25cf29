"""The root error of edge_protocol and its subclasses, by where the fault lies."""

from __future__ import annotations


class ProtocolError(Exception):
    """Something about edgeseal wire data or identifiers is wrong."""

    hint: str | None = None


class InvalidId(ProtocolError, ValueError):
    """A fleet, device or pipeline id that does not match docs/protocol.md §5."""

    def __init__(self, what: str, value: object, problem: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {what} {shown}: {problem}")
        self.what = what
        self.problem = problem
        self.hint = "ids are 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"


class InvalidTopic(ProtocolError, ValueError):
    """An MQTT topic that is not one of edgeseal's (docs/protocol.md §5)."""


class KeyFileError(ProtocolError):
    """A key file that cannot be read, has the wrong form, or is readable by others."""


class TlogError(ProtocolError):
    """A transparency-log value that is wrong: a proof, checkpoint, signed note, key or tile that does
    not parse or does not verify (edge_protocol.tlog). The message names what is wrong."""
