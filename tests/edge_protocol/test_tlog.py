"""edge_protocol.tlog: published vectors (RFC 6962 via transparency-dev/merkle, Go sumdb/note, C2SP
specs), a model check of the stored-hash layout against full recomputation, property tests of the
proofs (every generated proof verifies; any single change is refused), and hostile input."""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_protocol.errors import ProtocolError, TlogError
from edge_protocol.tlog import (
    EMPTY_ROOT,
    ENTRY_BUNDLE,
    MAX_TREE_SIZE,
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    TILE_WIDTH,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    Tile,
    check_record,
    check_tree,
    cosign_checkpoint,
    cosignature_line,
    cosignature_message,
    entry_bundle,
    hash_from_base64,
    leaf_hash,
    merkle_tree_hash,
    new_entry_bundles,
    new_tiles,
    node_hash,
    open_checkpoint,
    open_cosigned,
    open_note,
    parse_checkpoint,
    parse_entry_bundle,
    parse_hash_tile,
    parse_note,
    parse_tile_path,
    prove_record,
    prove_tree,
    read_tile,
    sign_checkpoint,
    sign_note,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_record,
    tree_hash,
)
from edge_protocol.tlog.note import MAX_NOTE_SIZE, MAX_SIGNATURES
from edge_protocol.tlog.tiles import MAX_ENTRY_SIZE, MAX_TILE_LEVEL
from tests._vectors import load, vector_files

VECTORS = load(vector_files("tlog.json")[-1])


def b64(s: str) -> bytes:
    return base64.b64decode(s)


class Store:
    """An in-memory hash store: the stored-hash sequence, and a count of the hashes read."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.hashes: list[bytes] = []
        self.leaf_hashes: list[bytes] = []
        self.reads: list[int] = []
        for data in leaves:
            self.append(data)

    def read(self, indexes: Sequence[int]) -> list[bytes]:
        self.reads.append(len(indexes))
        return [self.hashes[i] for i in indexes]

    def append(self, data: bytes) -> None:
        n = len(self.leaf_hashes)
        assert len(self.hashes) == stored_hash_index(0, n)
        h = leaf_hash(data)
        self.hashes += stored_hashes_for_record(n, h, self.read)
        self.leaf_hashes.append(h)


# --- naive RFC 9162 §2.1 definitions, from all the leaves ---------------------------------------


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(leaves: tuple[bytes, ...]) -> bytes:
    @functools.cache
    def mth(lo: int, hi: int) -> bytes:
        if hi == lo:
            return EMPTY_ROOT
        if hi - lo == 1:
            return leaves[lo]
        k = _split(hi - lo)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    return mth(0, len(leaves))


def naive_path(m: int, leaves: tuple[bytes, ...]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_mth(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: tuple[bytes, ...], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if b else [naive_mth(leaves)]
    k = _split(n)
    if m <= k:
        return [*naive_subproof(m, leaves[:k], b), naive_mth(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_mth(leaves[:k])]


def path_shape(n: int, size: int) -> list[str]:
    """The sides of the siblings on leaf n's path (bottom up): what a verifier computes, hashes aside."""
    if size == 1:
        return []
    k = _split(size)
    return [*path_shape(n, k), "R"] if n < k else [*path_shape(n - k, size - k), "L"]


def tree_shape(m: int, size: int, known: bool = True) -> tuple[bool, list[str]]:
    """Whether a consistency proof starts from the old root, and the sides of its nodes."""
    if m == size:
        return known, []
    k = _split(size)
    if m <= k:
        start, sides = tree_shape(m, k, known)
        return start, [*sides, "R"]
    start, sides = tree_shape(m - k, size - k, False)
    return start, [*sides, "L"]


def leaves_of(n: int, salt: int = 0) -> list[bytes]:
    return [f"{salt}/{i}".encode() for i in range(n)]


# --- published vectors ----------------------------------------------------------------------------


def test_vector_sources_are_named() -> None:
    for name, section in VECTORS.items():
        if name != "about":
            assert section["source"], name


def test_rfc6962_hasher_vectors() -> None:
    v = VECTORS["rfc6962_hasher"]
    assert EMPTY_ROOT.hex() == v["empty_root_hex"] == merkle_tree_hash([]).hex()
    for leaf in v["leaves"]:
        assert leaf_hash(bytes.fromhex(leaf["data_hex"])).hex() == leaf["hash_hex"]
    for node in v["nodes"]:
        assert (
            node_hash(bytes.fromhex(node["left_hex"]), bytes.fromhex(node["right_hex"])).hex()
            == node["hash_hex"]
        )


