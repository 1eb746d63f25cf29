"""C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint) and its cosignatures (c2sp.org/tlog-cosignature).

A checkpoint is the text of a signed note::

    <origin>               non-empty; the log's identity (its key name SHOULD be the same)
    <tree size>            ASCII decimal, no leading zero (the empty tree is "0")
    <root hash>            standard base64 of the 32-byte RFC 6962 root hash
    [<extension line>...]  optional, each non-empty

every line ending in a newline, and no other line. Parsing is strict: anything else — a blank line, a
"+5" or "007" size, base64 that is not canonical, a missing final newline — is a :class:`TlogError`.
Sizes above 2^63-1 are refused (:data:`~edge_protocol.tlog.merkle.MAX_TREE_SIZE`).

A cosignature (tlog-cosignature, Ed25519 v1) is a note signature of type 0x04 on the checkpoint:
key ID over the type byte 0x04, signature = u64 timestamp ‖ Ed25519 over
``"cosignature/v1\\ntime <timestamp>\\n" ‖ checkpoint text``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edge_protocol.errors import TlogError
from edge_protocol.tlog.merkle import HASH_SIZE, MAX_TREE_SIZE, hash_from_base64, hash_to_base64
from edge_protocol.tlog.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    NoteSigner,
    NoteVerifier,
    OpenedNote,
    check_note_text,
    open_note,
    parse_note,
    sign_note,
)

_SIZE = re.compile("0|[1-9][0-9]{0,18}")  # no leading zero; 19 digits hold 2^63-1
_CONTROL = re.compile("[\x00-\x1f]")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise TlogError("checkpoint origin is empty")
        if _CONTROL.search(self.origin):
            raise TlogError("checkpoint origin contains a newline or control character")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise TlogError("checkpoint tree size is not an integer in 0..2^63-1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise TlogError(f"checkpoint root hash is not {HASH_SIZE} bytes")
        for line in self.extensions:
            if not isinstance(line, str) or not line:
                raise TlogError("checkpoint extension line is empty")
            if _CONTROL.search(line):
                raise TlogError("checkpoint extension line contains a newline or control character")

    def text(self) -> str:
        """The checkpoint body: the note text, every line ending in a newline."""
        lines = [self.origin, str(self.size), hash_to_base64(self.root_hash), *self.extensions]
        return check_note_text("".join(line + "\n" for line in lines))


def parse_checkpoint(text: str | bytes) -> Checkpoint:
    """The checkpoint in a note text (the body only, without signatures)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise TlogError("checkpoint is not valid UTF-8") from None
    if not isinstance(text, str):
        raise TlogError("checkpoint is neither text nor bytes")
    if not text.endswith("\n"):
        raise TlogError("checkpoint does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise TlogError(f"checkpoint has {len(lines)} lines, not at least 3 (origin, size, root hash)")
    origin, size, root, *extensions = lines
    if not origin:
        raise TlogError("checkpoint origin line is empty")
    if not _SIZE.fullmatch(size):
        raise TlogError(f"checkpoint tree size {size[:40]!r} is not a decimal number without leading zeroes")
    if int(size) > MAX_TREE_SIZE:
        raise TlogError(f"checkpoint tree size {size} is larger than 2^63-1")
    root_hash = hash_from_base64(root, "checkpoint root hash")
    for i, line in enumerate(extensions):
        if not line:
            raise TlogError(f"checkpoint line {4 + i} is empty")
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The checkpoint as a signed note, signed by the log's Ed25519 key."""
    if signer.sig_type != SIG_ED25519:
        raise TlogError("a log signs its checkpoints with an Ed25519 (type 0x01) key")
    return sign_note(checkpoint.text(), signer)


def open_checkpoint(
    msg: str | bytes, log_keys: NoteVerifier | Iterable[NoteVerifier], origin: str | None = None
) -> Checkpoint:
    """The checkpoint in signed note ``msg``, verified with the log's key(s). ``origin`` is the origin
    expected (by default the name of the first log key, which SHOULD be the origin). Other signatures,
    cosignatures included, are ignored here: check them with :func:`open_cosigned`."""
    keys = [log_keys] if isinstance(log_keys, NoteVerifier) else list(log_keys)
    if not keys:
        raise TlogError("no log key to verify the checkpoint with")
    opened = open_note(msg, keys)
    checkpoint = parse_checkpoint(opened.text)
    expected = keys[0].name if origin is None else origin
    if checkpoint.origin != expected:
        raise TlogError(f"checkpoint is for origin {checkpoint.origin!r}, expected {expected!r}")
    return checkpoint


def cosign_checkpoint(msg: str | bytes, cosigner: NoteSigner, timestamp: int) -> str:
    """``msg`` (a signed checkpoint) with a cosignature v1 by ``cosigner`` at ``timestamp`` (POSIX
    seconds) added, replacing an earlier one by the same key. This only signs: checking the log's
    signature and the consistency with what was cosigned before is the witness's job, first."""
    if cosigner.sig_type != SIG_COSIGNATURE_V1:
        cosigner = cosigner.as_cosigner()
    note = parse_note(msg)
    parse_checkpoint(note.text)  # a cosignature is a statement about a checkpoint, nothing else
    return sign_note(note, cosigner, timestamp=timestamp)


def cosignature_line(msg: str | bytes, cosigner: NoteSigner, timestamp: int) -> str:
    """Only the cosignature line a witness returns (tlog-witness: a response body of signature lines)."""
    if cosigner.sig_type != SIG_COSIGNATURE_V1:
        cosigner = cosigner.as_cosigner()
    note = parse_note(msg)
    parse_checkpoint(note.text)
    return cosigner.sign(note.text, timestamp).line()


def open_cosigned(
    msg: str | bytes, log_keys: NoteVerifier | Iterable[NoteVerifier], witnesses: Iterable[NoteVerifier]
) -> tuple[Checkpoint, OpenedNote]:
    """The checkpoint in ``msg`` verified with the log's key(s), and the note opened with the log's and
    the witnesses' keys: ``.verified`` holds each valid signature by a known key (a known witness whose
    signature fails refuses the note, as signed-note requires). Counting a quorum is the caller's."""
    keys = [log_keys] if isinstance(log_keys, NoteVerifier) else list(log_keys)
    checkpoint = open_checkpoint(msg, keys)
    witness_keys = list(witnesses)
    for w in witness_keys:
        if w.sig_type != SIG_COSIGNATURE_V1:
            raise TlogError(f"witness key {w.name!r} is not a cosignature v1 (type 0x04) key")
    return checkpoint, open_note(msg, [*keys, *witness_keys])
