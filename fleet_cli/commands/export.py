"""``fleet export``: one record per stored message with its raw COSE bytes (base64), streamed.

A JSON Lines record is what ``fleet inspect`` reads back (fields ``cose`` and ``fleet``)::

    {"fleet": "demo", "dev": "dev-01", "boot": 3, "seq": 17, "kind": "result", "pipe": "vib",
     "msg_id": "…hex…", "t_device": …, "t_received": …, "cose": "…base64…"}

A third party verifies each record offline with the device's public key (``fleet device show``) and
the fleet id it knows (not the record's own field): ``fleet inspect --fleet ID --public-key HEX
record.json`` or any COSE_Sign1 / Ed25519 library.
"""

from __future__ import annotations

import base64
import csv
import enum
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.payload import Kind
from fleet_cli.collector.aggregate import parse_since
from fleet_cli.collector.store import Store, default_store_path
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.home import FleetHome
from fleet_cli.options import HomeOption, StoreOption
from fleet_cli.terminal import escape

FIELDS = ("fleet", "dev", "boot", "seq", "kind", "pipe", "msg_id", "t_device", "t_received", "cose")


class Format(str, enum.Enum):
    JSONL = "jsonl"
    CSV = "csv"

    def __str__(self) -> str:
        return self.value


def records(
    store: Store, fleet: str, since_ms: int | None = None, dev: str | None = None
) -> Iterator[dict[str, Any]]:
    """Stored messages in arrival order, as export records (streamed)."""
    where: list[str] = []
    args: list[object] = []
    if since_ms is not None:
        where.append("t_received >= ?")
        args.append(since_ms)
    if dev is not None:
        where.append("dev = ?")
        args.append(dev)
    sql = "SELECT dev, boot, seq, kind, pipe, msg_id, t_device, t_received, cose FROM messages"
    if where:
        sql += " WHERE " + " AND ".join(where)
    for d, boot, seq, kind, pipe, msg_id, t_dev, t_rx, cose in store.iter_rows(sql + " ORDER BY id", args):
        yield {
            "fleet": fleet,
            "dev": d,
            "boot": boot,
            "seq": seq,
            "kind": Kind(kind).name.lower(),
            "pipe": pipe,
            "msg_id": bytes(msg_id).hex(),
            "t_device": t_dev,
            "t_received": t_rx,
            "cose": base64.b64encode(cose).decode("ascii"),
        }


def write_records(rows: Iterator[dict[str, Any]], fmt: Format, out: IO[str]) -> int:
    n = 0
    if fmt is Format.CSV:
        w = csv.DictWriter(out, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            # dev and pipe are ids (docs/protocol.md §5), which escaping leaves as they are; anything
            # else a store might hold there is escaped (terminal.py). JSON Lines is escaped by json.dumps.
            w.writerow(
                {**r, "dev": escape(r["dev"]), "pipe": None if r["pipe"] is None else escape(r["pipe"])}
            )
            n += 1
    else:
        for r in rows:
            out.write(json.dumps(r, separators=(",", ":")) + "\n")
            n += 1
    return n


def export(
    *,
    home: HomeOption = None,
    store: StoreOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="jsonl or csv.")] = Format.JSONL,
    since: Annotated[str | None, typer.Option("--since", help="Look back (2h) or an ISO time.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of standard output.")] = None,
) -> None:
    """Export stored messages with their raw signed bytes, for offline verification by anyone."""
    since_ms = None
    if since is not None:
        try:
            since_ms = parse_since(since, time.time_ns() // 1_000_000)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if device is not None:
        try:
            validate_id(device, "device id")
        except InvalidId as e:
            raise UsageError(str(e), hint=e.hint) from None
    fleet_home = FleetHome.load(home)
    with Store(store or default_store_path(fleet_home.root), readonly=True) as st:
        rows = records(st, fleet_home.fleet, since_ms, device)
        if out is None:
            n = write_records(rows, fmt, sys.stdout)
        else:
            try:
                with out.open("w", encoding="utf-8", newline="") as f:
                    n = write_records(rows, fmt, f)
            except OSError as e:
                raise FleetError(f"cannot write {out}: {e.strerror or e}") from e
    if out is not None:
        typer.echo(f"{n} records written to {out}", err=True)