def test_rfc6962_reference_tree_stored_hashes_and_roots() -> None:
    v = VECTORS["rfc6962_tree"]
    store = Store([bytes.fromhex(x) for x in v["leaves_hex"]])
    for level, hashes in enumerate(v["node_hashes_hex"]):
        for k, h in enumerate(hashes):
            assert store.hashes[stored_hash_index(level, k)].hex() == h
    for size, root in enumerate(v["roots_hex"]):
        assert tree_hash(size, store.read).hex() == root
        assert merkle_tree_hash(store.leaf_hashes[:size]).hex() == root


def _reference_store() -> Store:
    return Store([bytes.fromhex(x) for x in VECTORS["rfc6962_tree"]["leaves_hex"]])


@pytest.mark.parametrize("probe", VECTORS["inclusion_probes"]["probes"], ids=lambda p: p["file"])
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    proof = [b64(h) for h in probe["proof"]]
    args = (proof, probe["treeSize"], b64(probe["root"]), probe["leafIdx"], b64(probe["leafHash"]))
    if probe["wantErr"]:
        with pytest.raises(TlogError):
            check_record(*args)
    else:
        check_record(*args)
        # the reference tree's proofs, generated from stored hashes, are the published ones
        assert list(prove_record(probe["treeSize"], probe["leafIdx"], _reference_store().read)) == proof


@pytest.mark.parametrize("probe", VECTORS["consistency_probes"]["probes"], ids=lambda p: p["file"])
def test_consistency_probe(probe: dict[str, Any]) -> None:
    proof = [b64(h) for h in probe["proof"]]
    args = (proof, probe["size2"], b64(probe["root2"]), probe["size1"], b64(probe["root1"]))
    differs = probe["file"] in VECTORS["consistency_probes"]["edgeseal_differs"]
    if probe["wantErr"] or differs:
        with pytest.raises(TlogError):
            check_tree(*args)
    else:
        check_tree(*args)
        assert list(prove_tree(probe["size2"], probe["size1"], _reference_store().read)) == proof


def test_go_tree_note_is_a_checkpoint_body() -> None:
    v = VECTORS["go_tree_note"]
    cp = parse_checkpoint(v["text"])
    assert cp == Checkpoint("go.sum database tree", v["size"], leaf_hash(bytes.fromhex(v["record_data_hex"])))
    assert cp.text() == v["text"]


def test_go_signed_note_vectors() -> None:
    v = VECTORS["signed_note_go"]
    peter = NoteSigner.parse(v["peter_skey"])
    assert peter.skey() == v["peter_skey"]
    assert peter.verifier().vkey() == v["peter_vkey"]
    peter_v = NoteVerifier.parse(v["peter_vkey"])
    enoch_v = NoteVerifier.parse(v["enoch_vkey"])
    assert peter_v == peter.verifier()
    text, psig, esig = v["text"], v["peter_sig_line"], v["enoch_sig_line"]
    # Ed25519 is deterministic: signing gives the published note exactly
    assert sign_note(text, peter) == text + "\n" + psig
    one = open_note(text + "\n" + psig + esig, [peter_v])
    assert one.text == text
    assert [s.name for s in one.verified] == ["PeterNeumann"]
    assert [s.name for s in one.unverified] == ["EnochRoot"]
    both = open_note(text + "\n" + psig + esig, [peter_v, enoch_v])
    assert [s.name for s in both.verified] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(TlogError, match="no signature by a known key"):
        open_note(text + "\n" + psig + esig, [])
    with pytest.raises(TlogError, match="bad signature by key PeterNeumann"):
        open_note(text + "\n" + psig[:60] + "ABCD" + psig[60:], [peter_v])
    with pytest.raises(TlogError, match="more than 100 signatures"):
        open_note(text + "\n" + psig * (MAX_SIGNATURES + 1), [peter_v])
    # a signature by an unknown key that shares the name is ignored, as is one sharing the key ID
    other = NoteSigner.generate("PeterNeumann").verifier()
    with pytest.raises(TlogError, match="no signature by a known key"):
        open_note(text + "\n" + psig, [other])
    # Go's malformed notes (TestOpen)
    for bad in (
        text,
        text + "\n",
        text + "\n" + psig[:-1],
        "\x01" + text + "\n" + psig,
        (text + "\n" + psig).encode() + b"\xff",
        text + "\n" + psig.replace("PeterNeumann", "Bad Name")[:-1],
        text + "\n" + psig + "Unexpected line.\n",
    ):
        with pytest.raises(TlogError):
            open_note(bad, [peter_v])
    for bad_key in v["bad_vkeys"].values():
        with pytest.raises(TlogError):
            NoteVerifier.parse(bad_key)


