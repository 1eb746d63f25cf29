"""RFC 6962 / RFC 9162 Merkle tree hashing with SHA-256, the stored-hash layout, and proofs.

Hashing (RFC 9162 §2.1.1, identical to RFC 6962 §2.1):

    MTH({})        = SHA-256()
    leaf hash      = SHA-256(0x00 ‖ leaf data)
    node hash      = SHA-256(0x01 ‖ left ‖ right)
    MTH(D[0:n])    = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two smaller than n

Stored hashes (the layout of Go's golang.org/x/mod/sumdb/tlog, from Crosby and Wallach §3.3): a log
keeps, for every *complete* subtree, its hash at coordinates (level, index) — the subtree of the
2**level leaves starting at leaf index * 2**level — in one dense sequence numbered by
:func:`stored_hash_index`. Appending leaf n adds the hashes of the subtrees that leaf completes,
1 + (trailing one bits of n) of them, 2 per leaf on average, at consecutive numbers starting at
``stored_hash_index(0, n)`` (:func:`stored_hashes_for_record`). Every tree hash and proof of any tree
size is then a fold of O(log n) stored hashes (:func:`tree_hash`, :func:`prove_record`,
:func:`prove_tree`), each read in one call of the caller's :class:`HashReader`.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step, after a
check of the inputs (sizes, hash lengths, proof length) so that a wrong proof is refused with a
message that names what is wrong. Nothing here does I/O: the store is passed in as a function.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Protocol

from edge_protocol.errors import TlogError

HASH_SIZE = 32  # SHA-256, the hash tlog-tiles and tlog-checkpoint fix for RFC 6962 trees
# Tree sizes and leaf indexes fit an int64, as in Go's sumdb/tlog and every tlog-checkpoint
# consumer we know of; a larger size in a checkpoint or proof is refused.
MAX_TREE_SIZE = 2**63 - 1
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: the hash of the empty tree

_LEAF_PREFIX = b"\x00"  # RFC 9162 §2.1.1 domain separation
_NODE_PREFIX = b"\x01"


class HashReader(Protocol):
    """Reads stored hashes: given stored-hash numbers (:func:`stored_hash_index`), returns the 32-byte
    hashes at those numbers, in the same order. Called once per tree hash or proof."""

    def __call__(self, indexes: Sequence[int], /) -> Sequence[bytes]: ...


def leaf_hash(data: bytes) -> bytes:
    """The leaf hash of ``data``: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def merkle_tree_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the leaves with these leaf hashes, computed from all of them (O(n)): the full
    recomputation an audit compares the stored hashes with."""
    # A stack of complete subtrees, largest first (a compact range); folding it from the right gives
    # RFC 9162's split at the largest power of two below n.
    stack: list[tuple[int, bytes]] = []  # (level, hash)
    for i, h in enumerate(leaf_hashes):
        _check_hash(h, f"leaf hash {i}")
        level, node = 0, bytes(h)
        while stack and stack[-1][0] == level:
            node = node_hash(stack.pop()[1], node)
            level += 1
        stack.append((level, node))
    if not stack:
        return EMPTY_ROOT
    root = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        root = node_hash(left, root)
    return root


# --- stored hashes -----------------------------------------------------------------------------------


def stored_hash_index(level: int, n: int) -> int:
    """The number, in the dense stored-hash sequence, of the hash of complete subtree ``n`` at ``level``
    (leaves n * 2**level to (n + 1) * 2**level - 1).

    Level ``level``'s n-th hash is stored right after level ``level + 1``'s (2n + 1)-th, which brings
    any coordinate down to level 0's m = (n + 1) * 2**level - 1; level 0's m-th hash is at
    m + m/2 + m/4 + ... = 2m - popcount(m), and the ``level`` hashes completed with it follow.
    """
    if level < 0 or n < 0:
        raise TlogError(f"stored hash coordinates ({level}, {n}) are negative")
    m = ((n + 1) << level) - 1
    return 2 * m - m.bit_count() + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The (level, n) of stored hash number ``index``: the inverse of :func:`stored_hash_index`."""
    if index < 0:
        raise TlogError(f"stored hash number {index} is negative")
    # stored_hash_index(0, n) <= 2n, so the leaf whose append wrote ``index`` is at least index / 2,
    # and at most log2(index) further on.
    n = index // 2
    at = stored_hash_index(0, n)
    while True:
        following = at + 1 + _trailing_ones(n)  # leaf n writes 1 + trailing_ones(n) hashes
        if following > index:
            break
        n += 1
        at = following
    level = index - at
    return level, n >> level


