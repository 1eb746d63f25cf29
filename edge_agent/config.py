"""The agent's configuration: one TOML file, parsed into frozen dataclasses and validated at start.

Every problem is reported as :class:`~edge_agent.errors.ConfigError` naming the key
(``pipeline[0].window``) and what is wrong with it, so that ``edge-agent check`` can say it in one
line. Relative paths are resolved against the directory of the configuration file; a pipeline's
``model`` that is not found there is looked up among the models shipped in the package
(``edge_agent/models``), so ``model = "models/vibration_int8.tflite"`` works out of the box.

Unknown keys are errors too: a typo (``hopp = 32``) must not silently fall back to a default.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# A config file is a few KiB; anything beyond 1 MiB is not one (and must not be read into memory).
MAX_CONFIG_BYTES = 1024 * 1024
# Windows larger than 65536 samples (164 s at 400 Hz) are not what a microcontroller sensor feeds a
# small TFLite model; the bound keeps a typo from allocating gigabytes.
MAX_WINDOW = 65536
# At most 64 channels per pipeline: more than any MCU sample frame carries (a 1024-byte body,
# docs/firmware_bridge.md).
MAX_CHANNELS = 64
# A Pi-class device runs a handful of pipelines; 32 is generous and bounds threads and ports.
MAX_PIPELINES = 32
# The outbox must hold at least a few hundred results so a short outage loses nothing; 64 KiB is one
# maximal envelope (docs/protocol.md §2, MAX_ENVELOPE_BYTES).
MIN_OUTBOX_BYTES = 64 * 1024
# Default outbox bound: 64 MiB is ~300k results of ~220 bytes, about 14 h at 6 results/s, and small
# next to the SD card of any Pi.
DEFAULT_OUTBOX_BYTES = 64 * 1024 * 1024
# paho's QoS>0 queue is bounded by the 16-bit packet id space (MQTT 3.1.1 §2.3.1); stay well below.
MAX_INFLIGHT = 4096
DEFAULT_INFLIGHT = 256
# Labels travel in every classify result; more than 1000 classes is not an edge model any more.
MAX_LABELS = 1000
# A path in an error message is cut to this many characters: a whole line on a terminal, and no more
# of a mistyped or hostile multi-kilobyte value.
MAX_SHOWN_PATH = 200


class Delivery(str, enum.Enum):
    """When an outbox entry may be deleted (docs/protocol.md §5 "Delivery and acks")."""

    FLEET_ACK = "fleet-ack"  # a collector's signed ack covers it (default)
    BROKER_ACK = "broker-ack"  # the broker's PUBACK (no collector in the fleet)


class MqttVersion(str, enum.Enum):
    AUTO = "auto"  # MQTT 5, falling back to 3.1.1 when the broker refuses it
    V5 = "5"
    V311 = "3.1.1"


class Synchronous(str, enum.Enum):
    """SQLite's ``synchronous`` in WAL mode: NORMAL survives a killed process, FULL also power loss."""

    NORMAL = "normal"
    FULL = "full"


class PostKind(str, enum.Enum):
    CLASSIFY = "classify"
    REGRESS = "regress"
    ANOMALY = "anomaly"
    RAW = "raw"


class WireProtocol(str, enum.Enum):
    FRAMES = "frames"
    LINES = "lines"


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    fleet: str
    state_dir: Path


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""  # empty: the device id
    protocol: MqttVersion = MqttVersion.AUTO
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0  # no CONNACK this long after CONNECT: give up (and, in auto, try 3.1.1)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    max_inflight: int = DEFAULT_INFLIGHT
    resend_after_s: float = 30.0  # an entry not acked this long after sending is sent again
    backoff_min_s: float = 0.5  # reconnect backoff: doubles per failure, with +-50 % jitter
    backoff_max_s: float = 30.0

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None


@dataclass(frozen=True)
class TrustConfig:
    operator_key: bytes | None
    collector_keys: tuple[bytes, ...]
    delivery: Delivery


@dataclass(frozen=True)
class OutboxConfig:
    max_bytes: int = DEFAULT_OUTBOX_BYTES
    synchronous: Synchronous = Synchronous.NORMAL


@dataclass(frozen=True)
class SourceConfig:
    port: str
    baud: int = 115200
    protocol: WireProtocol = WireProtocol.FRAMES


