"""C2SP signed-note (c2sp.org/signed-note) with Ed25519, and the key strings of Go's sumdb/note.

A signed note is::

    text, ending in a newline (U+000A)
    a blank line
    one or more lines "— <key name> <base64(key ID ‖ signature)>", each ending in a newline

The text ends at the *last* blank line. The whole note is valid UTF-8 with no ASCII control
character but the newline. A key name is non-empty, with no Unicode space and no "+". The key ID is
the first four bytes, big-endian, of SHA-256(key name ‖ 0x0A ‖ signature type ‖ public key).

Two signature types, both Ed25519 (RFC 8032) keys:

- 0x01, signed-note's Ed25519: the signature is over the note text.
- 0x04, c2sp.org/tlog-cosignature v1: the signature is a big-endian u64 timestamp followed by the
  Ed25519 signature of ``"cosignature/v1\\ntime <timestamp>\\n" ‖ text``.

Keys are written as Go's golang.org/x/mod/sumdb/note writes them: a verifier key
``<name>+<hex key ID>+<base64(type ‖ public key)>`` (signed-note "Verifier keys"), a signer key
``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ Ed25519 seed)>`` (sumdb/note only; the spec defines
no private key form, and Go defines it for type 0x01 only, so a cosigner is made from such a key with
:meth:`NoteSigner.as_cosigner`, as transparency-dev/formats' NewSignerForCosignatureV1 does).

Opening a note (:func:`open_note`), as the spec requires: signatures by unknown keys (name and ID not
both those of a given verifier) are kept aside, unverified; a signature by a known key that does not
verify refuses the whole note; a note with no verified signature is refused.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.signing

from edge_protocol.errors import TlogError
from edge_protocol.tlog.merkle import strict_b64decode

SIG_ED25519 = 0x01  # signed-note "Signature types"
SIG_COSIGNATURE_V1 = 0x04  # signed-note "Signature types", defined by tlog-cosignature
SIGNATURE_TYPES = {SIG_ED25519: "Ed25519", SIG_COSIGNATURE_V1: "Ed25519 cosignature/v1"}
KEY_ID_SIZE = 4  # signed-note: "a uint32 key ID stored in big-endian order"
ED25519_KEY_SIZE = 32  # RFC 8032
ED25519_SIG_SIZE = 64  # RFC 8032
TIMESTAMP_SIZE = 8  # tlog-cosignature: u64 timestamp
MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature: "It MUST NOT exceed 2^63 - 1"
# signed-note: verifiers "MUST accept at least up to 16 signatures"; Go's sumdb/note refuses more than
# 100, and so do we.
MAX_SIGNATURES = 100
# Room for MAX_SIGNATURES of the largest type signed-note names (ML-DSA-44 cosignatures, about 3.3 kB
# of base64 each) and a text; an edgeseal checkpoint with its witnesses is under 2 kB.
MAX_NOTE_SIZE = 1 << 20
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"  # Go sumdb/note signer keys

# Unicode White_Space (PropList.txt), the set Go's unicode.IsSpace uses for "no Unicode spaces"
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # signed-note: no ASCII control but the newline
_KEY_ID_HEX = re.compile("[0-9a-f]{8}")  # signed-note: fixed-length lowercase hex


def check_key_name(name: object) -> str:
    """A valid key name (signed-note: non-empty, no Unicode space, no "+"; and, since it is written
    into a note, no control character), or :class:`TlogError`."""
    if not isinstance(name, str):
        raise TlogError("key name is not a string")
    if not name:
        raise TlogError("key name is empty")
    if "+" in name:
        raise TlogError(f"key name {name!r} contains '+'")
    if any(c in _SPACES for c in name):
        raise TlogError(f"key name {name!r} contains a space")
    if _CONTROL.search(name):
        raise TlogError(f"key name {name!r} contains a control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise TlogError(f"key name {name!r} is not valid UTF-8") from None
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """The 32-bit key ID: SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:KEY_ID_SIZE], "big")


