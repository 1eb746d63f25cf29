"""``fleet log``: key, checkpoint, prove, consistency, audit; proofs checked with edge_protocol.tlog."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from edge_protocol.tlog import (
    NoteVerifier,
    check_record,
    check_tree,
    hash_from_base64,
    leaf_hash,
    open_checkpoint,
)
from fleet_cli.app import main
from fleet_cli.collector.log import load_log_signer
from fleet_cli.collector.store import Batch, Candidate, Store
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import populated_home

pytestmark = pytest.mark.integration


def _extra(n: int) -> list[Candidate]:
    out, prev = [], bytes(32)
    for seq in range(n):
        msg_id = f"zz:{seq}".encode().ljust(32, b"\0")
        out.append(Candidate("zz", 0, f"extra {seq}".encode(), 1, seq, 1, "p", 0, msg_id=msg_id, prev=prev))
        prev = msg_id
    return out


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(argv) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_key_checkpoint_prove_consistency_audit(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = populated_home(tmp_path, mosquitto.host, mosquitto.port, n_results=4)
    home = ["--home", str(p.home.root)]
    assert main(["log", "key", *home]) == 0  # fleet init made it
    assert NoteVerifier.parse(capsys.readouterr().out.strip()).name == f"edgeseal/{p.home.fleet}"
    p.home.log_key.unlink()  # a home from before the log
    assert main(["log", "key", *home]) == 1  # no key: a clear error
    assert "fleet log key --create" in capsys.readouterr().err
    assert main(["log", "key", "--create", *home]) == 0
    vkey = capsys.readouterr().out.strip()
    verifier = NoteVerifier.parse(vkey)
    assert verifier.name == f"edgeseal/{p.home.fleet}"
    assert main(["log", "checkpoint", *home]) == 1
    assert "no checkpoint yet" in capsys.readouterr().err
    signer = load_log_signer(p.home.root, p.home.fleet)
    with Store(p.store) as s:
        first = s.log_size()
        assert first == 12
        s.sign_checkpoint(signer)
        s.commit(Batch(candidates=_extra(9)))
        s.sign_checkpoint(signer)
    assert main(["log", "checkpoint", *home]) == 0
    assert open_checkpoint(capsys.readouterr().out, verifier).size == 21
    # an exported msg_id proves against the latest checkpoint and the older one
    assert main(["export", *home]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for size in (None, first):
        rec = recs[3]
        argv = ["log", "prove", rec["msg_id"], "--json", *home]
        out = _json(capsys, argv + (["--size", str(size)] if size else []))
        cp = open_checkpoint(str(out["checkpoint"]), verifier)
        assert cp.size == out["tree_size"] == (size or 21)
        lh = leaf_hash(base64.b64decode(rec["cose"]))
        assert hash_from_base64(str(out["leaf_hash"])) == lh
        proof = [hash_from_base64(h) for h in out["proof"]]  # type: ignore[attr-defined]
        check_record(proof, cp.size, cp.root_hash, int(out["leaf_index"]), lh)  # type: ignore[call-overload]
    out = _json(capsys, ["log", "consistency", str(first), "21", "--json", *home])
    old = open_checkpoint(str(out["old_checkpoint"]), verifier)
    new = open_checkpoint(str(out["new_checkpoint"]), verifier)
    proof = [hash_from_base64(h) for h in out["proof"]]  # type: ignore[attr-defined]
    check_tree(proof, new.size, new.root_hash, old.size, old.root_hash)
    assert (out["old_size"], out["new_size"]) == (12, 21)
    # bad input: one clear line each
    for argv, said in [
        (["log", "prove", "00" * 32], "no stored message"),
        (["log", "prove", "xyz"], "not 64 hex digits"),
        (["log", "prove", recs[3]["msg_id"], "--size", "5"], "no checkpoint of tree size 5"),
        (["log", "consistency", "21", "12"], "larger than"),
    ]:
        assert main([*argv, *home]) != 0
        err = capsys.readouterr().err
        assert said in err
        assert "Traceback" not in err
    assert main(["log", "audit", *home]) == 0
    assert "audit ok: 21 leaves, 2 checkpoints (signatures checked)" in capsys.readouterr().out
    # tampering: one byte of one stored message
    with contextlib.closing(sqlite3.connect(p.store)) as db:
        db.execute("DROP TRIGGER messages_no_update")
        (cose,) = db.execute("SELECT cose FROM messages WHERE id = 4").fetchone()
        db.execute("UPDATE messages SET cose = ? WHERE id = 4", (bytes([cose[0] ^ 1]) + cose[1:],))
        db.commit()
    assert main(["log", "audit", *home]) == 1
    err = capsys.readouterr().err
    assert "audit FAILED: leaf 3" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["consistency", "1", "99999999999999999999"],
        ["consistency", "0", "3"],
        ["prove", "ab" * 32, "--size", "99999999999999999999"],
        ["prove", "ab" * 32, "--size", "0"],
        ["prove", "not-hex"],
    ],
)
def test_hostile_sizes_and_ids_are_usage_errors(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A size past SQLite's INTEGER reached the store as an OverflowError traceback."""
    from fleet_cli.home import init_fleet

    home = init_fleet(tmp_path / "home", "f1")
    assert main(["log", *args, "--home", str(home.root)]) == 2
    assert "Traceback" not in capsys.readouterr().err