def stored_hash_count(size: int) -> int:
    """How many stored hashes a tree of ``size`` leaves has."""
    _check_size(size, "tree size")
    if size == 0:
        return 0
    return stored_hash_index(0, size - 1) + 1 + _trailing_ones(size - 1)


def stored_hashes_for_record(n: int, record_hash: bytes, read_hashes: HashReader) -> list[bytes]:
    """The hashes a store appends when leaf ``n`` (0-based) with leaf hash ``record_hash`` is added:
    the leaf hash, then the hash of each subtree it completes, to be stored at consecutive numbers
    starting at ``stored_hash_index(0, n)``. Reads the left siblings of those subtrees (one per
    trailing one bit of n) in one call."""
    _check_size(n, "leaf index")
    _check_hash(record_hash, "leaf hash")
    completed = _trailing_ones(n)
    # the left sibling of the subtree at level i that leaf n completes is subtree (n >> i) - 1, whose
    # index n >> i is odd; listed from the highest level down so the numbers increase
    indexes = [stored_hash_index(i, (n >> i) - 1) for i in reversed(range(completed))]
    siblings = read_stored(read_hashes, indexes)
    hashes = [bytes(record_hash)]
    h = hashes[0]
    for i in range(completed):
        h = node_hash(siblings[completed - 1 - i], h)
        hashes.append(h)
    return hashes


def tree_hash(size: int, read_hashes: HashReader) -> bytes:
    """MTH of the first ``size`` leaves, from at most 1 + log2(size) stored hashes."""
    _check_size(size, "tree size")
    if size == 0:
        return EMPTY_ROOT
    parts = _complete_subtrees(0, size)
    hashes = read_stored(read_hashes, [stored_hash_index(level, k) for level, k in parts])
    return _fold_right(hashes)