def cosignature_message(text: str, timestamp: int) -> bytes:
    """What an Ed25519 cosignature v1 signs (tlog-cosignature "Ed25519 signed message")."""
    _check_timestamp(timestamp)
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, key ID, and the signature bytes after the key ID (for a
    cosignature: the 8-byte timestamp and the Ed25519 signature)."""

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.key_id, int) or not 0 <= self.key_id < 1 << 32:
            raise TlogError(f"key ID of {self.name!r} is not a 32-bit unsigned integer")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise TlogError(f"signature by {self.name!r} is empty")

    def line(self) -> str:
        """The signature line, newline included."""
        raw = self.key_id.to_bytes(KEY_ID_SIZE, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {_b64encode(raw)}\n"

    @property
    def timestamp(self) -> int:
        """The timestamp of a cosignature v1 (its first 8 bytes, big-endian)."""
        if len(self.signature) != TIMESTAMP_SIZE + ED25519_SIG_SIZE:
            raise TlogError(f"signature by {self.name!r} is not an Ed25519 cosignature v1 (wrong length)")
        ts = int.from_bytes(self.signature[:TIMESTAMP_SIZE], "big")
        _check_timestamp(ts)
        return ts


@dataclass(frozen=True)
class Note:
    """A note's text (ending in a newline) and its signatures, in order; not verified."""

    text: str
    signatures: tuple[NoteSignature, ...] = ()

    def __post_init__(self) -> None:
        check_note_text(self.text)


@dataclass(frozen=True)
class OpenedNote:
    """A note that verified: its text, the signatures of known keys that verified (at least one), and
    the signatures of unknown keys, which say nothing."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


@dataclass(frozen=True)
class NoteVerifier:
    """A public key that verifies note signatures of one type under one name."""

    name: str
    public_key: bytes
    sig_type: int = SIG_ED25519
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in SIGNATURE_TYPES:
            raise TlogError(f"signature type 0x{self.sig_type:02x} is not one edgeseal knows (0x01, 0x04)")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != ED25519_KEY_SIZE:
            raise TlogError(f"public key of {self.name!r} is not {ED25519_KEY_SIZE} bytes")
        object.__setattr__(self, "key_id", key_id(self.name, self.sig_type, self.public_key))

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """A verifier from its key string ``<name>+<hex key ID>+<base64(type ‖ public key)>``; the key
        ID must be the one the name, type and key hash to."""
        if not isinstance(vkey, str):
            raise TlogError("verifier key is not a string")
        parts = vkey.split("+", 2)  # base64 has "+" too: name and key ID first, as Go cuts it
        if len(parts) != 3:
            raise TlogError("verifier key is not <name>+<key ID>+<key>")
        name, hex_id, b64 = parts
        check_key_name(name)
        if not _KEY_ID_HEX.fullmatch(hex_id):
            raise TlogError(f"key ID {hex_id!r} of verifier key {name!r} is not 8 lowercase hex digits")
        raw = strict_b64decode(b64, f"key of verifier key {name!r}")
        if not raw:
            raise TlogError(f"verifier key {name!r} has no key")
        verifier = cls(name, raw[1:], raw[0])
        if verifier.key_id != int(hex_id, 16):
            raise TlogError(
                f"wrong key hash in verifier key {name!r}: it says {hex_id}, the key hashes to "
                f"{verifier.key_id:08x}"
            )
        return verifier

    def vkey(self) -> str:
        """The verifier key string."""
        return f"{self.name}+{self.key_id:08x}+{_b64encode(bytes([self.sig_type]) + self.public_key)}"

    def verify(self, text: str, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the key ID) is this key's signature of ``text``."""
        if self.sig_type == SIG_COSIGNATURE_V1:
            if len(signature) != TIMESTAMP_SIZE + ED25519_SIG_SIZE:
                return False
            timestamp = int.from_bytes(signature[:TIMESTAMP_SIZE], "big")
            if timestamp > MAX_TIMESTAMP:
                return False
            return _ed25519_verify(self.public_key, cosignature_message(text, timestamp), signature[8:])
        return _ed25519_verify(self.public_key, text.encode("utf-8"), signature)


