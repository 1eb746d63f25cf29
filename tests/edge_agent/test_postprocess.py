from __future__ import annotations

import pytest

from edge_agent.config import PostKind, PostprocessConfig
from edge_agent.errors import ConfigError, InferenceError
from edge_agent.postprocess import check_outputs, postprocess

LABELS = ("normal", "imbalance", "bearing")


def test_classify_label_score_top() -> None:
    spec = PostprocessConfig(PostKind.CLASSIFY, LABELS, top_k=2)
    out = postprocess(spec, [(0.1, 0.7, 0.2)])
    assert out == {
        "values": [0.1, 0.7, 0.2],
        "label": "imbalance",
        "score": 0.7,
        "top": [{"label": "imbalance", "score": 0.7}, {"label": "bearing", "score": 0.2}],
    }


def test_classify_threshold() -> None:
    spec = PostprocessConfig(PostKind.CLASSIFY, LABELS, threshold=0.8)
    assert postprocess(spec, [(0.1, 0.7, 0.2)])["label"] == "unknown"
    assert postprocess(spec, [(0.05, 0.9, 0.05)])["label"] == "imbalance"


def test_regress_raw_anomaly() -> None:
    assert postprocess(PostprocessConfig(PostKind.REGRESS), [(1.5,), (2.0, 3.0)]) == {
        "values": [1.5, 2.0, 3.0]
    }
    assert postprocess(PostprocessConfig(PostKind.RAW), [(1.0, 2.0)]) == {"values": [1.0, 2.0]}
    spec = PostprocessConfig(PostKind.ANOMALY, threshold=0.5)
    assert postprocess(spec, [(0.7,)]) == {"values": [0.7], "score": 0.7, "anomaly": True}
    assert postprocess(spec, [(0.2,)])["anomaly"] is False


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_is_an_inference_error(bad: float) -> None:
    with pytest.raises(InferenceError):
        postprocess(PostprocessConfig(PostKind.RAW), [(1.0, bad)])


def test_output_size_must_match_labels() -> None:
    with pytest.raises(ConfigError, match="labels"):
        check_outputs(PostprocessConfig(PostKind.CLASSIFY, LABELS), [4])
    check_outputs(PostprocessConfig(PostKind.CLASSIFY, LABELS), [3])
