"""The ``key=value;…`` text carried by HELLO and CONFIG payloads (docs/firmware_bridge.md "The wire format").

Parsing is lenient where it costs nothing (empty items such as a trailing ``;`` are skipped, keys may
come in any order) and strict where a mistake would be silent: a duplicate key, an item without ``=``
or a key outside the allowed alphabet is an error. Formatting refuses anything parsing would not give
back unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from firmware_bridge.errors import ConfigError

# Keys are short identifiers a C sketch can compare with strcmp; 32 bytes covers every key the
# reference firmware and simulator use ("fw", "ver", "ch", "hz", "cond", "profile") with room to spare.
MAX_KEY_LEN = 32
# A value must fit the payload of one frame anyway; this bound keeps a single value readable in a log.
MAX_VALUE_LEN = 256

_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_ITEM_SEP = ";"
_KV_SEP = "="


def check_key(key: str) -> str:
    """``key`` if it is 1..MAX_KEY_LEN characters of ``A-Z a-z 0-9 _ . -``; ConfigError otherwise."""
    if not key or len(key) > MAX_KEY_LEN or not _KEY.fullmatch(key):
        raise ConfigError(
            f"invalid setting key {key[:MAX_KEY_LEN]!r}",
            hint=f"keys are 1-{MAX_KEY_LEN} characters of A-Z a-z 0-9 _ . -",
        )
    return key


def check_value(key: str, value: str) -> str:
    """``value`` if it has no ``;``, no control character and at most MAX_VALUE_LEN characters."""
    if len(value) > MAX_VALUE_LEN:
        raise ConfigError(f"value of {key!r} is longer than {MAX_VALUE_LEN} characters")
    if _ITEM_SEP in value or not value.isprintable():
        raise ConfigError(
            f"value of {key!r} contains ';' or a control character",
            hint="';' separates settings; send one value per key",
        )
    return value


def parse_settings(text: str) -> dict[str, str]:
    """``{"hz": "50", "ch": "ax,az"}`` from ``"hz=50;ch=ax,az"``, in the order given."""
    settings: dict[str, str] = {}
    for item in text.split(_ITEM_SEP):
        if not item:
            continue
        key, sep, value = item.partition(_KV_SEP)
        if not sep:
            raise ConfigError(f"setting {item[:MAX_KEY_LEN]!r} has no '='", hint="write key=value")
        check_key(key)
        check_value(key, value)
        if key in settings:
            raise ConfigError(f"setting {key!r} is given twice")
        settings[key] = value
    return settings


def format_settings(settings: Mapping[str, str]) -> str:
    """``"hz=50;ch=ax,az"``: the inverse of ``parse_settings`` for valid input."""
    return _ITEM_SEP.join(
        f"{check_key(key)}{_KV_SEP}{check_value(key, value)}" for key, value in settings.items()
    )