def prove_record(size: int, n: int, read_hashes: HashReader) -> tuple[bytes, ...]:
    """The inclusion proof (RFC 9162 §2.1.3.1, PATH(n, D[0:size])) of leaf ``n`` in the tree of
    ``size`` leaves: sibling hashes from the leaf up to the root, read in one call."""
    _check_size(size, "tree size")
    _check_size(n, "leaf index")
    if n >= size:
        raise TlogError(f"leaf index {n} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []  # sibling leaf ranges, root first
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if n < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return _range_hashes(ranges, read_hashes)


def prove_tree(size: int, old_size: int, read_hashes: HashReader) -> tuple[bytes, ...]:
    """The consistency proof (RFC 9162 §2.1.4.1, PROOF(old_size, D[0:size])) that the tree of
    ``old_size`` leaves is a prefix of the tree of ``size`` leaves, read in one call. Empty when the
    sizes are equal."""
    _check_size(size, "new tree size")
    _check_size(old_size, "old tree size")
    if not 0 < old_size <= size:
        raise TlogError(f"no consistency proof from tree size {old_size} to {size}: need 0 < old <= new")
    ranges: list[tuple[int, int]] = []  # root first
    lo, hi = 0, size
    # SUBPROOF(m, D[lo:hi], b): walk down until the old tree's edge is a subtree boundary
    while old_size != hi:
        k = _split(hi - lo)
        if old_size <= lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    if lo != 0:  # b is false: the verifier does not know this subtree's hash
        ranges.append((lo, hi))
    ranges.reverse()
    return _range_hashes(ranges, read_hashes)


# --- verification ------------------------------------------------------------------------------------


def inclusion_proof_size(size: int, n: int) -> int:
    """How many hashes the inclusion proof of leaf ``n`` in a tree of ``size`` leaves has."""
    inner = (n ^ (size - 1)).bit_length()  # levels below the point where n's path leaves the right edge
    return inner + (n >> inner).bit_count()


def consistency_proof_size(size: int, old_size: int) -> int:
    """How many hashes the consistency proof from ``old_size`` (0 < old_size < size) to ``size`` has."""
    shift = _trailing_zeros(old_size)  # the old tree's last complete subtree has 2**shift leaves
    # the path of leaf old_size - 1 in the new tree: `inner` levels below where it meets the new
    # tree's right edge, then `border` left siblings on that edge (as in inclusion_proof_size)
    inner = ((old_size - 1) ^ (size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    known = old_size == 1 << shift  # a power of two: its hash is the old root, not sent
    return (0 if known else 1) + (inner - shift) + border


def check_record(proof: Sequence[bytes], size: int, root: bytes, n: int, record_hash: bytes) -> None:
    """Check that ``proof`` proves the leaf hash ``record_hash`` at index ``n`` of the tree of ``size``
    leaves whose root hash is ``root`` (RFC 9162 §2.1.3.2). Raises :class:`TlogError` if not."""
    _check_size(size, "tree size")
    _check_size(n, "leaf index")
    if n >= size:
        raise TlogError(f"leaf index {n} is not in a tree of size {size}")
    _check_hash(root, "root hash")
    _check_hash(record_hash, "leaf hash")
    path = _check_proof(
        proof, inclusion_proof_size(size, n), f"inclusion proof of leaf {n} in tree size {size}"
    )
    # RFC 9162 §2.1.3.2, steps 2-5
    fn, sn = n, size - 1
    r = record_hash
    for p in path:
        if sn == 0:
            raise TlogError(f"inclusion proof of leaf {n} in tree size {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise TlogError(f"inclusion proof of leaf {n} in tree size {size} is truncated")
    if r != root:
        raise TlogError(f"inclusion proof of leaf {n} does not lead to the root hash of tree size {size}")


def check_tree(proof: Sequence[bytes], size: int, root: bytes, old_size: int, old_root: bytes) -> None:
    """Check that ``proof`` proves the tree of ``old_size`` leaves with root hash ``old_root`` a prefix
    of the tree of ``size`` leaves with root hash ``root`` (RFC 9162 §2.1.4.2). Raises
    :class:`TlogError` if not: a shrinking size, and equal sizes with different roots, included."""
    _check_size(size, "new tree size")
    _check_size(old_size, "old tree size")
    _check_hash(root, "new root hash")
    _check_hash(old_root, "old root hash")
    if old_size > size:
        raise TlogError(f"tree size {size} is smaller than the earlier tree size {old_size}")
    if old_size == 0:
        # RFC 9162 §2.1.4 defines proofs for 0 < m only; the transparency-dev vectors refuse size 0 too
        raise TlogError("no consistency proof from the empty tree: old tree size is 0")
    if old_size == size:
        _check_proof(proof, 0, f"consistency proof between two trees of size {size}")
        if root != old_root:
            raise TlogError(f"two different root hashes for the same tree size {size}")
        return
    what = f"consistency proof from tree size {old_size} to {size}"
    path = list(_check_proof(proof, consistency_proof_size(size, old_size), what))
    # RFC 9162 §2.1.4.2
    if not path:  # step 1
        raise TlogError(f"{what} is empty")
    if old_size & (old_size - 1) == 0:  # step 2: old size is a power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise TlogError(f"{what} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise TlogError(f"{what} is truncated")
    if fr != old_root:
        raise TlogError(f"{what} does not lead to the old root hash")
    if sr != root:
        raise TlogError(f"{what} does not lead to the new root hash")


# --- base64, as the tlog specs write hashes ---------------------------------------------------------


def hash_to_base64(h: bytes) -> str:
    """A hash in standard base64 with padding (RFC 4648 §4), as checkpoints and proofs write it."""
    _check_hash(h, "hash")
    return base64.b64encode(h).decode("ascii")


def hash_from_base64(text: str, what: str = "hash") -> bytes:
    """A 32-byte hash from standard, padded, canonical base64; anything else is a :class:`TlogError`."""
    if not isinstance(text, str):
        raise TlogError(f"{what} is not a base64 string")
    raw = strict_b64decode(text, what)
    if len(raw) != HASH_SIZE:
        raise TlogError(f"{what} is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


def strict_b64decode(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4) with padding and nothing else: no whitespace, no URL alphabet,
    and canonical (re-encoding gives the same text), so that one value has one spelling."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise TlogError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise TlogError(f"{what} is not canonical base64")
    return raw


# --- internals ----------------------------------------------------------------------------------------


def _check_size(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TlogError(f"{what} is not an integer")
    if not 0 <= value <= MAX_TREE_SIZE:
        raise TlogError(f"{what} {value} is outside 0..2^63-1")


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise TlogError(f"{what} is not bytes")
    if len(value) != HASH_SIZE:
        raise TlogError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof(proof: object, expected: int, what: str) -> tuple[bytes, ...]:
    if not isinstance(proof, (list, tuple)):
        raise TlogError(f"{what} is not a list of hashes")
    if len(proof) < expected:
        raise TlogError(f"{what} is truncated: {len(proof)} hashes, expected {expected}")
    if len(proof) > expected:
        raise TlogError(f"{what} is too long: {len(proof)} hashes, expected {expected}")
    for i, h in enumerate(proof):
        _check_hash(h, f"hash {i} of the {what}")
    return tuple(bytes(h) for h in proof)


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n >= 2): RFC 9162 §2.1.1's split."""
    return 1 << ((n - 1).bit_length() - 1)


def _trailing_ones(n: int) -> int:
    return _trailing_zeros(n + 1)


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def _complete_subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """The complete subtrees (level, index) that make up leaves [lo, hi), largest first. For every range
    the RFC recursion produces, MTH(D[lo:hi]) is their right fold."""
    parts = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1  # the largest power of two <= hi - lo
        # lo is aligned to it in every range the recursion produces; keep shrinking if not
        while lo & ((1 << level) - 1):
            level -= 1
        parts.append((level, lo >> level))
        lo += 1 << level
    return parts


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def _range_hashes(ranges: list[tuple[int, int]], read_hashes: HashReader) -> tuple[bytes, ...]:
    """MTH of each leaf range, from one read of all the complete subtrees they are made of."""
    parts = [_complete_subtrees(lo, hi) for lo, hi in ranges]
    indexes = [stored_hash_index(level, k) for p in parts for level, k in p]
    hashes = read_stored(read_hashes, indexes)
    out = []
    at = 0
    for p in parts:
        out.append(_fold_right(hashes[at : at + len(p)]))
        at += len(p)
    return tuple(out)


def read_stored(read_hashes: HashReader, indexes: list[int]) -> list[bytes]:
    """``read_hashes(indexes)``, checked: one 32-byte hash for each number asked (none asked, no call)."""
    if not indexes:
        return []
    got = list(read_hashes(indexes))
    if len(got) != len(indexes):
        raise TlogError(f"the hash store returned {len(got)} hashes for {len(indexes)} stored-hash numbers")
    for i, h in zip(indexes, got, strict=True):
        _check_hash(h, f"stored hash {i}")
    return [bytes(h) for h in got]
