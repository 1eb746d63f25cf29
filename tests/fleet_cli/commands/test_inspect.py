"""``fleet inspect``: exit codes 0/1/2, JSON shape, every vector, bad input never a traceback."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_protocol.envelope import seal
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from fleet_cli.app import main
from fleet_cli.commands.inspect import MAX_INPUT_BYTES
from fleet_cli.home import ENV_HOME, init_fleet
from tests._vectors import load, vector_files
from tests.fleet_cli._collect_sim import SimDevice
from tests.fleet_cli._hostile import BIDI, CLEAR, NUL, RED, TITLE, assert_terminal_safe

DOC = load(vector_files("envelope.json")[0])
PK = DOC["valid"][0]["signer_public"]


@pytest.fixture(autouse=True)
def _no_default_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --home, inspect would use $EDGESEAL_HOME's fleet: point it at a fleet home that is not."""
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "no-home"))


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("v", DOC["valid"], ids=[v["name"] for v in DOC["valid"]])
def test_valid_vectors_accepted(tmp_path: Path, v: dict, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.cose"
    f.write_bytes(bytes.fromhex(v["cose"]))
    code, out, _ = run(
        ["inspect", str(f), "--fleet", "demo", "--public-key", v["signer_public"], "--json"], capsys
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "ACCEPTED"
    assert doc["msg_id"] == v["msg_id"]
    assert doc["payload"]["dev"] == "dev-01"
    assert doc["payload"]["kind"] == v["name"]


@pytest.mark.parametrize("v", DOC["negative"], ids=[v["why"] for v in DOC["negative"]])
def test_negative_vectors_rejected(tmp_path: Path, v: dict, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.hex"
    f.write_text(v["cose"])
    code, out, err = run(
        ["inspect", str(f), "--hex", "--fleet", "demo", "--public-key", PK, "--json"], capsys
    )
    assert code == 1, err
    doc = json.loads(out)
    assert doc["verdict"] == v["verdict"]
    assert doc["reason"]


def test_human_output_and_unverified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.cose"
    f.write_bytes(bytes.fromhex(DOC["valid"][1]["cose"]))
    code, out, _ = run(["inspect", str(f)], capsys)
    assert code == 0
    assert "UNVERIFIED" in out
    assert "label" in out


def test_exported_record_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = DOC["valid"][1]
    line = {"fleet": "demo", "dev": "dev-01", "cose": base64.b64encode(bytes.fromhex(v["cose"])).decode()}
    f = tmp_path / "export.jsonl"
    f.write_text(json.dumps(line) + "\n")
    code, out, _ = run(["inspect", str(f), "--fleet", "demo", "--public-key", PK, "--json"], capsys)
    assert code == 0
    assert json.loads(out)["msg_id"] == v["msg_id"]


@pytest.mark.parametrize(
    ("args", "content", "needle"),
    [
        (["--hex"], b"not hex", "not hexadecimal"),
        (["--public-key", "abc", "--fleet", "demo"], b"", "--public-key"),
        (["--public-key", PK], b"\xd2", "needs the fleet id"),
        (["--fleet", "De/mo"], b"\xd2", "invalid fleet id"),
        ([], b'{"cose": "%%%"}', "exported record"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, args: list[str], content: bytes, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "in"
    f.write_bytes(content)
    code, _, err = run(["inspect", str(f), *args], capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["inspect", "/nonexistent/envelope"], capsys)
    assert code == 2
    assert "cannot read" in err


def test_stdin_and_garbage_through_the_console_script() -> None:
    for garbage in (b"", b"\x00" * 10, b"\xd2\x84" + b"\xff" * 50, bytes(range(256)) * 300):
        proc = subprocess.run(
            [sys.executable, "-m", "fleet_cli", "inspect", "-", "--fleet", "demo", "--public-key", PK],
            input=garbage,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert b"Traceback" not in proc.stderr


def _record(fleet: str) -> str:
    """An exported line holding the ``result`` vector (sealed for fleet ``demo``), claiming ``fleet``."""
    cose = bytes.fromhex(DOC["valid"][1]["cose"])
    return json.dumps({"fleet": fleet, "dev": "dev-01", "cose": base64.b64encode(cose).decode()})


def test_a_record_does_not_choose_the_fleet_it_is_verified_against(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "line.json"
    f.write_text(_record("demo") + "\n")
    code, _, err = run(["inspect", str(f), "--public-key", PK], capsys)
    assert code == 2, "no --fleet and no fleet home: the record's own fleet is not used"
    assert "needs the fleet id" in err
    assert "not trusted" in err
    assert "--fleet" in err
    code, out, _ = run(["inspect", str(f), "--fleet", "other", "--public-key", PK, "--json"], capsys)
    assert (code, json.loads(out)["verdict"], json.loads(out)["fleet"]) == (1, "BAD_SIGNATURE", "other")
    f.write_text(_record("other") + "\n")
    code, out, _ = run(["inspect", str(f), "--fleet", "demo", "--public-key", PK, "--json"], capsys)
    assert (code, json.loads(out)["verdict"], json.loads(out)["fleet"]) == (0, "ACCEPTED", "demo")
    # the fleet of the home, when no --fleet is given
    for home_fleet, verdict in (("demo", "ACCEPTED"), ("other", "BAD_SIGNATURE")):
        home = init_fleet(tmp_path / home_fleet, home_fleet)
        f.write_text(_record("other" if home_fleet == "demo" else "demo") + "\n")
        _, out, _ = run(["inspect", str(f), "--home", str(home.root), "--public-key", PK, "--json"], capsys)
        assert (json.loads(out)["verdict"], json.loads(out)["fleet"]) == (verdict, home_fleet)


@pytest.mark.parametrize(
    "content",
    [
        b"00" * (MAX_INPUT_BYTES // 2 + 1),  # hex text
        b"0" * (MAX_INPUT_BYTES + 1),  # not even hex: the size decides first
        json.dumps({"fleet": "demo", "cose": "AAAA" * (MAX_INPUT_BYTES // 4 + 1)}).encode(),
    ],
    ids=["hex", "odd-hex", "record"],
)
def test_input_over_the_limit_is_too_large_before_decoding(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "big"
    f.write_bytes(content)
    code, out, err = run(
        ["inspect", str(f), "--hex", "--fleet", "demo", "--public-key", PK, "--json"], capsys
    )
    assert code == 1, err
    assert json.loads(out)["verdict"] == "TOO_LARGE"


def test_human_output_shows_message_text_escaped_and_json_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no folded cells
    label = "[/x]" + TITLE + CLEAR + RED + BIDI + NUL
    dev = SimDevice("demo", "dev-01", None)
    result = dev.result(label=label).cose
    cmd = "[/x]" + TITLE + RED + BIDI  # a text field of its own (any signer: shown unverified)
    payload = {Key.V: 1, Key.DEV: "dev-01", Key.T: 1, Key.KIND: int(Kind.COMMAND), Key.CMD: cmd}
    command = seal({**payload, Key.ID: bytes(16), Key.EXP: 2}, Signer.generate(), "demo").cose
    key = dev.signer.public_key.hex()
    cmd_shown = "[/x]\\x1b]0;pwned\\x07\\x1b[31m\\u202eevil\\u202c\\u2066x\\u2069"
    cases: list[tuple[bytes, list[str], str, Callable[[dict[str, Any]], object], str]] = [
        (
            result,
            ["--fleet", "demo", "--public-key", key],
            json.dumps(label),
            lambda p: p["out"]["label"],
            label,
        ),
        (command, [], cmd_shown, lambda p: p["cmd"], cmd),
    ]
    for cose, args, shown, pick, text in cases:
        f = tmp_path / "m.cose"
        f.write_bytes(cose)
        code, out, _ = run(["inspect", str(f), *args], capsys)
        assert code == 0
        assert_terminal_safe(out, {shown})
        code, out, _ = run(["inspect", str(f), *args, "--json"], capsys)
        assert code == 0
        assert_terminal_safe(out)
        assert pick(json.loads(out)["payload"]) == text
