"""edge_agent: the device side of edgeseal (docs/design-notes.md).

Serial sensors → windows → TFLite → results sealed into a per-device hash chain, stored in a durable
outbox and published over one MQTT session. Entry point: ``edge-agent`` (:mod:`edge_agent.cli`).
Heavy modules (numpy, the TFLite runtime, paho) are imported where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"
