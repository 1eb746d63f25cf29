"""Loading the shared test vectors (docs/protocol.md §8, §9) from ../shared/vectors and from tests/vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_VECTORS = ROOT.parent / "shared" / "vectors"
LOCAL_VECTORS = Path(__file__).resolve().parent / "vectors"


def vector_files(name: str) -> list[Path]:
    """The vector file ``name`` from every place it lives: ../shared/vectors (when laid beside the
    checkout, as in CI) and the copy in tests/vectors, so that a checkout alone still tests them."""
    paths = [d / name for d in (SHARED_VECTORS, LOCAL_VECTORS) if (d / name).is_file()]
    assert LOCAL_VECTORS / name in paths, f"tests/vectors/{name} is missing"
    return paths


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def decode_value(x: Any) -> Any:
    """The vectors' JSON notation: {'hex': ...} bytes, {'imap': [[k, v]]} int-keyed map, {'map': {}}."""
    if isinstance(x, dict):
        if "hex" in x:
            return bytes.fromhex(x["hex"])
        if "imap" in x:
            return {int(k): decode_value(v) for k, v in x["imap"]}
        if "map" in x:
            return {k: decode_value(v) for k, v in x["map"].items()}
    if isinstance(x, list):
        return [decode_value(i) for i in x]
    return x
