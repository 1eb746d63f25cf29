"""``fleet inspect``: exit codes 0/1/2, JSON shape, every vector, bad input never a traceback."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_cli.app import main
from tests.vectors_util import load, vector_files

DOC = load(vector_files("envelope.json")[0])
PK = DOC["valid"][0]["signer_public"]


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
    code, out, _ = run(["inspect", str(f), "--public-key", PK, "--json"], capsys)
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