@dataclass(frozen=True)
class PostprocessConfig:
    kind: PostKind
    labels: tuple[str, ...] = ()
    top_k: int = 0  # classify: how many (label, score) pairs go in ``top``; 0: none
    threshold: float | None = None  # classify: below it the label is ``unknown_label``; anomaly: above it
    unknown_label: str = "unknown"

    def as_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is PostKind.CLASSIFY:
            out["labels"] = list(self.labels)
            out["top_k"] = self.top_k
            out["unknown_label"] = self.unknown_label
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    model: Path
    source: SourceConfig
    channels: tuple[str, ...]
    window: int
    hop: int
    postprocess: PostprocessConfig
    scale: tuple[float, ...] = ()  # per channel: value * scale + offset; empty: 1.0
    offset: tuple[float, ...] = ()
    num_threads: int = 1

    def processing_map(self) -> dict[str, Any]:
        """The map whose canonical CBOR is hashed into ``cfg`` (docs/protocol.md §3 key 11).

        It holds what decides a result besides the model and the samples: the model file is covered by
        ``model`` and the samples by ``src``; the serial port path is device-local and left out.
        """
        return {
            "name": self.name,
            "channels": list(self.channels),
            "window": self.window,
            "hop": self.hop,
            "scale": list(self.scale) or [1.0] * len(self.channels),
            "offset": list(self.offset) or [0.0] * len(self.channels),
            "postprocess": self.postprocess.as_map(),
        }


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    device: DeviceConfig
    mqtt: MqttConfig
    trust: TrustConfig
    pipelines: tuple[PipelineConfig, ...]
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    claim_token_file: Path | None = None
    heartbeat_s: float = 60.0  # 0 disables heartbeats


def _models_dir() -> Path:
    return Path(__file__).resolve().parent / "models"


def shipped_model(name: str) -> Path:
    """The path of a model shipped with the package (``vibration_int8.tflite`` …)."""
    return _models_dir() / name


class _Table:
    """A TOML table being read: typed getters that name the key on error, and an unknown-key check."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return name in self.data

    def str_(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw(name)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), f"must be a non-empty string, not {value!r}")
        return value

    def int_(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be an integer, not {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(self.key(name), f"{value} is outside {lo}..{hi}")
        return value

    def float_(self, name: str, default: float | None, lo: float, hi: float) -> float | None:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be a number, not {value!r}")
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ConfigError(self.key(name), f"{value} is outside {lo:g}..{hi:g}")
        return value

    def table(self, name: str, *, required: bool = False) -> _Table:
        value = self.raw(name)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "is required (a table)")
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(self.key(name), "must be a table")
        return _Table(value, self.key(name))

    def enum_(self, name: str, cls: type[enum.Enum], default: Any) -> Any:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return cls(str(value))
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ConfigError(self.key(name), f"{value!r} is not one of {choices}") from None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key", hint="check the spelling in docs/agent.md")


def _id(table: _Table, name: str, what: str) -> str:
    from edge_protocol.ids import validate_id

    value = table.str_(name, required=True)
    try:
        return validate_id(value, what)
    except ValueError as e:
        raise ConfigError(table.key(name), str(e), hint=getattr(e, "hint", None)) from None


def _expand(key: str, value: str) -> Path:
    """``value`` as a path with ``~`` and ``~user`` expanded; ConfigError when that user is unknown."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise ConfigError(key, f"{value[:MAX_SHOWN_PATH]!r} names the home of an unknown user") from None


def _path(base: Path, table: _Table, name: str) -> Path | None:
    value = table.str_(name)
    if value is None:
        return None
    p = _expand(table.key(name), value)
    return p if p.is_absolute() else base / p


