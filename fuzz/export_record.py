"""Fuzz target: ``fleet inspect`` reading its input (:mod:`fleet_cli.commands.inspect`).

The input is what ``fleet inspect`` reads from a file or standard input: a line of
``fleet export --format jsonl`` (``{"fleet": …, "cose": "<base64>"}``), raw envelope bytes, or hex
text. The part that reads an exported record, ``_parse_input``, is private, so this target goes
through the smallest public entry point, the command function :func:`inspect` (which parses the
input, takes the fleet from the record, decodes and verifies the envelope and prints the result):

* with ``--json``, without a key;
* with ``--json --fleet demo --public-key`` the vectors' signer;
* with ``--hex``, when the input is not JSON;
* printed for a person (rich), without a key, for one input in :data:`HUMAN_EVERY` (chosen by the
  input's CRC, so a regression input replays the same way): rich takes milliseconds a call, twenty
  times the rest, and would slow the search as much.

Documented: :class:`fleet_cli.errors.FleetError` (a usage error, exit 2) and ``typer.Exit`` (the
message was rejected, exit 1). A traceback for any input is a crash.
"""

from __future__ import annotations

import contextlib
import io
import sys
import zlib

import typer

from fleet_cli.commands.inspect import inspect
from fleet_cli.errors import FleetError

HUMAN_EVERY = 8
# The signer of tests/vectors/envelope.json (dev-01) and its fleet.
FLEET = "demo"
PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"


def _run(data: bytes, *, fleet: str | None, public_key: str | None, as_hex: bool, as_json: bool) -> None:
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            inspect("-", fleet=fleet, public_key=public_key, as_hex=as_hex, as_json=as_json)
    except (FleetError, typer.Exit):
        pass
    finally:
        sys.stdin = stdin


def one_input(data: bytes) -> None:
    _run(data, fleet=None, public_key=None, as_hex=False, as_json=True)
    _run(data, fleet=FLEET, public_key=PUBLIC_KEY, as_hex=False, as_json=True)
    if not data.strip().startswith(b"{"):
        _run(data, fleet=None, public_key=None, as_hex=True, as_json=True)
    if zlib.crc32(data) % HUMAN_EVERY == 0:
        _run(data, fleet=None, public_key=None, as_hex=False, as_json=False)
