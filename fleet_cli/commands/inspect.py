"""``fleet inspect``: decode one envelope, verify it when a key is given, show it with named fields.

The input is untrusted, an exported record included: its size is judged before anything in it is
decoded (docs/protocol.md §4 step 1), and the fleet id a signature is checked against comes from the
operator (``--fleet``, else the fleet home's fleet.toml), never from the record's own ``fleet`` field.
What the input says is shown escaped (terminal.py); ``--json`` is exact.
"""

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
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption
from fleet_cli.terminal import MAX_LINE_CHARS, escape, safe_text

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


def _trusted_fleet(fleet: str | None, home: Path | None) -> str | None:
    """``--fleet``, else the fleet of the home (``--home``, ``$EDGESEAL_HOME`` or the default one, if it
    exists); None when the operator named none. A record's own ``fleet`` field is never used: whoever
    wrote the record chose it, and a signature checked against it proves nothing about this fleet."""
    if fleet is not None:
        try:
            validate_id(fleet, "fleet id")
        except InvalidId as e:
            raise UsageError(str(e), hint=e.hint) from None
        return fleet
    try:
        return FleetHome.load(home).fleet
    except FleetError:
        if home is not None:
            raise
        return None


def _parse_input(data: bytes, as_hex: bool) -> bytes:
    """Return the envelope bytes: raw, from hex text, or from an exported record's ``cose``."""
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            record = json.loads(stripped.splitlines()[0])
            cose = base64.b64decode(record["cose"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as e:
            raise UsageError(f"input looks like JSON but is not an exported record: {e}") from None
        if not isinstance(record, dict):
            raise UsageError("an exported record is a JSON object")
        return cose
    if as_hex:
        try:
            return bytes.fromhex("".join(stripped.decode("ascii").split()))
        except (UnicodeDecodeError, ValueError):
            raise UsageError("--hex input is not hexadecimal text") from None
    return data


def inspect(
    source: Annotated[
        str, typer.Argument(help="File with one envelope (raw bytes), or - for standard input.")
    ] = "-",
    *,
    fleet: Annotated[
        str | None,
        typer.Option(
            "--fleet",
            help="Fleet id the signature is bound to (external_aad); default: the fleet home's. "
            "An exported record's own fleet field is not trusted.",
        ),
    ] = None,
    home: HomeOption = None,
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
    fleet = _trusted_fleet(fleet, home)
    if key is not None and fleet is None:
        raise UsageError(
            "verifying needs the fleet id, and no fleet home was found (an exported record's own"
            " fleet field is not trusted)",
            hint="add --fleet ID, or --home DIR of the fleet",
        )

    opened: Opened | None = None
    verified = False
    cose = data
    try:
        # Step 1 of docs/protocol.md §4, before any decoding: hex or an exported record of this size
        # cannot hold an envelope within the limit.
        if len(data) > MAX_INPUT_BYTES:
            raise EnvelopeError(Verdict.TOO_LARGE, f"input larger than {MAX_INPUT_BYTES} bytes")
        cose = _parse_input(data, as_hex)
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
    """Verdict, reason and payload as escaped rich Text (the reason may quote the input's bytes)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    style = {"ACCEPTED": "bold green", "UNVERIFIED": "bold yellow"}.get(result["verdict"], "bold red")
    line = Text(result["verdict"], style=style)
    if result["reason"]:
        line.append("  " + escape(result["reason"], MAX_LINE_CHARS))
    console.print(line)
    if result["payload"] is None:
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="cyan")
    table.add_column(overflow="fold")
    table.add_row("msg_id", result["msg_id"])
    table.add_row("kid", result["kid"])
    table.add_row("size", f"{result['size']} bytes")
    for name, value in result["payload"].items():
        # json.dumps output is printable ASCII already; everything else is escaped, uncut (this is the
        # command that shows a message in full).
        shown = Text(json.dumps(value)) if isinstance(value, dict | list) else safe_text(value, limit=None)
        table.add_row(safe_text(name), shown)
    console.print(table, highlight=False, markup=False)
