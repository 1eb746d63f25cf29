"""The fleet registry: devices, users, claim tokens, bound keys and broker credentials (SQLite).

One file (``registry.db``, mode 0600: it holds MQTT passwords and claim tokens) in WAL mode, shared by
the ``fleet`` commands and a running collector: every method is its own short transaction, writers
take the lock up front (``BEGIN IMMEDIATE``) and wait up to :data:`BUSY_TIMEOUT_S` for one another.

Invariants:

* names are edgeseal ids (docs/protocol.md §5), so an MQTT username never holds ``+``, ``#``, ``/`` or NUL;
  a name is a device *or* a user, never both (they share the broker's username space);
* a device's claim token is handed out until a key is bound (:meth:`Registry.bind_key`, called by
  the collector on a valid first birth, docs/protocol.md §4 "A birth from an unbound device") and is
  gone afterwards; revocation removes the token and the MQTT password, keeps the bound key (old results
  stay verifiable) and is final;
* secrets leave only through :meth:`device_credentials` / :meth:`user_credentials`; records and
  listings never carry them.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from broker_config.accounts import USER_ROLES, Account, Role
from broker_config.passwd import hash_password
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.keys import CLAIM_TOKEN_LEN, PUBLIC_KEY_LEN
from fleet_cli import sqlite
from fleet_cli.errors import FleetError, UsageError

SCHEMA_VERSION = 1
# How long a write waits for another process's transaction (collector vs CLI) before failing.
BUSY_TIMEOUT_S = 10.0
# MQTT passwords: 24 random bytes = 192 bits, URL-safe base64 (32 characters, no ':' for the
# password file, nothing a shell or a YAML file needs to quote).
PASSWORD_BYTES = 24
# Tags are operator metadata (site, model, owner): bounded so a typo cannot bloat every listing.
MAX_TAGS = 32
MAX_TAG_VALUE_LEN = 256

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS devices (
    name          TEXT PRIMARY KEY,
    tags          TEXT NOT NULL,          -- JSON object, keys sorted
    created_ms    INTEGER NOT NULL,
    password      TEXT,                   -- MQTT password, NULL once revoked
    password_hash TEXT,                   -- its $7$ hash for the broker's password file
    claim_token   BLOB,                   -- 32 bytes; NULL once a key is bound or revoked
    public_key    BLOB,                   -- the bound Ed25519 key, 32 bytes
    bound_ms      INTEGER,
    revoked_ms    INTEGER
) STRICT""",
    """
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('collector', 'operator', 'viewer')),
    created_ms    INTEGER NOT NULL,
    password      TEXT,
    password_hash TEXT,
    revoked_ms    INTEGER
) STRICT""",
)


class RegistryError(FleetError):
    """A registry operation that cannot be done as asked."""


class NotFoundError(RegistryError):
    """No device or user of that name."""


class ConflictError(RegistryError):
    """The name is taken, the device is revoked, a different key is already bound, ..."""


class DeviceCredentials(NamedTuple):
    username: str
    password: str
    claim_token: str | None  # hex; None once a key is bound


class UserCredentials(NamedTuple):
    username: str
    password: str


@dataclass(frozen=True)
class DeviceRecord:
    """A device as listed: no secrets."""

    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    created_ms: int = 0
    public_key: bytes | None = None
    bound_ms: int | None = None
    claim_pending: bool = False
    revoked_ms: int | None = None

    @property
    def status(self) -> str:
        if self.revoked_ms is not None:
            return "revoked"
        return "enrolled" if self.public_key is not None else "awaiting-first-birth"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "tags": dict(self.tags),
            "created_ms": self.created_ms,
            "public_key": self.public_key.hex() if self.public_key is not None else None,
            "bound_ms": self.bound_ms,
            "claim_pending": self.claim_pending,
            "revoked_ms": self.revoked_ms,
        }


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: Role
    created_ms: int
    revoked_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "created_ms": self.created_ms,
            "revoked_ms": self.revoked_ms,
        }