def _public_key(key: str, value: object) -> bytes:
    from edge_protocol.keys import parse_public_key

    if not isinstance(value, str):
        raise ConfigError(key, "must be a public key as 64 hex characters")
    try:
        return parse_public_key(value)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def _exists(key: str, path: Path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # exists() is False only for a missing file; a name too long is an error
        raise ConfigError(key, f"model file {str(path)[:MAX_SHOWN_PATH]!r}: {e.strerror or e}") from None


def _resolve_model(base: Path, key: str, value: str) -> Path:
    p = _expand(key, value)
    if p.is_absolute():
        return p
    local = base / p
    if _exists(key, local):
        return local
    parts = p.parts[1:] if p.parts and p.parts[0] == "models" else p.parts
    shipped = _models_dir().joinpath(*parts) if parts else local
    if _exists(key, shipped):
        return shipped
    shown = value[:MAX_SHOWN_PATH]
    raise ConfigError(key, f"model file {shown!r} not found in {base} nor among the shipped models")


def _channel_floats(table: _Table, name: str, n: int, default: float) -> tuple[float, ...]:
    value = table.raw(name)
    if value is None:
        return ()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * n
    if not isinstance(value, list) or len(value) != n:
        raise ConfigError(table.key(name), f"must be a number or a list of {n} numbers, one per channel")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(float(v)):
            raise ConfigError(f"{table.key(name)}[{i}]", f"must be a finite number, not {v!r}")
        out.append(float(v))
    if name == "scale" and any(v == 0 for v in out):
        raise ConfigError(table.key(name), "a scale of 0 erases the channel")
    del default
    return tuple(out)


def _postprocess(table: _Table) -> PostprocessConfig:
    kind: PostKind = table.enum_("kind", PostKind, None)
    if kind is None:
        raise ConfigError(table.key("kind"), "is required: classify, regress, anomaly or raw")
    labels: tuple[str, ...] = ()
    top_k = 0
    unknown = "unknown"
    threshold: float | None = None
    if kind is PostKind.CLASSIFY:
        raw = table.raw("labels")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_LABELS:
            raise ConfigError(table.key("labels"), f"classify needs a list of 1..{MAX_LABELS} labels")
        for i, label in enumerate(raw):
            if not isinstance(label, str) or not label or len(label.encode()) > 63:
                raise ConfigError(f"{table.key('labels')}[{i}]", "must be a text of 1-63 bytes")
        if len(set(raw)) != len(raw):
            raise ConfigError(table.key("labels"), "labels must be distinct")
        labels = tuple(raw)
        top_k = table.int_("top_k", 0, 0, len(labels))
        unknown = table.str_("unknown_label", "unknown") or "unknown"
        threshold = table.float_("threshold", None, 0.0, 1.0)
    elif kind is PostKind.ANOMALY:
        threshold = table.float_("threshold", None, -1e30, 1e30)
        if threshold is None:
            raise ConfigError(table.key("threshold"), "anomaly needs a threshold")
    table.finish()
    return PostprocessConfig(kind, labels, top_k, threshold, unknown)


def _pipeline(base: Path, table: _Table) -> PipelineConfig:
    name = _id(table, "name", "pipeline name")
    model_text = table.str_("model", required=True)
    assert model_text is not None
    model = _resolve_model(base, table.key("model"), model_text)
    src = table.table("source", required=True)
    port = src.str_("port", required=True)
    assert port is not None
    source = SourceConfig(
        port=port,
        baud=src.int_("baud", 115200, 1, 12_000_000),
        protocol=src.enum_("protocol", WireProtocol, WireProtocol.FRAMES),
    )
    src.finish()
    raw_channels = table.raw("channels")
    if (
        not isinstance(raw_channels, list)
        or not 1 <= len(raw_channels) <= MAX_CHANNELS
        or not all(isinstance(c, str) and c for c in raw_channels)
    ):
        raise ConfigError(table.key("channels"), f"must be a list of 1..{MAX_CHANNELS} channel names")
    if len(set(raw_channels)) != len(raw_channels):
        raise ConfigError(table.key("channels"), "channel names must be distinct")
    channels = tuple(raw_channels)
    window = table.int_("window", 0, 1, MAX_WINDOW)
    if not table.has("window"):
        raise ConfigError(table.key("window"), "is required")
    hop = table.int_("hop", window, 1, MAX_WINDOW)
    if hop > window:
        raise ConfigError(
            table.key("hop"), f"{hop} is larger than the window ({window}): samples would be skipped"
        )
    post = _postprocess(table.table("postprocess", required=True))
    cfg = PipelineConfig(
        name=name,
        model=model,
        source=source,
        channels=channels,
        window=window,
        hop=hop,
        postprocess=post,
        scale=_channel_floats(table, "scale", len(channels), 1.0),
        offset=_channel_floats(table, "offset", len(channels), 0.0),
        num_threads=table.int_("num_threads", 1, 1, 64),
    )
    table.finish()
    return cfg


def parse_config(data: Mapping[str, Any], path: Path) -> AgentConfig:
    """Validate a parsed TOML document; ``path`` is the file it came from (relative paths start there)."""
    base = path.resolve().parent
    root = _Table(data, "")
    dev = root.table("device", required=True)
    device = DeviceConfig(
        id=_id(dev, "id", "device id"),
        fleet=_id(dev, "fleet", "fleet id"),
        state_dir=_path(base, dev, "state_dir") or base / "state",
    )
    dev.finish()

    mq = root.table("mqtt")
    tls_ca = _path(base, mq, "tls_ca")
    mqtt = MqttConfig(
        host=mq.str_("host", "127.0.0.1") or "127.0.0.1",
        port=mq.int_("port", 8883 if tls_ca else 1883, 1, 65535),
        client_id=mq.str_("client_id", "") or device.id,
        protocol=mq.enum_("protocol", MqttVersion, MqttVersion.AUTO),
        keepalive_s=mq.int_("keepalive_s", 30, 5, 3600),
        connect_timeout_s=mq.float_("connect_timeout_s", 10.0, 0.5, 300.0) or 10.0,
        tls_ca=tls_ca,
        tls_cert=_path(base, mq, "tls_cert"),
        tls_key=_path(base, mq, "tls_key"),
        username=mq.str_("username"),
        password_file=_path(base, mq, "password_file"),
        max_inflight=mq.int_("max_inflight", DEFAULT_INFLIGHT, 1, MAX_INFLIGHT),
        resend_after_s=mq.float_("resend_after_s", 30.0, 0.1, 86400.0) or 30.0,
        backoff_min_s=mq.float_("backoff_min_s", 0.5, 0.01, 60.0) or 0.5,
        backoff_max_s=mq.float_("backoff_max_s", 30.0, 0.01, 3600.0) or 30.0,
    )
    mq.finish()
    if (mqtt.tls_cert is None) != (mqtt.tls_key is None):
        raise ConfigError("mqtt.tls_cert", "a client certificate needs both tls_cert and tls_key")
    if mqtt.tls_cert is not None and mqtt.tls_ca is None:
        raise ConfigError("mqtt.tls_ca", "a client certificate needs tls_ca (the broker's CA) too")
    if mqtt.password_file is not None and mqtt.username is None:
        raise ConfigError("mqtt.username", "password_file is set but username is not")
    if mqtt.backoff_max_s < mqtt.backoff_min_s:
        raise ConfigError("mqtt.backoff_max_s", "must not be below backoff_min_s")

    enrol = root.table("enrol")
    claim = _path(base, enrol, "claim_token_file")
    enrol.finish()

    tr = root.table("trust")
    op_raw = tr.raw("operator_key")
    operator_key = _public_key("trust.operator_key", op_raw) if op_raw is not None else None
    coll_raw = tr.raw("collector_keys") or []
    if not isinstance(coll_raw, list):
        raise ConfigError("trust.collector_keys", "must be a list of public keys")
    collector_keys = tuple(_public_key(f"trust.collector_keys[{i}]", k) for i, k in enumerate(coll_raw))
    delivery: Delivery = tr.enum_("delivery", Delivery, Delivery.FLEET_ACK)
    tr.finish()
    if delivery is Delivery.FLEET_ACK and not collector_keys:
        raise ConfigError(
            "trust.collector_keys",
            "fleet-ack delivery needs at least one collector key",
            hint='add the collector\'s public key, or set delivery = "broker-ack"',
        )
    trust = TrustConfig(operator_key, collector_keys, delivery)

    ob = root.table("outbox")
    outbox = OutboxConfig(
        max_bytes=ob.int_("max_bytes", DEFAULT_OUTBOX_BYTES, MIN_OUTBOX_BYTES, 2**40),
        synchronous=ob.enum_("synchronous", Synchronous, Synchronous.NORMAL),
    )
    ob.finish()

    hb = root.table("heartbeat")
    heartbeat_s = hb.float_("interval_s", 60.0, 0.0, 86400.0)
    hb.finish()

    raw_pipes = root.raw("pipeline")
    if raw_pipes is None:
        raw_pipes = []
    if not isinstance(raw_pipes, list):
        raise ConfigError("pipeline", "must be an array of tables ([[pipeline]])")
    if len(raw_pipes) > MAX_PIPELINES:
        raise ConfigError("pipeline", f"{len(raw_pipes)} pipelines, at most {MAX_PIPELINES} allowed")
    pipelines = []
    for i, raw in enumerate(raw_pipes):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"pipeline[{i}]", "must be a table")
        pipelines.append(_pipeline(base, _Table(raw, f"pipeline[{i}]")))
    names = [p.name for p in pipelines]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"pipeline[{i}].name", f"pipeline name {n!r} is used twice")
    root.finish()
    return AgentConfig(
        path=path,
        device=device,
        mqtt=mqtt,
        trust=trust,
        pipelines=tuple(pipelines),
        outbox=outbox,
        claim_token_file=claim,
        heartbeat_s=heartbeat_s or 0.0,
    )


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError("", f"cannot read config {path}: {e.strerror or e}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("", f"config {path} is not UTF-8") from e
    except ValueError as e:  # TOMLDecodeError, and an integer of more than 4300 digits (int's own limit)
        raise ConfigError("", f"config {path} is not valid TOML: {e}") from e
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(
            "", f"config {path} is not valid TOML: arrays or tables nested too deeply"
        ) from None
    return parse_config(data, path)
