"""The collector's configuration and limits (docs/collector.md): one frozen dataclass, every limit a
named constant saying where its number comes from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge_protocol.topics import (
    DEVICE_PUBLISHES,
    channel_filter,
    fleet_prefix,
)
from fleet_cli.collector.store import (
    QUARANTINE_MAX_ROWS,
)
from fleet_cli.errors import FleetError
from fleet_cli.mqtt.connection import RECEIVE_MAXIMUM
from fleet_cli.mqtt.settings import MqttSettings, MqttVersion

log = logging.getLogger(__name__)


# A broker can have at most 65,535 QoS 1 deliveries unacknowledged towards one client (16-bit packet
# ids, MQTT §2.2.1), and the collector acknowledges only after storing: the queue never holds more.
QUEUE_MAX = 65_535
# docs/collector.md "Acks and back-pressure": commit every 500 messages or 50 ms, whichever comes first, and
# at once when the queue runs dry (a lone message is not kept waiting; PUBACKs wait for the commit).
BATCH_MAX_MESSAGES = 500
BATCH_MAX_DELAY_S = 0.05
# A seq missing this long is reported as a GAP (docs/protocol.md §6). Agents resend unacked results after
# their own timeout (tens of seconds), so anything shorter reports gaps that heal moments later.
REORDER_TIMEOUT_S = 30.0
# At most one ack per (dev, boot) this often: with a device sending 10 results/s an ack covers ~2.
ACK_INTERVAL_S = 0.2
# Retained aggregates on P/_fleet/agg/summary.
AGG_INTERVAL_S = 10.0
# How often the worker logs throughput and verdict counts.
LOG_INTERVAL_S = 30.0
# How often the chain verifier is asked for expired gaps.
EXPIRE_INTERVAL_S = 1.0
# Registry answers (revoked? bound key?) are cached this long: a revocation takes effect within it.
REGISTRY_RECHECK_S = 5.0
# Registry answers kept at most for this many device ids: ids named on the device topics are not all
# registered ones (anyone with write access can invent them), so the cache is bounded, and cleared
# when full (a fleet this size re-reads a few entries; each read is one indexed SQLite lookup).
DIRECTORY_CACHE = 65_536
# Distinct labels counted per device in the stats and the retained aggregate: a device chooses its
# labels, so beyond this many further ones are counted under OTHER_LABEL.
MAX_LABELS_PER_DEVICE = 64
OTHER_LABEL = "(other)"
# Latency samples (t_received - t_device of results) kept for p50/p95.
LATENCY_SAMPLES = 10_000
# Window over which msgs/s is measured.
RATE_WINDOW_S = 10.0
# Signature checks and strict decoding run in this many worker processes (0: in the collector's own
# worker thread). One is right for the 2-core target: paho's network thread and the store share one
# core (one GIL), the signatures (~41 µs each with PyNaCl, the largest cost) get the other.
VERIFY_WORKERS = 1
# Messages sent to a verify worker at once. Big enough that the pickling and pipe round trip (~50 µs)
# is ~1 µs per message; small next to Mosquitto's max_inflight_messages (100 in the rendered config)
# so that verifying starts while the rest of the window is still arriving.
CHUNK_MAX_MESSAGES = 64
# Queue items the worker takes at once before its per-iteration bookkeeping (deadlines, batch, acks).
BURST_MAX = 256
# Stopping: how long the worker waits for chunks still at the verify workers before it commits what
# it has (what is not back by then is not PUBACKed, so the broker keeps it). Below stop()'s 5 s.
STOP_DRAIN_S = 3.0
# The chain verifier keeps this many seqs below each boot's contiguous head in memory; older ones are
# looked up in the store when needed (a resend of an old message). Bounds the collector's memory for
# a long-running fleet; 1024 is ~17 min of a device sending one message a second.
CHAIN_KEEP_RECENT = 1024

# Device channels the collector subscribes to: all a device publishes; never cmd/ack, never _fleet/.
SUBSCRIBED = tuple(channel_filter(c) for c in DEVICE_PUBLISHES)


class CollectorError(FleetError):
    """The collector cannot run (store, broker) or stopped on an error."""


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectorConfig:
    fleet: str
    store_path: Path
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # secret: not shown by repr
    tls_ca: Path | None = None
    protocol: MqttVersion = MqttVersion.AUTO
    client_id: str = ""  # "" = derived from the username (brokers with use_username_as_clientid ignore it)
    share_group: str | None = None  # subscribe through $share/GROUP/...
    batch_max_messages: int = BATCH_MAX_MESSAGES
    batch_max_delay_s: float = BATCH_MAX_DELAY_S
    reorder_timeout_s: float = REORDER_TIMEOUT_S
    ack_interval_s: float = ACK_INTERVAL_S
    publish_verified: bool = True
    agg_interval_s: float = AGG_INTERVAL_S
    log_interval_s: float = LOG_INTERVAL_S
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    receive_maximum: int = RECEIVE_MAXIMUM
    verify_workers: int = VERIFY_WORKERS  # processes verifying signatures; 0 = in the worker thread
    chain_keep_recent: int = CHAIN_KEEP_RECENT
    quarantine_max: int = QUARANTINE_MAX_ROWS  # rows; the store evicts (and counts) beyond it

    def __repr__(self) -> str:
        return (
            f"CollectorConfig(fleet={self.fleet!r}, store={str(self.store_path)!r},"
            f" broker={self.host}:{self.port}, user={self.username!r}, share={self.share_group!r})"
        )

    def mqtt_settings(self) -> MqttSettings:
        client_id = self.client_id or f"fleet-collector-{self.username or 'anon'}"
        return MqttSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            tls_ca=self.tls_ca,
            protocol=self.protocol,
            client_id=client_id,
            persistent=True,
        )

    def filters(self) -> list[str]:
        p = fleet_prefix(self.fleet)
        share = f"$share/{self.share_group}/" if self.share_group else ""
        return [f"{share}{p}/+/{c}" for c in SUBSCRIBED]
