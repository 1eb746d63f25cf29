"""Mosquitto's $7$ password hashes: format, verification, and agreement with mosquitto_passwd."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from broker_config.errors import BrokerConfigError
from broker_config.passwd import (
    DEFAULT_ITERATIONS,
    HASH_LEN,
    MAX_ITERATIONS,
    SALT_LEN,
    hash_password,
    parse_hash,
    render_passwd,
    verify_password,
)


def test_format_is_mosquitto_2() -> None:
    h = hash_password("secret", salt=bytes(range(SALT_LEN)))
    kind, iterations, salt, digest = h.split("$")[1:]
    assert (kind, int(iterations)) == ("7", DEFAULT_ITERATIONS)
    assert base64.b64decode(salt) == bytes(range(SALT_LEN))
    assert len(base64.b64decode(digest)) == HASH_LEN
    assert verify_password("secret", h)
    assert not verify_password("Secret", h)


def test_known_vector_from_mosquitto_passwd() -> None:
    # `mosquitto_passwd -c -b pw alice secret` (Mosquitto 2.0.11) wrote this line.
    line = (
        "$7$101$jp2D08DLZW8qcIsE$f6S0fZtIMo446sXxQR5N+bMkrKyGWd9E0Z6ch4YFDZ/"
        "ZnvhcxaWbTwRblgJtXTuqExKxkwzf6gqS6rUpn074NQ=="
    )
    assert verify_password("secret", line)
    assert hash_password("secret", salt=base64.b64decode("jp2D08DLZW8qcIsE"), iterations=101) == line


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_agrees_with_installed_mosquitto_passwd(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(f), "bob", "hunter2"], check=True)
    user, hashed = f.read_text().strip().split(":", 1)
    assert user == "bob"
    assert verify_password("hunter2", hashed)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "$6$abc$def",
        "$7$x$AAAAAAAAAAAAAAAA$" + "A" * 88,
        f"$7${MAX_ITERATIONS + 1}$AAAAAAAAAAAAAAAA$" + "A" * 86 + "==",
        "$7$101$AAAA$" + "A" * 86 + "==",  # salt too short
        "$7$101$!!!!!!!!!!!!!!!!$" + "A" * 86 + "==",
    ],
)
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(BrokerConfigError):
        parse_hash(bad)


def test_limits_are_enforced() -> None:
    with pytest.raises(BrokerConfigError):
        hash_password("x", salt=b"short")
    with pytest.raises(BrokerConfigError):
        hash_password("x", iterations=MAX_ITERATIONS + 1)
    with pytest.raises(BrokerConfigError):
        hash_password("x", iterations=0)


def test_password_file_is_sorted_and_refuses_colons() -> None:
    h = hash_password("x", salt=bytes(SALT_LEN))
    assert render_passwd([("b", h), ("a", h)]) == f"a:{h}\nb:{h}\n"
    with pytest.raises(BrokerConfigError):
        render_passwd([("a:b", h)])
