"""``fleet inspect``: decode one envelope, verify it when a key is given, show it with named fields."""

from __future__ import annotations

import base64
import binascii
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    Opened,
    Verdict,
    decode_unverified,
    open_envelope,
)
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.keys import parse_public_key
from edge_protocol.payload import named
from fleet_cli.errors import UsageError

# Hex doubles the size and an exported JSON line adds base64 (4/3) plus its other fields; read at most
# this much so that a huge input is refused without being held in memory.
MAX_INPUT_BYTES = 4 * MAX_ENVELOPE_BYTES + 4096


def _read_input(source: str) -> bytes:
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with Path(source).open("rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror or e}") from None
    return data


def _parse_input(data: bytes, as_hex: bool) -> tuple[bytes, dict[str, Any]]:
    """Return the envelope bytes and, for an exported record, the record's other fields."""
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            record = json.loads(stripped.splitlines()[0])
            cose = base64.b64decode(record["cose"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise UsageError(f"input looks like JSON but is not an exported record: {e}") from None
        if not isinstance(record, dict):
            raise UsageError("an exported record is a JSON object")
        return cose, record
    if as_hex:
        try:
            return bytes.fromhex("".join(stripped.decode("ascii").split())), {}
        except (UnicodeDecodeError, ValueError):
            raise UsageError("--hex input is not hexadecimal text") from None
    return data, {}


def inspect(
    source: Annotated[
        str, typer.Argument(help="File with one envelope (raw bytes), or - for standard input.")
    ] = "-",
    fleet: Annotated[
        str | None, typer.Option("--fleet", help="Fleet id the signature is bound to (external_aad).")
    ] = None,
    public_key: Annotated[
        str | None, typer.Option("--public-key", help="Signer's Ed25519 public key, 64 hex characters.")
    ] = None,
    as_hex: Annotated[
        bool, typer.Option("--hex", help="The input is hex text rather than raw bytes.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Decode one envelope and show its payload; verify it when --public-key is given.

    Accepts raw COSE bytes, hex text (--hex) or a line of `fleet export --format jsonl`.
    Exit status: 0 accepted (or well-formed, when no key is given), 1 rejected, 2 usage error.
    """
    data = _read_input(source)
    key = None
    if public_key is not None:
        try:
            key = parse_public_key(public_key)
        except ValueError as e:
            raise UsageError(f"--public-key: {e}") from None
    cose, record = _parse_input(data, as_hex)
    fleet = fleet or record.get("fleet")
    if fleet is not None:
        try:
            validate_id(fleet, "fleet id")
        except InvalidId as e:
            raise UsageError(str(e), hint=e.hint) from None
    if key is not None and fleet is None:
        raise UsageError("verifying needs the fleet id", hint="add --fleet ID")

    opened: Opened | None = None
    verified = False
    try:
        if len(data) > MAX_INPUT_BYTES:
            raise EnvelopeError(Verdict.TOO_LARGE, f"input larger than {MAX_INPUT_BYTES} bytes")
        if key is not None and fleet is not None:
            opened = open_envelope(cose, fleet, key)
            verified = True
        else:
            opened = decode_unverified(cose)
        verdict, reason = (
            ("ACCEPTED" if verified else "UNVERIFIED"),
            ("" if verified else "no --public-key given"),
        )
    except EnvelopeError as e:
        verdict, reason = e.verdict.value, e.reason
        if opened is None and e.verdict not in (Verdict.TOO_LARGE, Verdict.MALFORMED):
            try:  # show what the message claims, clearly marked as not verified
                opened = decode_unverified(cose)
            except EnvelopeError:
                opened = None

    result: dict[str, Any] = {
        "verdict": verdict,
        "reason": reason,
        "verified": verified,
        "fleet": fleet,
        "msg_id": opened.msg_id.hex() if opened else None,
        "kid": opened.kid.hex() if opened else None,
        "size": len(cose),
        "payload": named(opened.payload) if opened else None,
    }
    if as_json:
        typer.echo(json.dumps(result, sort_keys=False))
    else:
        _print_human(result)
    if verdict not in ("ACCEPTED", "UNVERIFIED"):
        raise typer.Exit(1)


def _print_human(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    style = {"ACCEPTED": "bold green", "UNVERIFIED": "bold yellow"}.get(result["verdict"], "bold red")
    line = f"[{style}]{result['verdict']}[/]"
    if result["reason"]:
        line += f"  {result['reason']}"
    console.print(line, highlight=False)
    if result["payload"] is None:
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="cyan")
    table.add_column(overflow="fold")
    table.add_row("msg_id", result["msg_id"])
    table.add_row("kid", result["kid"])
    table.add_row("size", f"{result['size']} bytes")
    for name, value in result["payload"].items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        table.add_row(name, shown)
    console.print(table, highlight=False, markup=False)
