"""Keys and the BLAKE3 derivations of docs/protocol.md §1: key ids, message ids and enrolment claims.

Private keys are Ed25519 seeds (32 bytes). On disk a key file holds the seed as lowercase hex and a
newline, mode 0600, written atomically (temp file, fsync, rename, fsync of the directory) so that a
crash never leaves a half-written key. Reading refuses files that others can read.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import blake3
import nacl.bindings
import nacl.exceptions
import nacl.signing

from edge_protocol.errors import KeyFileError

# docs/protocol.md §1: derive_key contexts are fixed constants of wire format v1.
KID_CONTEXT = "edgeseal 2026 v1 key id"
MSG_ID_CONTEXT = "edgeseal 2026 v1 message id"
KID_LEN = 16  # docs/protocol.md §1: first 16 bytes of the derived key id
MSG_ID_LEN = 32
PUBLIC_KEY_LEN = 32  # RFC 8032 Ed25519
SEED_LEN = 32
SIGNATURE_LEN = 64
CLAIM_TOKEN_LEN = 32  # docs/protocol.md §1: one-time 32-byte claim token


def key_id(public_key: bytes) -> bytes:
    """The 16-byte ``kid`` of a public key."""
    return blake3.blake3(public_key, derive_key_context=KID_CONTEXT).digest()[:KID_LEN]


# A hasher that has taken in the context and nothing else; copies of it skip re-deriving the context key.
_MSG_ID_HASHER = blake3.blake3(derive_key_context=MSG_ID_CONTEXT)


def message_id(payload_bytes: bytes) -> bytes:
    """The 32-byte ``msg_id`` of an envelope, derived from its payload bytes."""
    hasher = _MSG_ID_HASHER.copy()
    hasher.update(payload_bytes)
    return hasher.digest()


def claim_tag(claim_token: bytes, public_key: bytes, dev: str) -> bytes:
    """``BLAKE3(keyed_hash, key=claim_token, data=public_key ‖ utf8(dev))`` (docs/protocol.md §3 key 14)."""
    if len(claim_token) != CLAIM_TOKEN_LEN:
        raise ValueError(f"a claim token is {CLAIM_TOKEN_LEN} bytes, got {len(claim_token)}")
    return blake3.blake3(public_key + dev.encode("utf-8"), key=claim_token).digest()


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class Signer:
    """An Ed25519 private key. The seed is secret: never log it, never send it.

    Signing calls libsodium's ``crypto_sign`` directly, as PyNaCl's ``SigningKey.sign`` does, without
    the ``SignedMessage`` object it builds around the result: the same signature, a little cheaper.
    """

    __slots__ = ("_key", "_secret", "kid", "public_key")

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self.public_key: bytes = bytes(key.verify_key)
        # libsodium's 64-byte secret key (seed || public key), derived again from the seed
        self._secret: bytes = nacl.bindings.crypto_sign_seed_keypair(bytes(key))[1]
        self.kid: bytes = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        if len(seed) != SEED_LEN:
            raise ValueError(f"an Ed25519 seed is {SEED_LEN} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (RFC 8032); ``crypto_sign`` puts it before ``data``."""
        return nacl.bindings.crypto_sign(data, self._secret)[:SIGNATURE_LEN]

    def __repr__(self) -> str:  # never show the seed
        return f"Signer(kid={self.kid.hex()})"


class Verifier:
    """An Ed25519 public key and its kid, worked out once (re-creating one per message halves throughput).

    Verification is exactly PyNaCl's ``VerifyKey.verify`` with a detached signature: the same type and
    length checks, then libsodium's ``crypto_sign_open`` on ``signature || data`` (RFC 8032 with all of
    libsodium's checks, S < L among them), without PyNaCl's method layers around that call.
    """

    __slots__ = ("kid", "public_key")

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != PUBLIC_KEY_LEN:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, got {len(public_key)}")
        self.public_key = bytes(nacl.signing.VerifyKey(bytes(public_key)))  # PyNaCl's own key checks
        self.kid = key_id(self.public_key)

    def verify(self, data: bytes, signature: bytes) -> bool:
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + data, self.public_key)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True


def parse_public_key(text: str) -> bytes:
    """A public key from its 64-character hex form."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("a public key is 64 hexadecimal characters") from None
    if len(raw) != PUBLIC_KEY_LEN:
        raise ValueError(f"a public key is {PUBLIC_KEY_LEN} bytes (64 hex characters), got {len(raw)} bytes")
    return raw


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_key(path: Path, signer: Signer) -> None:
    """Store a private key (hex seed), mode 0600, atomically."""
    atomic_write(Path(path), signer.seed.hex().encode("ascii") + b"\n", 0o600)


def read_private_key(path: Path) -> Signer:
    """Load a private key written by :func:`write_private_key`; refuse one that others can read."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read key file {path}: {e}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        err = KeyFileError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o})"
        )
        err.hint = f"chmod 600 {path}"
        raise err
    try:
        seed = bytes.fromhex(text.strip())
        return Signer.from_seed(seed)
    except ValueError:
        raise KeyFileError(f"key file {path} does not hold a 32-byte hex Ed25519 seed") from None
