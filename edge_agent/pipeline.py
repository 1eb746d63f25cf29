"""A pipeline: samples → window → inference → postprocess → a result draft ready to seal.

The pipeline makes *drafts* (the kind-specific payload keys of docs/protocol.md §3); the outbox seals them,
so the chain fields (boot, seq, prev) are given in the one transaction that also stores the message.
A window either becomes one complete draft or nothing (an inference error or a non-finite output is
counted and skipped): nothing half-done is ever sealed.

The sample source is an interface (:class:`SampleSource`): firmware_bridge's ``SensorLink`` in the
agent, an in-memory list in unit tests.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import blake3
import cbor2

from edge_agent.config import PipelineConfig
from edge_agent.errors import AgentError, ConfigError, InferenceError
from edge_agent.inference import Engine
from edge_agent.outbox import Draft
from edge_agent.postprocess import postprocess
from edge_agent.window import Window, Windower, channel_indices
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic
from firmware_bridge.samples import Sample

log = logging.getLogger(__name__)

# Latency percentiles are over the last 1024 inferences: ~2.5 min at 6.25 results/s (window 128, hop 64
# at 400 Hz), long enough for a stable p95 and short enough to follow a change.
LATENCY_WINDOW = 1024


class SampleSource(Protocol):
    """Where samples come from (``firmware_bridge.link.SensorLink`` fits)."""

    @property
    def channels(self) -> tuple[str, ...] | None: ...

    def read_samples(self, timeout_s: float) -> list[Sample]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class LatencyStats:
    """The last :data:`LATENCY_WINDOW` latencies (µs) and their percentiles; thread-safe."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._values: deque[int] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, us: int) -> None:
        with self._lock:
            self._values.append(us)

    def percentile(self, p: float) -> int:
        """Nearest-rank percentile, 0 when empty."""
        with self._lock:
            values = sorted(self._values)
        if not values:
            return 0
        rank = max(1, math.ceil(p / 100.0 * len(values)))
        return values[rank - 1]


def config_hash(cfg: PipelineConfig) -> bytes:
    """``cfg`` (docs/protocol.md §3 key 11): BLAKE3 of the canonical CBOR of the processing map."""
    return blake3.blake3(cbor2.dumps(cfg.processing_map(), canonical=True)).digest()


@dataclass
class PipelineCounters:
    windows: int = 0
    results: int = 0
    errors: int = 0  # inference failures and non-finite outputs, counted and skipped
    paused_windows: int = 0  # windows thrown away while paused
    bad_channels: int = 0  # batches skipped because the source lacks a configured channel


class Pipeline:
    """One configured pipeline with its model; ``process`` is called by one reader thread."""

    def __init__(self, cfg: PipelineConfig, engine: Engine, fleet: str, dev: str) -> None:
        self.cfg = cfg
        self.engine = engine
        self.topic = device_topic(fleet, dev, Channel.RESULT, cfg.name)
        self.cfg_hash = config_hash(cfg)
        self.windower = Windower(
            size=cfg.window, hop=cfg.hop, n_channels=len(cfg.channels), scale=cfg.scale, offset=cfg.offset
        )
        self.counters = PipelineCounters()
        self.latency = LatencyStats()
        self.paused = threading.Event()
        self._layout: tuple[str, ...] | None = None
        self._layout_error: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def follow_layout(self, channels: tuple[str, ...] | None) -> bool:
        """Map the configured channels onto the source's (a new HELLO); False while they do not fit."""
        if channels == self._layout and self._layout_error is None:
            return True
        if channels == self._layout and self._layout_error is not None:
            return False
        self._layout = channels
        try:
            self.windower.select(channel_indices(self.cfg.channels, channels))
        except ConfigError as e:
            self._layout_error = e.problem
            log.error("pipeline %s: %s", self.name, e.problem)
            return False
        self._layout_error = None
        return True

    def process(self, samples: Sequence[Sample], channels: tuple[str, ...] | None = None) -> list[Draft]:
        """Windows completed by ``samples``, each inferred and postprocessed into a result draft."""
        if not self.follow_layout(channels):
            self.counters.bad_channels += 1
            return []
        drafts = []
        for window in self.windower.push(samples):
            self.counters.windows += 1
            if self.paused.is_set():
                self.counters.paused_windows += 1
                continue
            draft = self.draft_for(window)
            if draft is not None:
                drafts.append(draft)
        return drafts

    def draft_for(self, window: Window) -> Draft | None:
        try:
            inference = self.engine.infer(window.rows)
            out = postprocess(self.cfg.postprocess, inference.outputs)
        except InferenceError as e:
            self.counters.errors += 1
            if self.counters.errors == 1 or self.counters.errors % 1000 == 0:
                log.warning("pipeline %s: %s (%d so far)", self.name, e, self.counters.errors)
            return None
        self.latency.add(inference.latency_us)
        self.counters.results += 1
        body: dict[int, object] = {
            Key.PIPE: self.cfg.name,
            Key.MODEL: self.engine.model_hash,
            Key.INPUT: blake3.blake3(inference.input_bytes).digest(),
            Key.OUT: out,
            Key.CFG: self.cfg_hash,
            Key.SRC: window.src_hash(),
            Key.LAT: inference.latency_us,
        }
        return Draft(Kind.RESULT, body, self.topic)

    def reset(self) -> None:
        """Forget the partial window (the serial link reconnected: samples are not contiguous)."""
        self.windower.reset()


def build_engine(cfg: PipelineConfig) -> Engine:
    """Load a pipeline's model and check that its tensors fit the window and the postprocessing."""
    from edge_agent.inference import TFLiteEngine
    from edge_agent.postprocess import check_outputs

    where = f"pipeline {cfg.name}: "
    engine = TFLiteEngine(cfg.model, cfg.num_threads)
    engine.check_window(cfg.window, len(cfg.channels), where)
    try:
        check_outputs(cfg.postprocess, [o.size for o in engine.outputs])
    except ConfigError as e:
        raise AgentError(f"{where}{e}") from e
    return engine
