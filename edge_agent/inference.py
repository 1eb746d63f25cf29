"""Inference: a window of floats in, output tensors (dequantised, flattened) out.

The runtime is whichever TFLite interpreter is installed, tried in this order (docs/agent.md "Runtimes"):
``ai_edge_litert.interpreter`` (LiteRT, works with numpy 2), then ``tflite_runtime.interpreter``
(2.14, needs numpy<2). ``EDGESEAL_TFLITE_RUNTIME=ai-edge-litert|tflite-runtime`` forces one.

Invariants of :meth:`TFLiteEngine.infer`:

* The model is loaded from the very bytes that are hashed into ``model`` (``model_content=``), so the
  hash names exactly what runs.
* ``input_bytes`` are the bytes of the array handed to ``set_tensor``: C order, little endian, after
  quantisation (``q = clip(round(x / scale) + zero_point)``) for int8/uint8 inputs
  (docs/protocol.md §3 key 9).
* Outputs of integer type are dequantised with their own scale and zero point: ``(q - zp) * scale``.

numpy and the runtime are imported lazily: ``edge-agent --help`` must not pay ~50 MB and a second.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import blake3

from edge_agent.errors import InferenceError, ModelError, RuntimeMissing

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

RUNTIME_ENV = "EDGESEAL_TFLITE_RUNTIME"
# (distribution name, interpreter module), in order of preference (docs/agent.md "Runtimes").
RUNTIMES: tuple[tuple[str, str], ...] = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
)
# The models this agent is for are KiB to a few MiB (MobileNet v2 int8 is 3.5 MB); 256 MiB bounds a
# mistaken path to a huge file before it is read into memory.
MAX_MODEL_BYTES = 256 * 1024 * 1024
_SUPPORTED_DTYPES = ("float32", "int8", "uint8")


@dataclass(frozen=True)
class Runtime:
    name: str  # distribution name
    version: str
    interpreter: Any  # the Interpreter class


_runtime_cache: Runtime | None = None


def load_runtime() -> Runtime:
    """Import the TFLite runtime (once); :class:`RuntimeMissing` when neither is installed."""
    global _runtime_cache  # noqa: PLW0603 (a process-wide import cache)
    if _runtime_cache is not None:
        return _runtime_cache
    forced = os.environ.get(RUNTIME_ENV, "").strip()
    candidates = [r for r in RUNTIMES if not forced or r[0] == forced]
    if not candidates:
        raise RuntimeMissing(
            f"{RUNTIME_ENV}={forced!r} is not a known runtime",
            hint=f"use one of {', '.join(r[0] for r in RUNTIMES)}",
        )
    problems = []
    for dist, module in candidates:
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # ImportError, or numpy ABI errors raised as AttributeError etc.
            problems.append(f"{dist}: {type(e).__name__}: {e}")
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        _runtime_cache = Runtime(dist, version, mod.Interpreter)
        return _runtime_cache
    raise RuntimeMissing(
        "no TFLite runtime can be imported (" + "; ".join(problems) + ")",
        hint="pip install ai-edge-litert, or tflite-runtime==2.14.* with numpy<2",
    )


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantised(self) -> bool:
        return self.dtype in ("int8", "uint8")

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def describe(self) -> str:
        q = f" scale={self.scale:g} zero_point={self.zero_point}" if self.quantised else ""
        return f"{self.name} {list(self.shape)} {self.dtype}{q}"


@dataclass(frozen=True)
class Inference:
    input_bytes: bytes
    outputs: tuple[tuple[float, ...], ...]
    latency_us: int


class Engine(Protocol):
    """What a pipeline needs from a model: its hash, its input layout, and ``infer``."""

    @property
    def model_hash(self) -> bytes: ...

    @property
    def input(self) -> TensorInfo: ...

    def infer(self, rows: Sequence[Sequence[float]]) -> Inference: ...


def _tensor_info(d: dict[str, Any]) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    dtype = getattr(d["dtype"], "__name__", str(d["dtype"]))
    return TensorInfo(str(d["name"]), tuple(int(x) for x in d["shape"]), dtype, float(scale), int(zp))


class TFLiteEngine:
    """One TFLite model in one interpreter. Not thread-safe: one pipeline thread uses it."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            if size > MAX_MODEL_BYTES:
                raise ModelError(f"model {path} is {size} bytes, more than {MAX_MODEL_BYTES}")
            content = self.path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read model {path}: {e.strerror or e}") from e
        self._model_hash = blake3.blake3(content).digest()
        self.runtime = load_runtime()
        import numpy as np

        self._np = np
        try:
            self._interp = self.runtime.interpreter(model_content=content, num_threads=num_threads)
            self._interp.allocate_tensors()
            inputs = self._interp.get_input_details()
            outputs = self._interp.get_output_details()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"model {path} does not load in {self.runtime.name}: {e}") from e
        if len(inputs) != 1:
            raise ModelError(f"model {path} has {len(inputs)} inputs; a pipeline feeds exactly one")
        if not outputs:
            raise ModelError(f"model {path} has no outputs")
        self._in = _tensor_info(inputs[0])
        self._in_index = int(inputs[0]["index"])
        self.outputs = tuple(_tensor_info(d) for d in outputs)
        self._out_index = tuple(int(d["index"]) for d in outputs)
        for t in (self._in, *self.outputs):
            if t.dtype not in _SUPPORTED_DTYPES:
                raise ModelError(
                    f"model {path}: tensor {t.name} is {t.dtype}; supported: float32, int8, uint8"
                )
            if t.quantised and t.scale == 0.0:
                raise ModelError(
                    f"model {path}: tensor {t.name} is {t.dtype} without quantisation parameters"
                )
        self._in_dtype = np.dtype(self._in.dtype)
        self._le_dtype = self._in_dtype.newbyteorder("<")
        if self._in.quantised:
            info = np.iinfo(self._in_dtype)
            self._qmin, self._qmax = float(info.min), float(info.max)

    @property
    def model_hash(self) -> bytes:
        return self._model_hash

    @property
    def input(self) -> TensorInfo:
        return self._in

    def check_window(self, window: int, channels: int, where: str = "") -> None:
        """A clear error at start when the window cannot fill the model's input tensor."""
        if self._in.size != window * channels:
            raise ModelError(
                f"{where}model {self.path.name} takes input {list(self._in.shape)} "
                f"({self._in.size} values) but the window gives {window} x {channels} = {window * channels}",
                hint="set window and channels to match the model's input shape",
            )

    def _prepare(self, rows: Sequence[Sequence[float]]) -> npt.NDArray[Any]:
        np = self._np
        x = np.asarray(rows, dtype=np.float32)
        if x.size != self._in.size:
            raise InferenceError(f"window of {x.size} values does not fill input {list(self._in.shape)}")
        x = x.reshape(self._in.shape)
        if self._in.quantised:
            q = np.rint(x / np.float32(self._in.scale)) + self._in.zero_point
            arr: npt.NDArray[Any] = np.ascontiguousarray(
                np.clip(q, self._qmin, self._qmax).astype(self._in_dtype)
            )
            return arr
        return cast("npt.NDArray[Any]", np.ascontiguousarray(x))

    def infer(self, rows: Sequence[Sequence[float]]) -> Inference:
        arr = self._prepare(rows)
        input_bytes = arr.astype(self._le_dtype, copy=False).tobytes(order="C")
        t0 = time.perf_counter_ns()
        try:
            self._interp.set_tensor(self._in_index, arr)
            self._interp.invoke()
            raw_outputs = [self._interp.get_tensor(i) for i in self._out_index]
        except (ValueError, RuntimeError) as e:
            raise InferenceError(f"inference failed: {e}") from e
        latency_us = (time.perf_counter_ns() - t0) // 1000
        return Inference(
            input_bytes,
            tuple(self._dequantise(t, o) for t, o in zip(self.outputs, raw_outputs, strict=True)),
            latency_us,
        )

    def _dequantise(self, info: TensorInfo, value: np.ndarray[Any, Any]) -> tuple[float, ...]:
        np = self._np
        flat = value.reshape(-1)
        if info.quantised:
            flat = (flat.astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)
        return tuple(float(v) for v in flat.tolist())


def describe_model(path: Path, num_threads: int = 1) -> tuple[TFLiteEngine, list[str]]:
    """Load a model and describe its tensors (for ``edge-agent check``)."""
    engine = TFLiteEngine(path, num_threads)
    lines = [f"input  {engine.input.describe()}"]
    lines += [f"output {o.describe()}" for o in engine.outputs]
    return engine, lines