@dataclass(frozen=True)
class NoteSigner:
    """A private Ed25519 key (its 32-byte seed) that signs notes of one type under one name. The seed is
    secret: it is not in the repr; never log it."""

    name: str
    seed: bytes = field(repr=False)
    sig_type: int = SIG_ED25519

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in SIGNATURE_TYPES:
            raise TlogError(f"signature type 0x{self.sig_type:02x} is not one edgeseal knows (0x01, 0x04)")
        if not isinstance(self.seed, bytes) or len(self.seed) != ED25519_KEY_SIZE:
            raise TlogError(f"private key of {self.name!r} is not a {ED25519_KEY_SIZE}-byte Ed25519 seed")

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def parse(cls, skey: str) -> NoteSigner:
        """A signer from Go's key string ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>``."""
        if not isinstance(skey, str) or not skey.startswith(PRIVATE_KEY_PREFIX):
            raise TlogError("signer key does not start with PRIVATE+KEY+")
        parts = skey[len(PRIVATE_KEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise TlogError("signer key is not PRIVATE+KEY+<name>+<key ID>+<key>")
        name, hex_id, b64 = parts
        check_key_name(name)
        if not _KEY_ID_HEX.fullmatch(hex_id):
            raise TlogError(f"key ID {hex_id!r} of signer key {name!r} is not 8 lowercase hex digits")
        raw = strict_b64decode(b64, f"key of signer key {name!r}")
        if not raw or raw[0] != SIG_ED25519:
            raise TlogError(f"signer key {name!r} is not an Ed25519 (type 0x01) key")
        signer = cls(name, raw[1:])
        if signer.key_id != int(hex_id, 16):
            raise TlogError(
                f"wrong key hash in signer key {name!r}: it says {hex_id}, the key hashes to "
                f"{signer.key_id:08x}"
            )
        return signer

    @property
    def public_key(self) -> bytes:
        return bytes(nacl.signing.SigningKey(self.seed).verify_key)

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.sig_type, self.public_key)

    def skey(self) -> str:
        """Go's signer key string (type 0x01 only: Go defines no other)."""
        if self.sig_type != SIG_ED25519:
            raise TlogError("a signer key string exists for Ed25519 (type 0x01) keys only")
        key = _b64encode(bytes([SIG_ED25519]) + self.seed)
        return f"{PRIVATE_KEY_PREFIX}{self.name}+{self.key_id:08x}+{key}"

    def as_cosigner(self) -> NoteSigner:
        """The same key and name as an Ed25519 cosignature v1 signer (key ID with type 0x04)."""
        return NoteSigner(self.name, self.seed, SIG_COSIGNATURE_V1)

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key, self.sig_type)

    def sign(self, text: str, timestamp: int | None = None) -> NoteSignature:
        """This key's signature of note text ``text``; a cosignature needs its ``timestamp`` (POSIX
        seconds), a plain Ed25519 signature takes none."""
        check_note_text(text)
        key = nacl.signing.SigningKey(self.seed)
        if self.sig_type == SIG_COSIGNATURE_V1:
            if timestamp is None:
                raise TlogError(f"cosignature by {self.name!r} needs a timestamp")
            sig = key.sign(cosignature_message(text, timestamp)).signature
            return NoteSignature(self.name, self.key_id, timestamp.to_bytes(TIMESTAMP_SIZE, "big") + sig)
        if timestamp is not None:
            raise TlogError(f"an Ed25519 note signature by {self.name!r} takes no timestamp")
        return NoteSignature(self.name, self.key_id, key.sign(text.encode("utf-8")).signature)