def test_go_key_manglings_are_refused() -> None:
    """Go's TestNewVerifier/TestNewSigner: every strict substring and every one-byte change is refused."""
    for key, parse in ((VECTORS["signed_note_go"]["peter_vkey"], NoteVerifier.parse),):
        for i in range(len(key)):
            for j in range(i + 1, len(key) + 1):
                if (i, j) != (0, len(key)):
                    with pytest.raises(TlogError):
                        parse(key[i:j])
    skey = VECTORS["signed_note_go"]["peter_skey"]
    for i in range(len(skey)):
        mangled = skey[:i] + chr(ord(skey[i]) + 1) + skey[i + 1 :]
        with pytest.raises(TlogError):
            NoteSigner.parse(mangled)
        with pytest.raises(TlogError):
            NoteSigner.parse(skey[:i])


def test_c2sp_signed_note_vectors() -> None:
    v = VECTORS["signed_note_c2sp"]
    key = NoteVerifier.parse(v["vkey"])
    assert key.vkey() == v["vkey"]
    assert f"{key.key_id:08x}" == v["vkey"].split("+")[1]
    opened = open_note(v["note"], [key])
    assert opened.text == "This is an example message.\n"
    # the opening example: a text with a blank line inside; its key is not published
    note = parse_note(v["unknown_key_note"])
    assert note.text.count("\n\n") == 1
    assert note.signatures[0].name == "quasimodo.example/salvatore"
    with pytest.raises(TlogError, match="no signature by a known key"):
        open_note(v["unknown_key_note"], [key])


def test_c2sp_checkpoint_example() -> None:
    v = VECTORS["checkpoint_c2sp"]
    cp = parse_checkpoint(v["body"])
    assert (cp.origin, cp.size, cp.root_hash) == (v["origin"], v["size"], b64(v["root_base64"]))
    assert cp.text() == v["body"]
    note = parse_note(v["body"] + "\n" + v["log_signature_line"])
    assert note.text == v["body"]
    someone = NoteSigner.generate(v["origin"]).verifier()  # the example's key is not published
    with pytest.raises(TlogError, match="no signature by a known key"):
        open_checkpoint(v["body"] + "\n" + v["log_signature_line"], someone)


def test_c2sp_cosignature_example() -> None:
    v = VECTORS["cosignature_c2sp"]
    body = VECTORS["checkpoint_c2sp"]["body"]
    note = parse_note(
        body + "\n" + VECTORS["checkpoint_c2sp"]["log_signature_line"] + v["witness_signature_line"]
    )
    witness = note.signatures[1]
    assert witness.name == v["witness_name"]
    assert f"{witness.key_id:08x}" == v["key_id_hex"]
    assert witness.timestamp == v["timestamp"]
    assert cosignature_message(body, v["timestamp"]).decode() == v["signed_message"]


def test_transparency_dev_cosignature_vectors() -> None:
    v = VECTORS["cosignature_formats"]
    w = NoteVerifier.parse(v["vkey_cosignature_v1"])
    assert w.sig_type == SIG_COSIGNATURE_V1
    assert w.vkey() == v["vkey_cosignature_v1"]
    e = NoteVerifier.parse(v["vkey_ed25519"])  # its base64 contains '+'
    assert e.sig_type == SIG_ED25519
    assert e.vkey() == v["vkey_ed25519"]
    for bad in v["bad_vkeys"].values():
        with pytest.raises(TlogError):
            NoteVerifier.parse(bad)
    raw = b64(v["timestamp_signature_base64"])
    sig = parse_note(f"x\n\n— w {v['timestamp_signature_base64']}\n").signatures[0]
    assert sig.signature == raw[4:]
    assert sig.timestamp == v["timestamp"]
    not_cosig = parse_note(f"x\n\n— w {v['not_a_cosignature_base64']}\n").signatures[0]
    with pytest.raises(TlogError, match="not an Ed25519 cosignature"):
        _ = not_cosig.timestamp


