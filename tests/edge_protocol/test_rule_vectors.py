"""Every entry of tests/vectors/rules.json (docs/protocol.md §8): the rules the spec settles beyond
envelope.json, decided by edge_protocol (and, for the ``collector`` entries, by the collector's
stateless checks in fleet_cli/collector/verify_worker.py). The file is what tools/make_rule_vectors.py
writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_protocol.envelope import EnvelopeError, Verdict, open_envelope, seal
from edge_protocol.keys import Signer, key_id, message_id
from tests._vectors import ROOT, decode_value, load, vector_files

FILES = vector_files("rules.json")
VALID = [(p, v) for p in FILES for v in load(p)["valid"]]
NEGATIVE = [(p, v) for p in FILES for v in load(p)["negative"]]
COLLECTOR = [(p, v) for p in FILES for v in load(p)["collector"]]


def _id(entry: tuple[Path, dict[str, Any]]) -> str:
    path, v = entry
    return f"{path.parent.parent.name}:{v['name']}"


@pytest.mark.parametrize("entry", VALID, ids=[_id(e) for e in VALID])
def test_valid_vector_seals_to_exact_bytes_and_opens(entry: tuple[Path, dict[str, Any]]) -> None:
    path, v = entry
    fleet = load(path)["fleet"]
    signer = Signer.from_seed(bytes.fromhex(v["signer_seed"]))
    assert signer.public_key.hex() == v["signer_public"]
    payload = decode_value(v["payload"])
    sealed = seal(payload, signer, fleet)
    assert sealed.payload_bytes.hex() == v["payload_cbor"]
    assert sealed.cose.hex() == v["cose"]
    assert sealed.msg_id.hex() == v["msg_id"]
    opened = open_envelope(bytes.fromhex(v["cose"]), fleet, signer.public_key)
    assert opened.payload == payload
    assert message_id(opened.payload_bytes).hex() == v["msg_id"]


@pytest.mark.parametrize("entry", NEGATIVE, ids=[_id(e) for e in NEGATIVE])
def test_negative_vector_rejected_with_verdict(entry: tuple[Path, dict[str, Any]]) -> None:
    path, v = entry
    trusted = bytes.fromhex(v["public_key"])
    with pytest.raises(EnvelopeError) as err:
        open_envelope(bytes.fromhex(v["cose"]), load(path)["fleet"], trusted)
    assert err.value.verdict is Verdict(v["verdict"]), err.value.reason


@pytest.mark.parametrize("entry", COLLECTOR, ids=[_id(e) for e in COLLECTOR])
def test_collector_vector_verdict(entry: tuple[Path, dict[str, Any]]) -> None:
    from fleet_cli.collector.verify_worker import Verifiers, verify_bound

    path, v = entry
    item = (v["dev"], v["channel"], v["pipe"], bytes.fromhex(v["bound_key"]), bytes.fromhex(v["cose"]))
    answer = verify_bound(load(path)["fleet"], item, Verifiers())
    verdict = answer[0] if len(answer) == 2 else "ACCEPTED"
    assert verdict == v["verdict"], answer


def test_envelope_json_gap_vector_is_the_collectors_malformed_one() -> None:
    """The gap vector of envelope.json (seq 3 reporting seqs 10..19) tests the envelope only: the
    collector refuses it (docs/protocol.md §6). rules.json holds the very same bytes."""
    envelope = load(vector_files("envelope.json")[-1])
    gap = next(v for v in envelope["valid"] if v["name"] == "gap")
    rules = load(FILES[-1])
    assert any(c["cose"] == gap["cose"] and c["verdict"] == "MALFORMED" for c in rules["collector"])


def test_keys_are_the_ones_named() -> None:
    for path in FILES:
        for name, k in load(path)["keys"].items():
            signer = Signer.from_seed(bytes.fromhex(k["seed"]))
            assert signer.public_key.hex() == k["public"], name
            assert key_id(signer.public_key) == signer.kid


def test_the_file_is_what_the_script_writes() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_rule_vectors.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert run.returncode == 0, run.stdout + run.stderr
