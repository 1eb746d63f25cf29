"""``mosquitto.conf`` for a fleet: settings, the limits and where each number comes from.

Pure: :func:`render_conf` turns :class:`BrokerSettings` and :class:`BrokerPaths` into text. Mosquitto
only understands comments on lines of their own, so every explanation sits above its option.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from broker_config.errors import BrokerConfigError

# Default ports. 8883 is IANA's MQTT-over-TLS port; Debian's own Mosquitto listens on 1883, so the
# plain loopback listener uses 1884 to run beside it.
DEFAULT_TLS_PORT = 8883
DEFAULT_PLAIN_PORT = 1884
PLAIN_BIND = "127.0.0.1"  # the plain listener is loopback only; never configurable to a public address
DEFAULT_RUN_AS = "mosquitto"  # Debian's package user; Mosquitto's own default too
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # POSIX portable user names (useradd)

# --- limits (each goes into the rendered file with the reason in a comment) ---------------------
# A signed envelope is at most 64 KiB (docs/protocol.md §2, edge_protocol MAX_ENVELOPE_BYTES).
MAX_ENVELOPE_BYTES = 65536
# A PUBLISH adds to its payload: fixed header (<= 5 bytes), topic length + topic (<= 2 + 12 + 3 x 64
# + 4 = 210 for P/{dev}/res/{pipe} with 63-character ids), packet id (2) and MQTT 5 properties (a
# handful of bytes; 4 KiB leaves room for user properties). Bigger packets are a protocol abuse and
# the broker disconnects the sender.
PACKET_HEADROOM = 4096
MAX_PACKET_SIZE = MAX_ENVELOPE_BYTES + PACKET_HEADROOM
# No message_size_limit (Mosquitto 2 recommends max_packet_size instead): it drops oversize payloads
# silently, while the collector must see an oversize envelope to quarantine it as TOO_LARGE.
# Outgoing QoS 1 messages in flight per client. A collector draining a backlog at ~2,000 msg/s over a
# 50 ms round trip needs 2000 x 0.05 = 100 unacknowledged deliveries to keep the pipe full.
MAX_INFLIGHT_MESSAGES = 100
# Messages queued per client beyond those in flight. The collector's persistent session must hold
# the whole backlog of a collector restart: the ingest benchmark queues 50,000 results; 4x headroom.
# (Mosquitto's default of 1000 silently drops the rest, docs/field-notes.md "Mosquitto".)
MAX_QUEUED_MESSAGES = 200_000
# ... and in bytes, so 200,000 worst-case 64 KiB envelopes cannot take 13 GB of RAM. Results are
# ~0.5-1 KiB, so 256 MiB holds the full message-count backlog of typical results.
MAX_QUEUED_BYTES = 256 * 1024 * 1024
# Connections per listener. Each is a file descriptor: a fleet of a few thousand devices plus a few
# collectors/dashboards. Raise together with the process's open-files limit (ulimit -n).
MAX_CONNECTIONS_TLS = 4096
# The loopback listener serves local tools (collector, fleet CLI, dashboards) only.
MAX_CONNECTIONS_PLAIN = 256
# MQTT 5 server keepalive cap (seconds). Agents use 30-60 s; a client asking for more is told 300,
# so a dead connection is noticed (and its Will published) within 1.5 x 300 s at worst.
MAX_KEEPALIVE_S = 300
# Persistence is a snapshot, not a journal (docs/field-notes.md "Mosquitto"): save every 60 s instead of
# the default 1800. A lost snapshot means resends, not lost results: agents keep every result until a
# collector's signed ack covers it (docs/protocol.md §5).
AUTOSAVE_INTERVAL_S = 60
# Persistent sessions nobody resumes (a decommissioned collector) are dropped after this long, so
# their queues do not grow forever. Device outboxes still hold anything not acknowledged.
PERSISTENT_CLIENT_EXPIRATION = "14d"


@dataclass(frozen=True)
class BrokerPaths:
    """Where the rendered broker's files live. All absolute."""

    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def pid_file(self) -> Path:
        return self.directory / "mosquitto.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"


