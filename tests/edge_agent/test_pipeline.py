"""A pipeline with the real shipped model: window → tensor → result draft, hashes recomputed independently."""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import cbor2
import numpy as np
import pytest

from edge_agent.config import PipelineConfig, PostKind, PostprocessConfig, SourceConfig, shipped_model
from edge_agent.inference import Inference
from edge_agent.pipeline import LatencyStats, Pipeline, build_engine
from edge_protocol.payload import Key, Kind
from firmware_bridge.samples import Sample
from tests.edge_agent._support import DEV, FLEET, FakeEngine

LABELS = ("normal", "imbalance", "bearing")


def cfg(model: Path, hop: int = 64, **kw: object) -> PipelineConfig:
    return PipelineConfig(
        name="vib",
        model=model,
        source=SourceConfig("/dev/null"),
        channels=("ax", "ay", "az"),
        window=128,
        hop=hop,
        postprocess=PostprocessConfig(PostKind.CLASSIFY, LABELS, top_k=3),
        **kw,  # type: ignore[arg-type]
    )


def samples(n: int) -> list[Sample]:
    out = []
    for i in range(n):
        v = (0.05 * np.sin(i / 3.0), 0.04 * np.cos(i / 5.0), 1.0 + 0.01 * np.sin(i))
        raw = struct.pack("<I3f", i * 2500, *v)
        vals = struct.unpack("<3f", raw[4:])
        out.append(Sample(i * 2500, tuple(float(x) for x in vals), raw))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("name", ["vibration_f32.tflite", "vibration_int8.tflite"])
def test_result_draft_hashes(name: str) -> None:
    c = cfg(shipped_model(name))
    p = Pipeline(c, build_engine(c), FLEET, DEV)
    s = samples(256)
    drafts = p.process(s, ("ax", "ay", "az"))
    assert len(drafts) == 3  # (256 - 128) / 64 + 1
    for k, d in enumerate(drafts):
        win = s[k * 64 : k * 64 + 128]
        body = d.body
        assert d.kind is Kind.RESULT
        assert d.topic == f"edgeseal/v1/{FLEET}/{DEV}/res/vib"
        assert body[Key.MODEL] == blake3.blake3(shipped_model(name).read_bytes()).digest()
        assert body[Key.SRC] == blake3.blake3(b"".join(x.raw for x in win)).digest()
        x = np.asarray([w.values for w in win], dtype=np.float32).reshape(1, 128, 3)
        eng = p.engine
        if eng.input.quantised:
            x = np.clip(np.rint(x / np.float32(eng.input.scale)) + eng.input.zero_point, -128, 127).astype(
                np.int8
            )
        assert body[Key.INPUT] == blake3.blake3(x.astype(x.dtype.newbyteorder("<")).tobytes()).digest()
        assert body[Key.CFG] == blake3.blake3(cbor2.dumps(c.processing_map(), canonical=True)).digest()
        out = body[Key.OUT]
        assert isinstance(out, dict)
        assert out["label"] in LABELS
        assert next(t["label"] for t in out["top"]) == out["label"]
        assert isinstance(body[Key.LAT], int)


@pytest.mark.integration
def test_channel_order_from_hello_is_followed() -> None:
    c = cfg(shipped_model("vibration_f32.tflite"), hop=128)
    p = Pipeline(c, build_engine(c), FLEET, DEV)
    s = samples(128)
    swapped = [Sample(x.t_us, (x.values[2], x.values[0], x.values[1]), x.raw) for x in s]
    a = p.process(s, ("ax", "ay", "az"))[0].body[Key.INPUT]
    b = p.process(swapped, ("az", "ax", "ay"))[0].body[Key.INPUT]
    assert a == b
    assert p.process(s, ("gx", "gy", "gz")) == []
    assert p.counters.bad_channels == 1


class NanEngine(FakeEngine):
    def infer(self, rows: object) -> Inference:
        return Inference(b"", ((float("nan"), 0.0, 0.0),), 1)


def test_non_finite_outputs_are_counted_and_skipped(tmp_path: Path) -> None:
    c = cfg(tmp_path / "m")
    p = Pipeline(c, NanEngine(window=128), FLEET, DEV)
    assert p.process(samples(256), ("ax", "ay", "az")) == []
    assert p.counters.errors == 3
    assert p.counters.results == 0


def test_paused_pipeline_makes_no_results(tmp_path: Path) -> None:
    p = Pipeline(cfg(tmp_path / "m"), FakeEngine(window=128), FLEET, DEV)
    p.paused.set()
    assert p.process(samples(256), ("ax", "ay", "az")) == []
    assert p.counters.paused_windows == 3
    p.paused.clear()
    assert len(p.process(samples(128), ("ax", "ay", "az"))) == 2


def test_latency_percentiles() -> None:
    stats = LatencyStats(size=4)
    assert stats.percentile(50) == 0
    for v in (10, 20, 30, 40, 1000):
        stats.add(v)
    assert stats.percentile(50) == 30
    assert stats.percentile(95) == 1000