def test_c2sp_tile_examples() -> None:
    v = VECTORS["tiles_c2sp"]
    for t in v["index_paths"]:
        tile = Tile(t["level"], t["index"], t["width"])
        assert tile.path == t["path"]
        assert parse_tile_path(t["path"]) == tile
    tiles = new_tiles(0, 70000)
    s = v["size_70000"]
    assert sum(1 for t in tiles if t.level == 0 and t.width == TILE_WIDTH) == s["full_level0"]
    assert [t.width for t in tiles if t.level == 0 and t.width < TILE_WIDTH] == [s["partial_level0_width"]]
    assert sum(1 for t in tiles if t.level == 1 and t.width == TILE_WIDTH) == s["full_level1"]
    assert [t.width for t in tiles if t.level == 1 and t.width < TILE_WIDTH] == [s["partial_level1_width"]]
    assert [t.width for t in tiles if t.level == 2] == [s["partial_level2_width"]]
    assert new_tiles(0, 256) == [Tile(t["level"], t["index"], t["width"]) for t in v["size_256"]]


# --- the stored-hash layout against full recomputation -------------------------------------------


def test_stored_hash_layout_model_check() -> None:
    leaves = leaves_of(300)
    store = Store()
    for size in range(1, len(leaves) + 1):
        store.append(leaves[size - 1])
        assert len(store.hashes) == stored_hash_count(size)
        assert tree_hash(size, store.read) == naive_mth(tuple(store.leaf_hashes))
    lh = tuple(store.leaf_hashes)
    for i, h in enumerate(store.hashes):
        level, k = split_stored_hash_index(i)
        assert stored_hash_index(level, k) == i
        assert h == naive_mth(lh[k << level : (k + 1) << level])
    # tree hashes read at most 1 + log2(n) hashes, in one call
    store.reads.clear()
    tree_hash(len(leaves), store.read)
    assert store.reads == [bin(len(leaves)).count("1")]


def test_proofs_equal_the_rfc_definitions() -> None:
    store = Store(leaves_of(70, salt=1))
    lh = tuple(store.leaf_hashes)
    for t in range(1, len(lh) + 1):
        for n in range(t):
            assert list(prove_record(t, n, store.read)) == naive_path(n, lh[:t])
        for m in range(1, t + 1):
            assert list(prove_tree(t, m, store.read)) == naive_subproof(m, lh[:t], True)


def test_proof_generation_reads_log_n_hashes_in_one_call() -> None:
    store = Store(leaves_of(1000, salt=2))
    rng = random.Random(2)
    for _ in range(200):
        t = rng.randint(1, 1000)
        store.reads.clear()
        prove_record(t, rng.randrange(t), store.read)
        assert len(store.reads) <= 1
        assert sum(store.reads) <= 2 * t.bit_length()
        store.reads.clear()
        prove_tree(t, rng.randint(1, t), store.read)
        assert len(store.reads) <= 1
        assert sum(store.reads) <= 2 * t.bit_length()
    store.reads.clear()
    store.append(b"x")  # leaf 1000 = 0b1111101000: completes no subtree, reads nothing
    assert store.reads == []


def test_a_store_that_answers_wrongly_is_an_error() -> None:
    store = Store(leaves_of(10))
    with pytest.raises(TlogError, match="returned 1 hashes for"):
        tree_hash(10, lambda ix: [b"\x00" * 32])
    with pytest.raises(TlogError, match="is 3 bytes"):
        prove_record(10, 3, lambda ix: [b"abc"] * len(ix))
    with pytest.raises(TlogError):
        stored_hashes_for_record(3, store.leaf_hashes[3], lambda ix: [])


# --- property tests of the proofs -------------------------------------------------------------------

BIG = Store(leaves_of(300, salt=3))
BIG_ROOTS = [tree_hash(t, BIG.read) for t in range(301)]


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % 32] ^= 1 << (bit % 8)
    return bytes(b)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.data())
