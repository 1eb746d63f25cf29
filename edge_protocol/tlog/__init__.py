"""edgeseal's transparency log, the pure core: RFC 6962 / RFC 9162 Merkle trees with SHA-256, and the
C2SP formats that publish them — tlog-checkpoint, signed-note (Ed25519), tlog-cosignature (Ed25519
v1) and tlog-tiles. No I/O: a store is passed in as a :class:`HashReader`, keys as values. Every
refusal is a :class:`~edge_protocol.errors.TlogError` whose message names what is wrong.

- :mod:`.merkle` — hashing, the stored-hash layout, inclusion and consistency proofs
- :mod:`.note` — signed notes, verifier and signer keys, cosignature signing and verifying
- :mod:`.checkpoint` — the checkpoint body, signing, opening, cosigning
- :mod:`.tiles` — tile paths, new tiles, tile bytes, entry bundles

docs/log.md describes the formats as implemented, with a worked example.
"""

from __future__ import annotations

from edge_protocol.errors import TlogError
from edge_protocol.tlog.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    cosignature_line,
    open_checkpoint,
    open_cosigned,
    parse_checkpoint,
    sign_checkpoint,
)
from edge_protocol.tlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MAX_TREE_SIZE,
    HashReader,
    check_record,
    check_tree,
    consistency_proof_size,
    hash_from_base64,
    hash_to_base64,
    inclusion_proof_size,
    leaf_hash,
    merkle_tree_hash,
    node_hash,
    prove_record,
    prove_tree,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_record,
    tree_hash,
)
from edge_protocol.tlog.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    OpenedNote,
    check_key_name,
    cosignature_message,
    format_note,
    key_id,
    open_note,
    parse_note,
    sign_note,
)
from edge_protocol.tlog.tiles import (
    ENTRY_BUNDLE,
    TILE_WIDTH,
    Tile,
    entry_bundle,
    new_entry_bundles,
    new_tiles,
    parse_entry_bundle,
    parse_hash_tile,
    parse_tile_path,
    read_tile,
)

__all__ = [
    "EMPTY_ROOT",
    "ENTRY_BUNDLE",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "TILE_WIDTH",
    "Checkpoint",
    "HashReader",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "OpenedNote",
    "Tile",
    "TlogError",
    "check_key_name",
    "check_record",
    "check_tree",
    "consistency_proof_size",
    "cosign_checkpoint",
    "cosignature_line",
    "cosignature_message",
    "entry_bundle",
    "format_note",
    "hash_from_base64",
    "hash_to_base64",
    "inclusion_proof_size",
    "key_id",
    "leaf_hash",
    "merkle_tree_hash",
    "new_entry_bundles",
    "new_tiles",
    "node_hash",
    "open_checkpoint",
    "open_cosigned",
    "open_note",
    "parse_checkpoint",
    "parse_entry_bundle",
    "parse_hash_tile",
    "parse_note",
    "parse_tile_path",
    "prove_record",
    "prove_tree",
    "read_tile",
    "sign_checkpoint",
    "sign_note",
    "split_stored_hash_index",
    "stored_hash_count",
    "stored_hash_index",
    "stored_hashes_for_record",
    "tree_hash",
]
