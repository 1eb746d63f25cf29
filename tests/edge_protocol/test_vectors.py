"""Every entry of the envelope vectors, read from ../shared/vectors and from the copy in tests/vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_protocol.envelope import EnvelopeError, Verdict, external_aad, open_envelope, seal
from edge_protocol.keys import Signer, claim_tag, key_id, message_id
from tests._vectors import decode_value, load, vector_files

FILES = vector_files("envelope.json")
VALID = [(p, v) for p in FILES for v in load(p)["valid"]]
NEGATIVE = [(p, v) for p in FILES for v in load(p)["negative"]]


def _id(entry: tuple[Path, dict[str, str]]) -> str:
    path, v = entry
    return f"{path.parent.parent.name}:{v.get('name') or v.get('why')}"


@pytest.mark.parametrize("entry", VALID, ids=[_id(e) for e in VALID])
def test_valid_vector_seals_to_exact_bytes(entry: tuple[Path, dict]) -> None:
    path, v = entry
    fleet = load(path)["fleet"]
    signer = Signer.from_seed(bytes.fromhex(v["signer_seed"]))
    assert signer.public_key.hex() == v["signer_public"]
    assert key_id(signer.public_key).hex() == v["kid"]
    sealed = seal(decode_value(v["payload"]), signer, fleet)
    assert sealed.payload_bytes.hex() == v["payload_cbor"]
    assert sealed.cose.hex() == v["cose"]
    assert sealed.msg_id.hex() == v["msg_id"]


@pytest.mark.parametrize("entry", VALID, ids=[_id(e) for e in VALID])
def test_valid_vector_opens(entry: tuple[Path, dict]) -> None:
    path, v = entry
    fleet = load(path)["fleet"]
    opened = open_envelope(bytes.fromhex(v["cose"]), fleet, bytes.fromhex(v["signer_public"]))
    assert opened.payload == decode_value(v["payload"])
    assert opened.msg_id.hex() == v["msg_id"]
    assert message_id(opened.payload_bytes).hex() == v["msg_id"]
    assert opened.kid.hex() == v["kid"]


@pytest.mark.parametrize("entry", NEGATIVE, ids=[_id(e) for e in NEGATIVE])
def test_negative_vector_rejected_with_verdict(entry: tuple[Path, dict]) -> None:
    path, v = entry
    doc = load(path)
    dev01 = bytes.fromhex(doc["valid"][0]["signer_public"])
    with pytest.raises(EnvelopeError) as err:
        open_envelope(bytes.fromhex(v["cose"]), doc["fleet"], dev01)
    assert err.value.verdict is Verdict(v["verdict"]), err.value.reason


@pytest.mark.parametrize("path", FILES, ids=[p.parent.parent.name for p in FILES])
def test_derived_constants(path: Path) -> None:
    doc = load(path)
    assert external_aad(doc["fleet"]).hex() == doc["external_aad"]
    birth = next(v for v in doc["valid"] if v["name"] == "birth")
    payload = decode_value(birth["payload"])
    token = bytes.fromhex(doc["claim_token"])
    assert claim_tag(token, payload[13], payload[1]) == payload[14]
    import blake3

    result = next(v for v in doc["valid"] if v["name"] == "result")
    rp = decode_value(result["payload"])
    assert blake3.blake3(bytes.fromhex(doc["model_bytes"])).digest() == rp[8]
    assert blake3.blake3(bytes.fromhex(doc["input_tensor"])).digest() == rp[9]
    assert blake3.blake3(bytes.fromhex(doc["cfg_cbor"])).digest() == rp[11]
