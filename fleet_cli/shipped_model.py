"""The model edge_agent ships (``edge_agent/models/``) and what its sidecar says about it.

``vibration.json`` (docs/model.md) states the facts an agent's pipeline must match: the labels in
output order, the input channels, the sample rate, the window and the hop. ``fleet flash`` and
``fleet demo`` both configure agents from it, never from numbers of their own. The directory is found
without importing edge_agent (fleet_cli must not import it: tests/test_imports.py).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from fleet_cli.errors import FleetError

SIDECAR = "vibration.json"
INT8_MODEL = "vibration_int8.tflite"


@dataclass(frozen=True)
class ModelFacts:
    labels: tuple[str, ...]  # in the order of the model's outputs
    channels: tuple[str, ...]  # in the order of the model's input columns
    hz: float  # the sample rate it was trained at
    window: int  # samples per inference
    hop: int  # samples between two windows


def models_dir() -> Path:
    """``edge_agent/models`` of the installed edge_agent package."""
    spec = importlib.util.find_spec("edge_agent")
    if spec is None or not spec.submodule_search_locations:
        raise FleetError(
            "the edge_agent package is not installed: no model to ship", hint="pip install 'edgeseal[agent]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def read_facts(models: Path) -> ModelFacts:
    """The sidecar in ``models``; a FleetError naming the file when it cannot be read or lacks a fact."""
    path = models / SIDECAR
    try:
        doc = json.loads(path.read_bytes())
        return ModelFacts(
            labels=tuple(str(x) for x in doc["labels"]),
            channels=tuple(str(x) for x in doc["channels"]),
            hz=float(doc["hz"]),
            window=int(doc["window"]),
            hop=int(doc["hop"]),
        )
    except OSError as e:
        raise FleetError(f"cannot read the model description {path}: {e.strerror or e}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise FleetError(f"the model description {path} is not usable: {e!r}") from e