def check_note_text(text: object) -> str:
    """Note text as signed-note allows it: a UTF-8 string ending in a newline with no control character
    but the newline. (It may contain blank lines; the last blank line of a note ends the text.)"""
    if not isinstance(text, str):
        raise TlogError("note text is not a string")
    if not text.endswith("\n"):
        raise TlogError("note text does not end in a newline")
    if _CONTROL.search(text):
        raise TlogError("note text contains a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TlogError("note text is not valid UTF-8") from None
    return text


def format_note(note: Note) -> str:
    """The signed note: text, blank line, signature lines."""
    if not note.signatures:
        raise TlogError("a signed note needs at least one signature")
    if len(note.signatures) > MAX_SIGNATURES:
        raise TlogError(f"a note has more than {MAX_SIGNATURES} signatures")
    return note.text + "\n" + "".join(s.line() for s in note.signatures)


def parse_note(msg: str | bytes) -> Note:
    """The text and signatures of a signed note, checked for form only (no signature is verified)."""
    if isinstance(msg, bytes):
        if len(msg) > MAX_NOTE_SIZE:
            raise TlogError(f"note is larger than {MAX_NOTE_SIZE} bytes")
        try:
            msg = msg.decode("utf-8")
        except UnicodeDecodeError:
            raise TlogError("note is not valid UTF-8") from None
    elif not isinstance(msg, str):
        raise TlogError("note is neither text nor bytes")
    elif len(msg) > MAX_NOTE_SIZE:
        raise TlogError(f"note is larger than {MAX_NOTE_SIZE} bytes")
    if _CONTROL.search(msg):
        raise TlogError("note contains a control character")
    split = msg.rfind("\n\n")
    if split < 0:
        raise TlogError("note has no blank line before its signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block:
        raise TlogError("note has no signature lines")
    if not block.endswith("\n"):
        raise TlogError("note's last signature line does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise TlogError(f"note has more than {MAX_SIGNATURES} signatures")
    return Note(check_note_text(text), tuple(_parse_signature_line(line) for line in lines))


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise TlogError(f"note line {_shown(line)} is not a signature line ('— name signature')")
    name, space, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise TlogError(f"signature line {_shown(line)} has no signature after the key name")
    check_key_name(name)
    raw = strict_b64decode(b64, f"signature by {name!r}")
    if len(raw) <= KEY_ID_SIZE:
        raise TlogError(f"signature by {name!r} is too short ({len(raw)} bytes)")
    return NoteSignature(name, int.from_bytes(raw[:KEY_ID_SIZE], "big"), raw[KEY_ID_SIZE:])


def open_note(msg: str | bytes, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Parse a signed note and verify it with the given keys (signed-note "Signatures").

    Refused (:class:`TlogError`): a malformed note; two verifiers with the same name and key ID; a
    signature by a known key that fails; a note with no signature by a known key.
    """
    known: dict[tuple[str, int], NoteVerifier] = {}
    for given in verifiers:
        if known.get((given.name, given.key_id), given) != given:
            raise TlogError(f"two verifier keys share the name and key ID {given.name}+{given.key_id:08x}")
        known[(given.name, given.key_id)] = given
    note = parse_note(msg)
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    for sig in note.signatures:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if not v.verify(note.text, sig.signature):
            raise TlogError(f"bad signature by key {sig.name}+{sig.key_id:08x}")
        if not any(s.name == sig.name and s.key_id == sig.key_id for s in verified):
            verified.append(sig)
    if not verified:
        names = ", ".join(sorted({f"{s.name}+{s.key_id:08x}" for s in note.signatures}))
        raise TlogError(f"note has no signature by a known key (it is signed by {names})")
    return OpenedNote(note.text, tuple(verified), tuple(unverified))


def sign_note(note: Note | str, *signers: NoteSigner, timestamp: int | None = None) -> str:
    """The signed note of ``note`` (a text, or a parsed note whose signatures are kept) with a signature
    by each signer added; an existing signature by the same key (name and key ID) is replaced, as Go's
    note.Sign does. ``timestamp`` is for cosigners (each gets the same)."""
    if isinstance(note, str):
        note = Note(note)
    if not signers:
        raise TlogError("no signer to sign the note with")
    new = [s.sign(note.text, timestamp if s.sig_type == SIG_COSIGNATURE_V1 else None) for s in signers]
    replaced = {(s.name, s.key_id) for s in new}
    kept = [s for s in note.signatures if (s.name, s.key_id) not in replaced]
    return format_note(Note(note.text, (*kept, *new)))


def _ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != ED25519_SIG_SIZE:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def _check_timestamp(timestamp: object) -> None:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise TlogError("cosignature timestamp is not an integer")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise TlogError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _shown(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")
