"""Inference with the shipped models in whichever runtime is installed.

Both runtimes run these: ai-edge-litert in .venv, tflite-runtime via tools/test-tflite-runtime.sh.
"""

from __future__ import annotations

from pathlib import Path

import blake3
import numpy as np
import pytest

from edge_agent.config import shipped_model
from edge_agent.errors import ModelError, RuntimeMissing
from edge_agent.inference import RUNTIME_ENV, TFLiteEngine, load_runtime

pytestmark = pytest.mark.integration

ROWS = [(0.01 * (i % 13), -0.02 * (i % 5), 1.0 + 0.003 * i) for i in range(128)]


def test_float_model_input_bytes_are_the_tensor() -> None:
    path = shipped_model("vibration_f32.tflite")
    e = TFLiteEngine(path)
    assert e.model_hash == blake3.blake3(path.read_bytes()).digest()
    assert e.input.shape == (1, 128, 3)
    assert e.input.dtype == "float32"
    r = e.infer(ROWS)
    assert r.input_bytes == np.asarray(ROWS, dtype="<f4").reshape(1, 128, 3).tobytes()
    (scores,) = r.outputs
    assert len(scores) == 3
    assert abs(sum(scores) - 1.0) < 1e-3


def test_int8_model_quantises_and_dequantises() -> None:
    e = TFLiteEngine(shipped_model("vibration_int8.tflite"))
    assert e.input.dtype == "int8"
    assert e.input.quantised
    scale, zp = e.input.scale, e.input.zero_point
    r = e.infer(ROWS)
    x = np.asarray(ROWS, dtype=np.float32)
    q = np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127).astype(np.int8)
    assert r.input_bytes == q.tobytes()
    assert len(r.input_bytes) == 128 * 3
    (scores,) = r.outputs
    out = e.outputs[0]
    for s in scores:  # (q - zp) * scale: multiples of the output scale in [0, 1]
        assert 0.0 <= s <= 1.0
        assert abs(round(s / out.scale) * out.scale - s) < 1e-6


def test_int8_and_float_agree_on_the_label() -> None:
    f = TFLiteEngine(shipped_model("vibration_f32.tflite")).infer(ROWS).outputs[0]
    q = TFLiteEngine(shipped_model("vibration_int8.tflite")).infer(ROWS).outputs[0]
    assert max(range(3), key=f.__getitem__) == max(range(3), key=q.__getitem__)


def test_saturating_input_is_clipped_not_wrapped() -> None:
    e = TFLiteEngine(shipped_model("vibration_int8.tflite"))
    r = e.infer([(1e6, -1e6, 0.0)] * 128)
    arr = np.frombuffer(r.input_bytes, dtype=np.int8).reshape(128, 3)
    assert (arr[:, 0] == 127).all()
    assert (arr[:, 1] == -128).all()


def test_window_mismatch_is_a_clear_error() -> None:
    e = TFLiteEngine(shipped_model("vibration_int8.tflite"))
    e.check_window(128, 3)
    with pytest.raises(ModelError, match=r"takes input \[1, 128, 3\]"):
        e.check_window(64, 3)


def test_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="does not load"):
        TFLiteEngine(bad)
    with pytest.raises(ModelError, match="cannot read"):
        TFLiteEngine(tmp_path / "missing.tflite")


def test_unknown_forced_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_agent.inference as inf

    monkeypatch.setattr(inf, "_runtime_cache", None)
    monkeypatch.setenv(RUNTIME_ENV, "tensorflow")
    with pytest.raises(RuntimeMissing):
        load_runtime()
