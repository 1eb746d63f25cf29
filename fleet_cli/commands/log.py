"""``fleet log key|checkpoint|prove|consistency|audit``: the fleet log's key, checkpoints and proofs
(docs/log.md). The logic is in :mod:`fleet_cli.collector.log` and the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_protocol.tlog import NoteVerifier, hash_to_base64, leaf_hash
from fleet_cli.collector import log
from fleet_cli.collector.store import Store, default_store_path
from fleet_cli.errors import UsageError
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption, StoreOption

app = typer.Typer(
    help="The fleet log: an RFC 6962 Merkle tree of every stored message, signed checkpoints, proofs.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

# A tree size is a count of stored rows: at most SQLite's largest INTEGER (the store holds it).
MAX_TREE_SIZE = 2**63 - 1


def _open(home: Path | None, store: Path | None) -> tuple[FleetHome, Store]:
    fleet_home = FleetHome.load(home)
    return fleet_home, Store(store or default_store_path(fleet_home.root), readonly=True)


def _print(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command("key")
def key(
    *,
    create: Annotated[
        bool, typer.Option("--create", help="Create the log key if the home has none.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print the log's verifier key (C2SP signed-note), to check checkpoints with."""
    fleet_home = FleetHome.load(home)
    signer = log.load_log_signer(fleet_home.root, fleet_home.fleet, create=create)
    typer.echo(signer.verifier().vkey())


@app.command("checkpoint")
def checkpoint(*, as_json: JsonOption = False, home: HomeOption = None, store: StoreOption = None) -> None:
    """Print the latest signed checkpoint (a C2SP signed note)."""
    _, st = _open(home, store)
    with st:
        cp = st.checkpoint()
    if as_json:
        _print({"size": cp.size, "root": hash_to_base64(cp.root), "note": cp.note, "t_ms": cp.t_ms})
    else:
        typer.echo(cp.note, nl=False)


def _msg_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"msg id {text[:80]!r} is not 64 hex digits", hint="as `fleet export` shows it")
    return raw


@app.command("prove")
def prove(
    msg_id: Annotated[str, typer.Argument(help="The message's msg_id (hex, as `fleet export` shows it).")],
    *,
    size: Annotated[
        int | None,
        typer.Option("--size", min=1, max=MAX_TREE_SIZE, help="Prove against the checkpoint of this size."),
    ] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
    store: StoreOption = None,
) -> None:
    """An inclusion proof of a stored message against a signed checkpoint (the latest by default)."""
    raw = _msg_id(msg_id)
    _, st = _open(home, store)
    with st:
        idx, cose, cp, proof = st.prove(raw, size)
    hashes = [hash_to_base64(h) for h in proof]
    data: dict[str, Any] = {
        "msg_id": raw.hex(),
        "leaf_index": idx,
        "tree_size": cp.size,
        "leaf_hash": hash_to_base64(leaf_hash(cose)),
        "root": hash_to_base64(cp.root),
        "proof": hashes,
        "checkpoint": cp.note,
    }
    if as_json:
        _print(data)
        return
    typer.echo(f"leaf {idx} in the tree of size {cp.size}; leaf hash {data['leaf_hash']}")
    for h in hashes:
        typer.echo(f"  {h}")
    typer.echo(cp.note, nl=False)


@app.command("consistency")
def consistency(
    old: Annotated[
        int, typer.Argument(min=1, max=MAX_TREE_SIZE, help="Tree size of the older stored checkpoint.")
    ],
    new: Annotated[
        int, typer.Argument(min=1, max=MAX_TREE_SIZE, help="Tree size of the newer stored checkpoint.")
    ],
    *,
    as_json: JsonOption = False,
    home: HomeOption = None,
    store: StoreOption = None,
) -> None:
    """A consistency proof: the tree of OLD leaves is a prefix of the tree of NEW leaves."""
    _, st = _open(home, store)
    with st:
        old_cp, new_cp, proof = st.prove_consistency(old, new)
    hashes = [hash_to_base64(h) for h in proof]
    data: dict[str, Any] = {
        "old_size": old_cp.size,
        "new_size": new_cp.size,
        "proof": hashes,
        "old_checkpoint": old_cp.note,
        "new_checkpoint": new_cp.note,
    }
    if as_json:
        _print(data)
        return
    typer.echo(f"tree {old_cp.size} is a prefix of tree {new_cp.size}; proof:")
    for h in hashes:
        typer.echo(f"  {h}")


@app.command("audit")
def audit(*, home: HomeOption = None, store: StoreOption = None) -> None:
    """Recompute the whole log from the stored messages and compare hashes, checkpoints and signatures."""
    fleet_home, st = _open(home, store)
    verifier: NoteVerifier | None = None
    if fleet_home.log_key.exists():
        verifier = log.load_log_signer(fleet_home.root, fleet_home.fleet).verifier()
    with st:
        problems = st.audit_log(verifier)
        size, checkpoints = st.log_size(), len(st.checkpoints())
    if problems:
        typer.echo(f"audit FAILED: {problems[0]}", err=True)
        for p in problems[1:]:
            typer.echo(f"  also: {p}", err=True)
        raise typer.Exit(1)
    signed = "signatures checked" if verifier else "signatures NOT checked: no log key in the home"
    typer.echo(f"audit ok: {size} leaves, {checkpoints} checkpoints ({signed})")
