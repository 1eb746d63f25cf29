"""Validation of fleet, device and pipeline ids (docs/protocol.md §5).

Ids become MQTT topic levels, file names and SQL keys, so the rule is deliberately narrow:
``[a-z0-9][a-z0-9_-]{0,62}``. Anything else, in particular ``+ # /`` and NUL (MQTT wildcards and level
separators, CVE-2017-7650) and non-ASCII, is refused at every boundary with this one function.
"""

from __future__ import annotations

import re

# docs/protocol.md §5: at most 63 characters, so an id is a valid DNS label too.
MAX_ID_LEN = 63
_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid edgeseal id, else raise :class:`InvalidId` saying why."""
    from edge_protocol.errors import InvalidId

    if not isinstance(value, str):
        raise InvalidId(what, value, f"must be text, not {type(value).__name__}")
    if not value:
        raise InvalidId(what, value, "must not be empty")
    if len(value) > MAX_ID_LEN:
        raise InvalidId(what, value, f"is {len(value)} characters long, at most {MAX_ID_LEN} allowed")
    if _ID_RE.fullmatch(value) is None:
        bad = next((c for c in value if not re.fullmatch(r"[a-z0-9_-]", c)), None)
        if bad is None:
            problem = "must start with a lower-case letter or digit"
        elif bad in "+#":
            problem = f"contains the MQTT wildcard {bad!r}"
        elif bad == "/":
            problem = "contains the topic separator '/'"
        elif bad == "\x00":
            problem = "contains a NUL character"
        elif not bad.isascii():
            problem = f"contains the non-ASCII character {bad!r}"
        elif bad.isupper():
            problem = f"contains the upper-case letter {bad!r} (ids are lower case)"
        else:
            problem = f"contains the character {bad!r}"
        raise InvalidId(what, value, problem)
    return value


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