def parse_tags(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["site=north", "rack=3"]`` -> ``{"rack": "3", "site": "north"}``, validated."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"tag {pair!r} is not KEY=VALUE")
        tags[key] = value
    return check_tags(tags)


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise UsageError(f"{len(tags)} tags given, at most {MAX_TAGS} allowed")
    for key, value in tags.items():
        try:
            validate_id(key, "tag name")
        except InvalidId as e:
            raise UsageError(str(e), hint=e.hint) from e
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE_LEN:
            raise UsageError(f"tag {key}: values are text of at most {MAX_TAG_VALUE_LEN} characters")
        if not value.isprintable():
            raise UsageError(f"tag {key}: the value holds control characters")
    return dict(sorted(tags.items()))


def _name(value: str, what: str) -> str:
    try:
        return validate_id(value, what)
    except InvalidId as e:
        raise UsageError(str(e), hint=e.hint) from e


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _upgrade(db: sqlite3.Connection, found: int) -> None:
    """The schema of a new registry (version 1 is the only one so far)."""
    for stmt in _SCHEMA:
        db.execute(stmt)


class Registry:
    """The registry in ``path`` (created, mode 0600, if missing). Usable as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # One connection, shared by the threads of a process; transactions never interleave.
        self._lock = threading.RLock()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_uid == os.geteuid():
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            # Bindings and revocations must survive power loss, and writes are rare: FULL.
            self._db = sqlite.connect(
                self.path,
                busy_timeout_s=BUSY_TIMEOUT_S,
                synchronous=sqlite.Synchronous.FULL,
                foreign_keys=True,
            )
            sqlite.migrate(
                self._db,
                SCHEMA_VERSION,
                _upgrade,
                too_new=lambda found: RegistryError(
                    f"{self.path} has schema version {found}; this fleet CLI knows {SCHEMA_VERSION}",
                    hint="upgrade edgeseal",
                ),
            )
        except sqlite3.Error as e:
            raise RegistryError(f"cannot open the registry {self.path}: {e}") from e
        except OSError as e:
            raise RegistryError(f"cannot open the registry {self.path}: {e.strerror or e}") from e

    # -- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking SQLite's write lock at the start (no upgrade deadlocks)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise RegistryError(f"registry {self.path} is busy or broken: {e}") from e
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise RegistryError(f"registry {self.path}: {e}") from e

    def _one(self, sql: str, args: tuple[object, ...]) -> Any:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as e:
            raise RegistryError(f"registry {self.path}: {e}") from e

    def _all(self, sql: str) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql).fetchall()
        except sqlite3.Error as e:
            raise RegistryError(f"registry {self.path}: {e}") from e

    def _taken(self, name: str) -> str | None:
        if self._db.execute("SELECT 1 FROM devices WHERE name = ?", (name,)).fetchone():
            return "a device"
        if self._db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            return "a user"
        return None

    # -- devices ------------------------------------------------------------------------------

    def add_device(self, name: str, tags: Mapping[str, str] | None = None) -> DeviceRecord:
        """Register a device with a fresh claim token and MQTT password."""
        _name(name, "device name")
        tag_map = check_tags(tags or {})
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        pw_hash = hash_password(password)
        try:
            with self._write() as db:
                taken = self._taken(name)
                if taken:
                    raise ConflictError(
                        f"{name} is already {taken} in this fleet", hint="choose another name"
                    )
                db.execute(
                    "INSERT INTO devices (name, tags, created_ms, password, password_hash, claim_token)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        json.dumps(tag_map),
                        _now_ms(),
                        password,
                        pw_hash,
                        secrets.token_bytes(CLAIM_TOKEN_LEN),
                    ),
                )
        except sqlite3.Error as e:
            raise RegistryError(f"registry {self.path}: {e}") from e
        return self.get_device(name)

    def _device_row(self, name: str) -> Any:
        row = self._one(
            "SELECT name, tags, created_ms, public_key, bound_ms, claim_token IS NOT NULL, revoked_ms,"
            " password, claim_token FROM devices WHERE name = ?",
            (name,),
        )
        if row is None:
            raise NotFoundError(f"no device named {name!r}", hint="see `fleet device list`")
        return row

    @staticmethod
    def _record(row: Any) -> DeviceRecord:
        return DeviceRecord(
            name=row[0],
            tags=json.loads(row[1]),
            created_ms=row[2],
            public_key=row[3],
            bound_ms=row[4],
            claim_pending=bool(row[5]),
            revoked_ms=row[6],
        )

    def get_device(self, name: str) -> DeviceRecord:
        return self._record(self._device_row(name))

    def has_device(self, name: str) -> bool:
        return self._one("SELECT 1 FROM devices WHERE name = ?", (name,)) is not None

    def list_devices(self) -> list[DeviceRecord]:
        rows = self._all(
            "SELECT name, tags, created_ms, public_key, bound_ms, claim_token IS NOT NULL, revoked_ms"
            " FROM devices ORDER BY name"
        )
        return [self._record(r) for r in rows]

    def revoke_device(self, name: str) -> DeviceRecord:
        """Revoke for good: no password, no claim token; the bound key stays for old results."""
        with self._write() as db:
            row = self._device_row(name)
            if row[6] is None:
                db.execute(
                    "UPDATE devices SET revoked_ms = ?, password = NULL, password_hash = NULL,"
                    " claim_token = NULL WHERE name = ?",
                    (_now_ms(), name),
                )
        return self.get_device(name)

    def is_revoked(self, name: str) -> bool:
        row = self._one("SELECT revoked_ms FROM devices WHERE name = ?", (name,))
        return row is not None and row[0] is not None

    def device_credentials(self, name: str) -> DeviceCredentials:
        """Username, password and (until a key is bound) the claim token: the device's secrets."""
        row = self._device_row(name)
        if row[6] is not None:
            raise ConflictError(f"device {name} is revoked; it has no credentials")
        token: bytes | None = row[8]
        return DeviceCredentials(name, row[7], token.hex() if token is not None else None)

    def claim_token(self, name: str) -> bytes | None:
        """The one-time claim token, or None if retired, revoked or the device is unknown."""
        row = self._one("SELECT claim_token FROM devices WHERE name = ? AND revoked_ms IS NULL", (name,))
        return None if row is None else row[0]

    def device_key(self, name: str) -> bytes | None:
        row = self._one("SELECT public_key FROM devices WHERE name = ?", (name,))
        return None if row is None else row[0]

    def bind_key(self, name: str, public_key: bytes) -> DeviceRecord:
        """Bind the device's Ed25519 key and retire its claim token (docs/protocol.md §4 "A birth from an
        unbound device").

        Idempotent for the same key (a redelivered first birth). A different key, or a device
        without a pending claim, is a :class:`ConflictError`: re-enrolment is a separate act.
        """
        if len(public_key) != PUBLIC_KEY_LEN:
            raise UsageError(f"a public key is {PUBLIC_KEY_LEN} bytes, got {len(public_key)}")
        with self._write() as db:
            row = self._device_row(name)
            if row[6] is not None:
                raise ConflictError(f"device {name} is revoked")
            bound: bytes | None = row[3]
            if bound is not None:
                if bound != bytes(public_key):
                    raise ConflictError(f"device {name} already has another key bound")
            elif row[8] is None:
                raise ConflictError(f"device {name} has no pending claim")
            else:
                db.execute(
                    "UPDATE devices SET public_key = ?, bound_ms = ?, claim_token = NULL WHERE name = ?",
                    (bytes(public_key), _now_ms(), name),
                )
        return self.get_device(name)

    # -- users --------------------------------------------------------------------------------

    def add_user(self, name: str, role: Role | str) -> UserRecord:
        """Add a collector, operator or viewer account with a fresh MQTT password."""
        _name(name, "user name")
        if role not in {r.value for r in USER_ROLES}:
            choices = "|".join(r.value for r in USER_ROLES)
            raise UsageError(
                f"a user's role is one of {choices}", hint="devices are added with `fleet device add`"
            )
        role = Role(role)
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        pw_hash = hash_password(password)
        with self._write() as db:
            taken = self._taken(name)
            if taken:
                raise ConflictError(f"{name} is already {taken} in this fleet", hint="choose another name")
            db.execute(
                "INSERT INTO users (name, role, created_ms, password, password_hash) VALUES (?, ?, ?, ?, ?)",
                (name, role.value, _now_ms(), password, pw_hash),
            )
        return self.get_user(name)

    def _user_row(self, name: str) -> Any:
        row = self._one(
            "SELECT name, role, created_ms, revoked_ms, password FROM users WHERE name = ?", (name,)
        )
        if row is None:
            raise NotFoundError(f"no user named {name!r}", hint="see `fleet user list`")
        return row

    def get_user(self, name: str) -> UserRecord:
        row = self._user_row(name)
        return UserRecord(row[0], Role(row[1]), row[2], row[3])

    def list_users(self) -> list[UserRecord]:
        rows = self._all("SELECT name, role, created_ms, revoked_ms FROM users ORDER BY name")
        return [UserRecord(r[0], Role(r[1]), r[2], r[3]) for r in rows]

    def user_credentials(self, name: str) -> UserCredentials:
        row = self._user_row(name)
        if row[3] is not None:
            raise ConflictError(f"user {name} is revoked; it has no credentials")
        return UserCredentials(name, row[4])

    def revoke_user(self, name: str) -> UserRecord:
        with self._write() as db:
            row = self._user_row(name)
            if row[3] is None:
                db.execute(
                    "UPDATE users SET revoked_ms = ?, password = NULL, password_hash = NULL WHERE name = ?",
                    (_now_ms(), name),
                )
        return self.get_user(name)

    # -- for the broker -----------------------------------------------------------------------

    def broker_accounts(self) -> tuple[list[Account], list[Account]]:
        """(devices, users) as broker accounts; revoked ones carry no hash and are rendered nowhere."""
        devices = [
            Account(n, Role.DEVICE, h or "", revoked=r is not None)
            for n, h, r in self._all("SELECT name, password_hash, revoked_ms FROM devices ORDER BY name")
        ]
        users = [
            Account(n, Role(role), h or "", revoked=r is not None)
            for n, role, h, r in self._all(
                "SELECT name, role, password_hash, revoked_ms FROM users ORDER BY name"
            )
        ]
        return devices, users