def _check_port(value: int, what: str, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        extra = " or 0 (none)" if allow_zero else ""
        raise BrokerConfigError(f"{what} must be a TCP port 1-65535{extra}, got {value!r}")


@dataclass(frozen=True)
class BrokerSettings:
    """Everything about the broker that is not an account.

    ``tls_bind`` empty means all interfaces. ``plain_port`` 0 means no plain listener; when set, it
    listens on 127.0.0.1 only. ``require_client_cert`` adds mutual TLS on top of passwords: clients
    then need a certificate from the fleet CA as well (``fleet`` can make them).
    """

    directory: Path
    tls_port: int = DEFAULT_TLS_PORT
    plain_port: int = DEFAULT_PLAIN_PORT
    tls_bind: str = ""
    run_as: str = DEFAULT_RUN_AS
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if not Path(self.directory).is_absolute():
            raise BrokerConfigError(f"the broker directory must be an absolute path, got {self.directory}")
        if any(c in str(self.directory) for c in " \n\r\t#"):
            raise BrokerConfigError(
                f"the broker directory {self.directory} has a space or '#' that mosquitto.conf cannot hold",
                hint="choose another directory (fleet.toml [broker] dir, or --home)",
            )
        _check_port(self.tls_port, "tls_port", allow_zero=False)
        _check_port(self.plain_port, "plain_port", allow_zero=True)
        if self.plain_port == self.tls_port:
            raise BrokerConfigError(f"tls_port and plain_port are both {self.tls_port}")
        if self.tls_bind:
            try:
                ipaddress.ip_address(self.tls_bind)
            except ValueError as e:
                msg = f"tls_bind must be an IP address or empty, got {self.tls_bind!r}"
                raise BrokerConfigError(msg) from e
        if _USER_RE.fullmatch(self.run_as) is None:
            raise BrokerConfigError(f"run_as must be a system user name, got {self.run_as!r}")

    @property
    def paths(self) -> BrokerPaths:
        return BrokerPaths(Path(self.directory))


def render_conf(fleet: str, settings: BrokerSettings) -> str:
    """The text of ``mosquitto.conf``."""
    paths = settings.paths
    tls_listener = f"listener {settings.tls_port}" + (f" {settings.tls_bind}" if settings.tls_bind else "")
    lines = [
        f"# mosquitto.conf of edgeseal fleet {fleet}: generated by `fleet broker render`, edits are lost.",
        "# Reference broker: Mosquitto 2.0. Topics and roles: docs/protocol.md §5; accounts: the registry.",
        "",
        "# ---- process ----",
        "# Started as root, Mosquitto 2 switches to this user before it reads the password, ACL and key",
        "# files: they are group-readable by it (0640 in a 0750 directory) and closed to everyone else.",
        f"user {settings.run_as}",
        "",
        "# ---- authentication and authorisation: the same on every listener ----",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {paths.passwd}",
        f"acl_file {paths.acl}",
        "# Retained births/states are re-checked against the publisher's current rights before delivery:",
        "# a revoked device's retained messages stop being served (CVE-2018-12546).",
        "check_retain_source true",
        "",
        "# ---- limits ----",
        f"# A signed envelope is at most {MAX_ENVELOPE_BYTES} bytes (docs/protocol.md §2). A PUBLISH adds a",
        "# fixed header, the topic (<= 210 bytes with 63-character ids), a packet id and MQTT 5",
        f"# properties: {PACKET_HEADROOM} bytes of headroom. A bigger packet disconnects its sender.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "# No message_size_limit: it would silently drop payloads just over 64 KiB, while the collector must",
        "# see them to quarantine them as TOO_LARGE (docs/protocol.md §6: nothing is dropped unrecorded).",
        "# QoS 1 deliveries in flight per client: a collector draining ~2,000 msg/s over a 50 ms round",
        "# trip needs 2000 x 0.05 = 100 outstanding to keep the pipe full.",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "# Queue per client beyond those in flight. A collector's persistent session must hold the backlog",
        "# of a collector restart (the ingest benchmark queues 50,000; 4x headroom). The default of 1000",
        "# silently drops the rest.",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "# ... and at most 256 MiB per client, so a queue of worst-case 64 KiB envelopes cannot exhaust",
        "# memory; typical results (0.5-1 KiB) reach the message limit first.",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        "# MQTT 5 server keepalive cap in seconds (agents use 30-60 s): a dead connection is noticed and",
        "# its Will published within 1.5 x this at worst.",
        f"max_keepalive {MAX_KEEPALIVE_S}",
        "# Sessions nobody resumes (a decommissioned collector) are dropped after this, so their queues do",
        "# not grow forever; agents still hold every result no collector acknowledged (docs/protocol.md §5).",
        f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
        "",
        "# ---- persistence: a snapshot, not a journal ----",
        "# Saved every 60 s instead of the default 1800. A lost snapshot costs resends, never results:",
        "# agents delete a result only when a collector's signed ack covers it (docs/protocol.md §5).",
        "persistence true",
        f"persistence_location {paths.data_dir}/",
        "persistence_file mosquitto.db",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        "",
        "# ---- network ----",
        "# Without this, Nagle + delayed ACK put a ~40 ms floor under every request/response hop.",
        "set_tcp_nodelay true",
        "",
        "# ---- logging to stderr: the journal under systemd, mosquitto.log with `fleet broker start` ----",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        "# ---- TLS listener: devices and remote users. Server certificate from the fleet CA. ----",
        tls_listener,
        "protocol mqtt",
        "# Listener options (Mosquitto 2 reads these per listener; set globally they open 1883):",
        "# the client id is replaced by the username, so nobody takes over another account's session",
        "# by choosing its client id, and client ids play no part in the ACL (CVE-2017-7650).",
        "use_username_as_clientid true",
        f"cafile {paths.ca_cert}",
        f"certfile {paths.server_cert}",
        f"keyfile {paths.server_key}",
        "tls_version tlsv1.2",
        f"require_certificate {'true' if settings.require_client_cert else 'false'}",
        "# Connections on this listener: a few thousand devices plus collectors and dashboards; each is a",
        "# file descriptor, so raise together with the open-files limit (ulimit -n).",
        f"max_connections {MAX_CONNECTIONS_TLS}",
    ]
    if settings.plain_port:
        lines += [
            "",
            "# ---- plain listener on loopback only: local collector, fleet CLI, dashboards ----",
            f"listener {settings.plain_port} {PLAIN_BIND}",
            "protocol mqtt",
            "use_username_as_clientid true",
            f"max_connections {MAX_CONNECTIONS_PLAIN}",
        ]
    else:
        lines += ["", "# No plain listener (plain_port = 0)."]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Listener:
    port: int
    bind: str  # "" = all interfaces


def listeners(conf_text: str) -> list[Listener]:
    """The ``listener`` lines of a rendered ``mosquitto.conf``, in order (the TLS one first)."""
    out = []
    for line in conf_text.splitlines():
        parts = line.split()
        if len(parts) in (2, 3) and parts[0] == "listener" and parts[1].isdigit():
            out.append(Listener(int(parts[1]), parts[2] if len(parts) == 3 else ""))
    return out