def test_inclusion_proofs_verify_and_any_change_is_refused(t: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, t - 1))
    proof = prove_record(t, n, BIG.read)
    root, h = BIG_ROOTS[t], BIG.leaf_hashes[n]
    check_record(proof, t, root, n, h)
    bit = data.draw(st.integers(0, 255))
    for i in range(len(proof)):
        with pytest.raises(TlogError):
            check_record([*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]], t, root, n, h)
    with pytest.raises(TlogError):
        check_record(proof, t, _flip(root, bit), n, h)
    with pytest.raises(TlogError):
        check_record(proof, t, root, n, _flip(h, bit))
    if proof:
        with pytest.raises(TlogError, match="truncated"):
            check_record(proof[:-1], t, root, n, h)
    with pytest.raises(TlogError, match="too long"):
        check_record([*proof, root], t, root, n, h)
    other = data.draw(st.integers(0, 300))
    if other != n:
        with pytest.raises(TlogError):
            check_record(proof, t, root, other, h)
    # a proof does not always bind the tree size: one with the same path shape verifies the same way
    # (the signed checkpoint binds size and root together); any other size is refused
    size = data.draw(st.integers(1, 301))
    if size != t:
        if n < size and path_shape(n, size) == path_shape(n, t):
            check_record(proof, size, root, n, h)
        else:
            with pytest.raises(TlogError):
                check_record(proof, size, root, n, h)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_proofs_verify_and_any_change_is_refused(t: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, t))
    proof = prove_tree(t, m, BIG.read)
    new, old = BIG_ROOTS[t], BIG_ROOTS[m]
    check_tree(proof, t, new, m, old)
    bit = data.draw(st.integers(0, 255))
    for i in range(len(proof)):
        with pytest.raises(TlogError):
            check_tree([*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]], t, new, m, old)
    with pytest.raises(TlogError):
        check_tree(proof, t, _flip(new, bit), m, old)
    with pytest.raises(TlogError):
        check_tree(proof, t, new, m, _flip(old, bit))
    if proof:
        with pytest.raises(TlogError, match="truncated"):
            check_tree(proof[:-1], t, new, m, old)
    with pytest.raises(TlogError, match="too long"):
        check_tree([*proof, new], t, new, m, old)
    size, old_size = data.draw(st.integers(0, 301)), data.draw(st.integers(0, 301))
    if (size, old_size) != (t, m):
        # equal sizes take an empty proof and equal roots, whatever the size
        same = (0 < old_size == size and m == t) or (
            0 < old_size < size and 0 < m < t and tree_shape(old_size, size) == tree_shape(m, t)
        )
        if same:
            check_tree(proof, size, new, old_size, old)
        else:
            with pytest.raises(TlogError):
                check_tree(proof, size, new, old_size, old)


def test_consistency_edge_cases() -> None:
    root = BIG_ROOTS[5]
    check_tree([], 5, root, 5, root)
    with pytest.raises(TlogError, match="two different root hashes for the same tree size 5"):
        check_tree([], 5, root, 5, BIG_ROOTS[4])
    with pytest.raises(TlogError, match="smaller than the earlier tree size"):
        check_tree([], 4, BIG_ROOTS[4], 5, root)
    with pytest.raises(TlogError, match="empty tree"):
        check_tree([], 5, root, 0, EMPTY_ROOT)
    with pytest.raises(TlogError):
        prove_tree(5, 0, BIG.read)
    with pytest.raises(TlogError, match="not in a tree of size 5"):
        prove_record(5, 5, BIG.read)


@pytest.mark.parametrize(
    ("proof", "size", "index", "message"),
    [
        ("AAAA", 8, 0, "not a list"),
        (None, 8, 0, "not a list"),
        ([None, None, None], 8, 0, "is not bytes"),
        ([b"\x00" * 31] * 3, 8, 0, "31 bytes"),
        ([], 2**63, 0, r"outside 0\.\.2\^63-1"),
        ([], -1, 0, "outside"),
        ([], 8, -1, "outside"),
        ([], True, 0, "not an integer"),
        ([], 8.0, 0, "not an integer"),
        ([], 8, 8, "not in a tree of size 8"),
        ([b"\x00" * 32] * 10_000, 8, 0, "too long: 10000 hashes, expected 3"),
    ],
)
def test_hostile_proof_inputs_are_tlog_errors(proof: Any, size: Any, index: Any, message: str) -> None:
    with pytest.raises(TlogError, match=message):
        check_record(proof, size, BIG_ROOTS[8], index, BIG.leaf_hashes[0])


def test_tlog_error_is_a_protocol_error() -> None:
    assert issubclass(TlogError, ProtocolError)


# --- checkpoints, notes, cosignatures ---------------------------------------------------------------

