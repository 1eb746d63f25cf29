"""``fleet export`` -> ``fleet inspect`` round trip, CSV, filters, and streaming."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest

from edge_protocol.envelope import open_envelope
from fleet_cli.app import main
from tests._mosquitto import Broker
from tests.fleet_cli._collect_sim import populated_home

pytestmark = pytest.mark.integration


def test_export_jsonl_inspect_round_trip_and_csv(
    mosquitto: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = populated_home(tmp_path, mosquitto.host, mosquitto.port)
    home = str(p.home.root)
    out = tmp_path / "export.jsonl"
    assert main(["export", "--home", home, "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * 14
    recs = [json.loads(line) for line in lines]
    assert {r["dev"] for r in recs} == {"dev-01", "dev-02"}
    for r in recs:  # an independent check: the bytes verify with the device key alone
        key = p.devices[r["dev"]].signer.public_key
        opened = open_envelope(base64.b64decode(r["cose"]), r["fleet"], key)
        assert (opened.boot, opened.seq, opened.msg_id.hex()) == (r["boot"], r["seq"], r["msg_id"])
    # fleet inspect reads an exported line and verifies it against the fleet of the home
    line = tmp_path / "one.json"
    line.write_text(lines[3] + "\n")
    key_hex = p.devices[recs[3]["dev"]].signer.public_key.hex()
    capsys.readouterr()
    assert main(["inspect", str(line), "--home", home, "--public-key", key_hex, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "ACCEPTED"
    # filters and CSV
    capsys.readouterr()
    assert main(["export", "--home", home, "--format", "csv", "--device", "dev-02", "--since", "1h"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 14
    assert {r["dev"] for r in rows} == {"dev-02"}
    assert main(["export", "--home", home, "--device", "Bad/Id"]) == 2
