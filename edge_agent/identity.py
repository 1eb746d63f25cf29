"""The device's identity on disk: its Ed25519 key, its boot counter and its claim token.

State directory layout (docs/agent.md "State directory")::

    state_dir/            mode 0700
      device.key          hex Ed25519 seed, mode 0600, made on first start, never logged or sent
      boot                the boot counter, decimal text; incremented and made durable at every start
      outbox.sqlite       the outbox and the chain head (see outbox.py), with -wal and -shm files

Ordering rule (docs/protocol.md §6): :func:`next_boot` writes the new counter to a
temporary file, fsyncs it, renames it over ``boot`` and fsyncs the directory, all *before* the agent
connects, so that two boots can never share a number even if the device loses power right after.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge_agent.errors import IdentityError
from edge_protocol.errors import KeyFileError
from edge_protocol.keys import CLAIM_TOKEN_LEN, Signer, atomic_write, read_private_key, write_private_key

log = logging.getLogger(__name__)

KEY_FILE = "device.key"
BOOT_FILE = "boot"
OUTBOX_FILE = "outbox.sqlite"
# The boot counter is a CBOR uint (docs/protocol.md §3); 2**63 keeps it a signed SQLite INTEGER too.
MAX_BOOT = 2**63 - 1
# A boot file is one decimal number; more than 32 bytes is not ours.
MAX_BOOT_FILE_BYTES = 32
# What an operator does when this state cannot go on: a device name never takes a second key and a
# revoked name is not added again (docs/fleet-home.md), so the device comes back under a new name with
# a new key (docs/agent.md "State directory").
REENROL_HINT = (
    "re-enrol the device under a new name: `fleet device revoke OLD`, `fleet device add NEW`, "
    "`fleet broker reload`, then install `fleet flash NEW` over an emptied state directory "
    "(`install.sh --uninstall --purge` empties it)"
)


def ensure_state_dir(state_dir: Path) -> Path:
    """Create the state directory (mode 0700) if needed and check that it is writable."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise IdentityError(f"cannot create state directory {state_dir}: {e.strerror or e}") from e
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise IdentityError(f"state directory {state_dir} is not writable", hint="check its owner and mode")
    return state_dir


def load_or_create_key(state_dir: Path) -> Signer:
    """The device key; made (mode 0600, atomically) on first start. The seed is never logged."""
    path = state_dir / KEY_FILE
    if not path.exists():
        signer = Signer.generate()
        try:
            write_private_key(path, signer)
        except OSError as e:
            raise IdentityError(f"cannot write device key {path}: {e.strerror or e}") from e
        log.info("made a new device key, kid %s", signer.kid.hex())
        return signer
    try:
        return read_private_key(path)
    except KeyFileError as e:
        raise IdentityError(str(e), hint=e.hint) from e


def read_boot(state_dir: Path) -> int:
    """The last boot counter written, 0 when the device never started."""
    path = state_dir / BOOT_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BOOT_FILE_BYTES + 1)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise IdentityError(f"cannot read boot counter {path}: {e.strerror or e}") from e
    text = raw.decode("ascii", "replace").strip()
    if len(raw) > MAX_BOOT_FILE_BYTES or not text.isdigit() or int(text) > MAX_BOOT:
        raise IdentityError(
            f"boot counter {path} is damaged",
            hint=f"the chain cannot go on safely; {REENROL_HINT}",
        )
    return int(text)


def next_boot(state_dir: Path, at_least: int = 1) -> int:
    """Increment the boot counter and make it durable (tmp, fsync, rename, dir fsync); return it.

    ``at_least`` is one above the boot of the stored chain head: a boot file lost or restored from an
    old backup must not make the agent reuse a boot number the chain already has.
    """
    boot = max(read_boot(state_dir) + 1, at_least)
    if boot > MAX_BOOT:
        raise IdentityError("boot counter exhausted")
    try:
        atomic_write(state_dir / BOOT_FILE, f"{boot}\n".encode("ascii"), 0o600)
    except OSError as e:
        raise IdentityError(f"cannot write boot counter: {e.strerror or e}") from e
    return boot


def read_claim_token(path: Path | None) -> bytes | None:
    """The one-time claim token: 64 hex characters (a newline allowed) or 32 raw bytes."""
    if path is None:
        return None
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None  # already enrolled and the token removed: the birth carries no claim
    except OSError as e:
        raise IdentityError(f"cannot read claim token {path}: {e.strerror or e}") from e
    if len(raw) == CLAIM_TOKEN_LEN:  # 32 raw bytes; the hex form is 64 characters long
        return raw
    try:
        token = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise IdentityError(f"claim token {path} is not {CLAIM_TOKEN_LEN * 2} hex characters") from None
    if len(token) != CLAIM_TOKEN_LEN:
        raise IdentityError(f"claim token {path} is {len(token)} bytes, expected {CLAIM_TOKEN_LEN}")
    return token