LOG = NoteSigner("fleet.example/log", bytes(range(32)))
WITNESS = NoteSigner("witness.example/w1", bytes(range(1, 33))).as_cosigner()


def test_checkpoint_round_trip_and_signature() -> None:
    cp = Checkpoint(LOG.name, 300, BIG_ROOTS[300], ("extension one",))
    assert parse_checkpoint(cp.text()) == cp
    msg = sign_checkpoint(cp, LOG)
    assert open_checkpoint(msg, LOG.verifier()) == cp
    assert open_checkpoint(msg.encode(), [LOG.verifier()], origin=LOG.name) == cp
    with pytest.raises(TlogError, match=r"is for origin 'fleet\.example/log', expected 'other\.example/log'"):
        open_checkpoint(msg, LOG.verifier(), origin="other.example/log")
    forged = msg.replace("\n300\n", "\n301\n")
    with pytest.raises(TlogError, match=r"bad signature by key fleet\.example/log"):
        open_checkpoint(forged, LOG.verifier())
    with pytest.raises(TlogError, match="no signature by a known key"):
        open_checkpoint(msg, NoteSigner.generate(LOG.name).verifier())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("o\n1\n", "2 lines"),
        ("o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "newline"),
        ("\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "origin line is empty"),
        ("o\n01\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "leading zeroes"),
        ("o\n+1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "not a decimal"),
        ("o\n1 \n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "not a decimal"),
        ("o\n9223372036854775808\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", r"larger than 2\^63-1"),
        ("o\n" + "9" * 5000 + "\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "not a decimal"),
        ("o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\n", "not valid base64"),
        ("o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=\n", "not canonical"),
        ("o\n1\n47DEQpj8HBSa-_TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "not valid base64"),
        ("o\n1\nAAAA\n", "3 bytes, not 32"),
        ("o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n", "line 4 is empty"),
        ("o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\nx\n\n", "line 5 is empty"),
        (b"o\n1\n\xff\n", "not valid UTF-8"),
    ],
)
def test_malformed_checkpoints_are_refused(text: str | bytes, message: str) -> None:
    with pytest.raises(TlogError, match=message):
        parse_checkpoint(text)


def test_checkpoint_values_check_themselves() -> None:
    with pytest.raises(TlogError):
        Checkpoint("", 1, EMPTY_ROOT)
    with pytest.raises(TlogError):
        Checkpoint("o\nx", 1, EMPTY_ROOT)
    with pytest.raises(TlogError):
        Checkpoint("o", MAX_TREE_SIZE + 1, EMPTY_ROOT)
    with pytest.raises(TlogError):
        Checkpoint("o", 1, EMPTY_ROOT[:31])
    with pytest.raises(TlogError):
        Checkpoint("o", 1, EMPTY_ROOT, ("",))
    assert Checkpoint("origin with spaces", 0, EMPTY_ROOT).text().startswith("origin with spaces\n0\n")


def test_cosignature_round_trip() -> None:
    msg = sign_checkpoint(Checkpoint(LOG.name, 7, BIG_ROOTS[7]), LOG)
    cosigned = cosign_checkpoint(msg, WITNESS, 1_700_000_000)
    cp, opened = open_cosigned(cosigned, LOG.verifier(), [WITNESS.verifier()])
    assert cp.size == 7
    assert [s.name for s in opened.verified] == [LOG.name, WITNESS.name]
    assert opened.verified[1].timestamp == 1_700_000_000
    assert cosigned == msg + cosignature_line(msg, WITNESS, 1_700_000_000)
    # the cosigner's key ID is over type 0x04: the same key as an Ed25519 signer has another ID
    assert WITNESS.key_id != NoteSigner(WITNESS.name, WITNESS.seed).key_id
    assert NoteVerifier.parse(WITNESS.verifier().vkey()).sig_type == SIG_COSIGNATURE_V1
    # signing again replaces the earlier cosignature by the same key
    again = cosign_checkpoint(cosigned, WITNESS, 1_700_000_001)
    assert again.count(WITNESS.name) == 1
    # the timestamp is signed
    line = cosignature_line(msg, WITNESS, 1_700_000_000)
    raw = bytearray(b64(line.split(" ")[2].strip()))
    raw[11] ^= 1
    tampered = msg + f"— {WITNESS.name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(TlogError, match=r"bad signature by key witness\.example/w1"):
        open_cosigned(tampered, LOG.verifier(), [WITNESS.verifier()])
    # a witness signing anything but a checkpoint is refused
    with pytest.raises(TlogError):
        cosign_checkpoint(sign_note("not a checkpoint\n", LOG), WITNESS, 1)
    with pytest.raises(TlogError, match="needs a timestamp"):
        WITNESS.sign(msg.split("\n\n")[0] + "\n")
    with pytest.raises(TlogError, match=r"outside 0\.\.2"):
        cosignature_message("x\n", 2**63)
    with pytest.raises(TlogError, match="not a cosignature v1"):
        open_cosigned(cosigned, LOG.verifier(), [LOG.verifier()])


def test_key_names_and_keys() -> None:
    for bad in ("", "a+b", "a b", "a\u00a0b", "a\u3000b", "a\tb", "a\x01b"):
        with pytest.raises(TlogError):
            NoteSigner(bad, bytes(32))
    assert NoteSigner("ünïcode/ok—name", bytes(32)).verifier().vkey().startswith("ünïcode/ok—name+")
    with pytest.raises(TlogError, match="wrong key hash"):
        NoteVerifier.parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(TlogError, match="8 lowercase hex"):
        NoteVerifier.parse("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(TlogError, match=r"\(type 0x01\) keys only"):
        WITNESS.skey()
    assert "seed" not in repr(LOG)
    assert LOG.seed.hex() not in repr(LOG)
    twin = NoteVerifier(LOG.name, NoteSigner.generate("x").public_key)
    object.__setattr__(twin, "key_id", LOG.key_id)
    with pytest.raises(TlogError, match="two verifier keys share"):
        open_note(sign_note("t\n", LOG), [LOG.verifier(), twin])


def test_note_limits() -> None:
    with pytest.raises(TlogError, match="larger than"):
        parse_note("x" * (MAX_NOTE_SIZE + 1))
    with pytest.raises(TlogError, match="does not end in a newline"):
        sign_note("no newline", LOG)
    with pytest.raises(TlogError, match="no signer"):
        sign_note("t\n")
    note = sign_note("t\n", LOG)
    sixteen = note + "".join(f"— other{i} {note.split(' ')[-1]}" for i in range(15))
    assert len(open_note(sixteen, [LOG.verifier()]).unverified) == 15  # signed-note: accept >= 16


# --- tiles -------------------------------------------------------------------------------------------


def test_tile_paths() -> None:
    cases = {
        Tile(0, 0): "tile/0/000",
        Tile(0, 0, 1): "tile/0/000.p/1",
        Tile(3, 999): "tile/3/999",
        Tile(1, 1000, 255): "tile/1/x001/000.p/255",
        Tile(ENTRY_BUNDLE, 1234067, 7): "tile/entries/x001/x234/067.p/7",
        Tile(63, 0): "tile/63/000",
    }
    for tile, path in cases.items():
        assert tile.path == path
        assert parse_tile_path(path) == tile
    for bad in (
        "tile/0/0",
        "tile/0/x000/001",
        "tile/00/000",
        "tile/64/000",
        "tile/0/000.p/256",
        "tile/0/000.p/0",
        "tile/0/000.p/01",
        "tile/0/001/000",
        "tile/data/000",
        "tiles/0/000",
        "tile/0/x001",
        "tile/0/x001/x000/x000/x000/x000/x000/x000/000",
        "tile/0/" + "x001/" * 100 + "000",
    ):
        with pytest.raises(TlogError):
            parse_tile_path(bad)
    for bad_tile in ((MAX_TILE_LEVEL + 1, 0, 1), (0, 0, TILE_WIDTH + 1), (0, 0, 0), (0, -1, 1), (-2, 0, 1)):
        with pytest.raises(TlogError):
            Tile(*bad_tile)


def test_new_tiles_cover_exactly_what_changed() -> None:
    """Growing in steps and publishing new_tiles each time leaves every tile of the final tree published
    at its final width; no tile is published that the tree does not have."""
    rng = random.Random(5)
    sizes = sorted({0, *(rng.randint(1, 200_000) for _ in range(30))})
    published: dict[tuple[int, int], int] = {}
    for old, new in itertools.pairwise(sizes):
        for t in new_tiles(old, new):
            assert published.get((t.level, t.index), 0) < t.width
            published[(t.level, t.index)] = t.width
        expected = {}
        for level in range(8):
            count = new >> (8 * level)
            for index in range(count >> 8):
                expected[(level, index)] = TILE_WIDTH
            if count % TILE_WIDTH:
                expected[(level, count >> 8)] = count % TILE_WIDTH
        assert published == expected
        bundles = new_entry_bundles(old, new)
        assert {(b.index, b.width) for b in bundles} == {
            (t.index, t.width) for t in new_tiles(old, new) if t.level == 0
        }
    assert new_tiles(5, 5) == []
    with pytest.raises(TlogError, match="smaller than"):
        new_tiles(6, 5)


def test_hash_tiles_hold_the_tree() -> None:
    store = Store(leaves_of(256 * 3 + 10, salt=6))
    tile0 = read_tile(Tile(0, 1), store.read)
    assert parse_hash_tile(tile0, Tile(0, 1)) == store.leaf_hashes[256:512]
    level1 = parse_hash_tile(read_tile(Tile(1, 0, 3), store.read), Tile(1, 0, 3))
    for i, h in enumerate(level1):
        assert h == merkle_tree_hash(store.leaf_hashes[256 * i : 256 * (i + 1)])
    partial = read_tile(Tile(0, 3, 10), store.read)
    assert partial == b"".join(store.leaf_hashes[768:])
    with pytest.raises(TlogError, match="not 10 hashes"):
        parse_hash_tile(partial[:-1], Tile(0, 3, 10))
    with pytest.raises(TlogError):
        read_tile(Tile(ENTRY_BUNDLE, 0), store.read)


def test_entry_bundles() -> None:
    entries = [b"", b"a", b"\x00" * 300, b"z" * MAX_ENTRY_SIZE]
    data = entry_bundle(entries)
    assert data[:5] == b"\x00\x00\x00\x01a"
    assert parse_entry_bundle(data) == entries
    assert parse_entry_bundle(data, width=4) == entries
    with pytest.raises(TlogError, match="expected 5"):
        parse_entry_bundle(data, width=5)
    with pytest.raises(TlogError, match="at most 65535"):
        entry_bundle([b"z" * (MAX_ENTRY_SIZE + 1)])
    with pytest.raises(TlogError, match="truncated"):
        parse_entry_bundle(data[:-1])
    with pytest.raises(TlogError, match="truncated in the length"):
        parse_entry_bundle(b"\x00\x01a\x00")
    with pytest.raises(TlogError, match="more than 256"):
        parse_entry_bundle(b"\x00\x00" * 257)
    with pytest.raises(TlogError, match="empty"):
        parse_entry_bundle(b"")


# --- hostile bytes into the parsers ---------------------------------------------------------------

VALID_NOTE = sign_checkpoint(Checkpoint(LOG.name, 3, BIG_ROOTS[3]), LOG)
COSIGNED = cosign_checkpoint(VALID_NOTE, WITNESS, 1)


def _only_tlog_errors(fn: Any, *args: Any) -> None:
    with contextlib.suppress(TlogError):
        fn(*args)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_random_input_into_parsers_raises_only_tlog_error(data: bytes | str) -> None:
    _only_tlog_errors(parse_checkpoint, data)
    _only_tlog_errors(parse_note, data)
    _only_tlog_errors(open_note, data, [LOG.verifier()])
    _only_tlog_errors(open_checkpoint, data, LOG.verifier())
    if isinstance(data, bytes):
        _only_tlog_errors(parse_entry_bundle, data)
    else:
        _only_tlog_errors(NoteVerifier.parse, data)
        _only_tlog_errors(NoteSigner.parse, data)
        _only_tlog_errors(parse_tile_path, data)
        _only_tlog_errors(hash_from_base64, data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_signed_notes_raise_only_tlog_error(data: st.DataObject) -> None:
    raw = bytearray(COSIGNED.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 20))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        if not raw:
            raw += b"\n"
    msg = bytes(raw)
    for fn, args in (
        (parse_note, (msg,)),
        (open_checkpoint, (msg, LOG.verifier())),
        (open_cosigned, (msg, LOG.verifier(), [WITNESS.verifier()])),
        (cosign_checkpoint, (msg, WITNESS, 2)),
    ):
        _only_tlog_errors(fn, *args)
    # whatever survives verification is the checkpoint that was signed
    try:
        cp = open_checkpoint(msg, LOG.verifier())
    except TlogError:
        return
    assert cp == parse_checkpoint(VALID_NOTE.split("\n\n")[0] + "\n")
