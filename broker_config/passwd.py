"""Mosquitto 2 password hashes: ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``.

This is the format ``mosquitto_passwd`` writes and the broker reads (mosquitto 2.0
``src/password_mosq.h``: type 7 = ``pw_sha512_pbkdf2``, 12-byte salt, 64-byte SHA-512 output,
standard base64 with padding). The broker reads the iteration count from each line, so a line made
here with a different count still verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass

from broker_config.errors import BrokerConfigError

HASH_TYPE = 7  # mosquitto 2.0 pw_sha512_pbkdf2
SALT_LEN = 12  # mosquitto 2.0 password_mosq.h SALT_LEN: what mosquitto_passwd makes and 2.0 expects
HASH_LEN = 64  # SHA-512 output
# PBKDF2 rounds. edgeseal passwords are 192-bit random strings (registry.PASSWORD_BYTES), so rounds
# add nothing against guessing; they only cost CPU on every CONNECT (a reconnect storm of a few
# thousand devices after a broker restart). 1000 is Mosquitto 2.1's default (2.0's is 101) and costs
# about 1 ms per connect on a Pi 4.
DEFAULT_ITERATIONS = 1000
# Upper bound we accept when parsing: beyond this a CONNECT takes seconds.
MAX_ITERATIONS = 1_000_000


@dataclass(frozen=True)
class PasswordHash:
    iterations: int
    salt: bytes
    digest: bytes

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"${HASH_TYPE}${self.iterations}${salt}${digest}"


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_LEN)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The ``$7$...`` hash of ``password``; ``salt`` is random unless given (golden tests fix it)."""
    if salt is None:
        salt = os.urandom(SALT_LEN)
    if len(salt) != SALT_LEN:
        raise BrokerConfigError(f"a Mosquitto salt is {SALT_LEN} bytes, got {len(salt)}")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise BrokerConfigError(f"PBKDF2 iterations must be 1..{MAX_ITERATIONS}, got {iterations}")
    return str(PasswordHash(iterations, salt, _derive(password, salt, iterations)))


def parse_hash(text: str) -> PasswordHash:
    """Parse a ``$7$`` hash, raising :class:`BrokerConfigError` for anything Mosquitto would not read."""
    parts = text.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != str(HASH_TYPE):
        raise BrokerConfigError("not a Mosquitto $7$ (PBKDF2-SHA512) password hash")
    if not parts[2].isdigit() or not 1 <= int(parts[2]) <= MAX_ITERATIONS:
        raise BrokerConfigError("bad iteration count in a $7$ password hash")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except binascii.Error as e:
        raise BrokerConfigError("bad base64 in a $7$ password hash") from e
    if len(salt) != SALT_LEN or len(digest) != HASH_LEN:
        raise BrokerConfigError(f"a $7$ hash has a {SALT_LEN}-byte salt and a {HASH_LEN}-byte digest")
    return PasswordHash(int(parts[2]), salt, digest)


def verify_password(password: str, hashed: str) -> bool:
    """Does ``password`` match the ``$7$`` hash (constant-time compare)?"""
    h = parse_hash(hashed)
    return hmac.compare_digest(_derive(password, h.salt, h.iterations), h.digest)


def render_passwd(entries: Iterable[tuple[str, str]]) -> str:
    """The password file: ``username:$7$...`` lines, sorted by username, no comments.

    Mosquitto's password file has no comment syntax we can rely on across 2.x releases, so the
    file holds nothing but entries. Usernames must already be validated ids (no ``:``).
    """
    lines = []
    for username, hashed in sorted(entries):
        if ":" in username or "\n" in username or "\n" in hashed:
            raise BrokerConfigError(f"username {username!r} cannot go into a password file")
        parse_hash(hashed)
        lines.append(f"{username}:{hashed}\n")
    return "".join(lines)
