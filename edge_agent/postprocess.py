"""Postprocessing: output tensors (already dequantised and flattened) to the ``out`` map of a result.

Every kind puts all output tensors, concatenated in output order, in ``values`` (docs/protocol.md §3 key 10),
and adds its own fields:

* ``classify``: ``label`` (the arg-max label, or ``unknown_label`` when its score is below
  ``threshold``), ``score`` (the top score), and with ``top_k > 0`` a ``top`` list of
  ``{"label", "score"}`` maps, best first. The first output must have one score per label.
* ``regress``: ``values`` only.
* ``anomaly``: ``score`` (the first output value) and ``anomaly`` (``score > threshold``).
* ``raw``: ``values`` only.

Pure: no numpy. A non-finite output value cannot be encoded (docs/protocol.md §3: no NaN, no infinities)
and is an :class:`~edge_agent.errors.InferenceError` for the caller to count and skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edge_agent.config import PostKind, PostprocessConfig
from edge_agent.errors import ConfigError, InferenceError


def check_outputs(spec: PostprocessConfig, output_sizes: Sequence[int]) -> None:
    """At start: does the model's output fit the postprocessing? (ConfigError naming the key if not)."""
    if spec.kind is PostKind.CLASSIFY and (not output_sizes or output_sizes[0] != len(spec.labels)):
        got = output_sizes[0] if output_sizes else 0
        raise ConfigError(
            "postprocess.labels", f"{len(spec.labels)} labels for a model whose first output has {got} values"
        )
    if spec.kind is PostKind.ANOMALY and (not output_sizes or output_sizes[0] < 1):
        raise ConfigError("postprocess.kind", "anomaly needs a model with at least one output value")


def postprocess(spec: PostprocessConfig, outputs: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The ``out`` map for one inference."""
    values = [float(v) for out in outputs for v in out]
    for v in values:
        if not math.isfinite(v):
            raise InferenceError("the model produced a NaN or infinite value")
    result: dict[str, Any] = {"values": values}
    if spec.kind is PostKind.CLASSIFY:
        scores = [float(v) for v in outputs[0]]
        best = max(range(len(scores)), key=scores.__getitem__)
        score = scores[best]
        below = spec.threshold is not None and score < spec.threshold
        result["label"] = spec.unknown_label if below else spec.labels[best]
        result["score"] = score
        if spec.top_k:
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: spec.top_k]
            result["top"] = [{"label": spec.labels[i], "score": scores[i]} for i in order]
    elif spec.kind is PostKind.ANOMALY:
        score = values[0]
        assert spec.threshold is not None  # config guarantees it
        result["score"] = score
        result["anomaly"] = score > spec.threshold
    return result
