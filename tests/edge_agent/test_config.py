from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import (
    MAX_CHANNELS,
    MAX_WINDOW,
    MIN_OUTBOX_BYTES,
    Delivery,
    PostKind,
    load_config,
)
from edge_agent.errors import ConfigError
from tests.edge_agent._support import COLLECTOR, config_text


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "model.tflite"
    p.write_bytes(b"not really a model")
    return p


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_full_example_parses(tmp_path: Path, model: Path) -> None:
    cfg = load_config(write(tmp_path, config_text(tmp_path / "state", 1883)))
    assert cfg.device.id == "dev-01"
    assert cfg.device.state_dir == tmp_path / "state"
    assert cfg.trust.delivery is Delivery.FLEET_ACK
    assert cfg.trust.collector_keys == (COLLECTOR.public_key,)
    (p,) = cfg.pipelines
    assert p.model == model
    assert p.postprocess.kind is PostKind.CLASSIFY
    assert p.postprocess.labels == ("normal", "imbalance", "bearing")
    assert p.window == 8
    assert p.hop == 4
    assert cfg.mqtt.client_id == "dev-01"


def test_docs_example_is_valid(tmp_path: Path) -> None:
    """The example in docs/agent.md must parse (models resolve to the shipped ones when present)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "agent.md"
    text = doc.read_text()
    start = text.index("```toml\n") + len("```toml\n")
    example = text[start : text.index("```", start)]
    (tmp_path / "models").mkdir()
    for name in ("vibration_int8.tflite", "vibration_f32.tflite"):
        (tmp_path / "models" / name).write_bytes(b"x")
    (tmp_path / "claim.token").write_text("00" * 32)
    cfg = load_config(write(tmp_path, example))
    assert cfg.pipelines


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('id = "dev-01"', 'id = "Dev/01"', "device.id"),
        ('fleet = "demo"', 'fleet = "de+mo"', "device.fleet"),
        ("port = 1", "port = 70000 #", "mqtt.port"),
        ("window = 8", "window = 0", "pipeline[0].window"),
        ("window = 8", f"window = {MAX_WINDOW + 1}", "pipeline[0].window"),
        ("hop = 4", "hop = 9", "pipeline[0].hop"),
        ('delivery = "fleet-ack"', 'delivery = "maybe"', "trust.delivery"),
        ('kind = "classify"', 'kind = "guess"', "pipeline[0].postprocess.kind"),
        (
            'labels = ["normal", "imbalance", "bearing"]',
            'labels = ["a", "a"]',
            "pipeline[0].postprocess.labels",
        ),
        ('model = "model.tflite"', 'model = "missing.tflite"', "pipeline[0].model"),
        ('protocol = "frames"', 'protocol = "smoke"', "pipeline[0].source.protocol"),
        ('name = "vib"', 'name = "vib"\nhopp = 3', "pipeline[0].hopp"),
        ("resend_after_s = 2.0", "resend_after_s = 2.0\ncolour = 1", "mqtt.colour"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, model: Path, old: str, new: str, key: str) -> None:
    text = config_text(tmp_path / "state", 1)
    assert old in text
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text.replace(old, new, 1)))
    assert exc.value.key == key
    assert str(exc.value).startswith(key)


def test_fleet_ack_needs_collector_keys(tmp_path: Path, model: Path) -> None:
    text = config_text(tmp_path / "s", 1).replace(f'collector_keys = ["{COLLECTOR.public_key.hex()}"]', "")
    with pytest.raises(ConfigError, match="collector"):
        load_config(write(tmp_path, text))
    cfg = load_config(write(tmp_path, text.replace('"fleet-ack"', '"broker-ack"')))
    assert cfg.trust.delivery is Delivery.BROKER_ACK


def test_limits(tmp_path: Path, model: Path) -> None:
    base = config_text(tmp_path / "s", 1)
    too_small = base + f"\n[outbox]\nmax_bytes = {MIN_OUTBOX_BYTES - 1}\n"
    # [outbox] after [[pipeline]] would belong to the array: put it before.
    too_small = base.replace("[heartbeat]", f"[outbox]\nmax_bytes = {MIN_OUTBOX_BYTES - 1}\n\n[heartbeat]")
    with pytest.raises(ConfigError, match=r"outbox\.max_bytes"):
        load_config(write(tmp_path, too_small))
    chans = ", ".join(f'"c{i}"' for i in range(MAX_CHANNELS + 1))
    with pytest.raises(ConfigError, match="channels"):
        load_config(write(tmp_path, base.replace('channels = ["ax", "ay", "az"]', f"channels = [{chans}]")))


def test_not_toml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[device\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="device"):
        load_config(write(tmp_path, ""))


def test_scale_offset(tmp_path: Path, model: Path) -> None:
    text = config_text(tmp_path / "s", 1, pipeline_extra="scale = [1.0, 2.0, 0.5]\noffset = 1")
    (p,) = load_config(write(tmp_path, text)).pipelines
    assert p.scale == (1.0, 2.0, 0.5)
    assert p.offset == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.scale"):
        load_config(write(tmp_path, config_text(tmp_path / "s", 1, pipeline_extra="scale = [1.0]")))
