"""The fleet home: the operator's directory holding a fleet's keys, CA, registry and ``fleet.toml``.

Layout (docs/fleet-home.md)::

    <home>/fleet.toml      fleet id, broker host/SANs/ports, default MQTT users   0644
    <home>/operator.key    Ed25519 seed signing commands (kind 6)                 0600
    <home>/collector.key   Ed25519 seed signing acks (kind 5)                     0600
    <home>/log.key         the fleet log's signing key (PRIVATE+KEY+edgeseal/..)  0600
    <home>/ca.crt          the fleet CA for the broker's TLS                      0644
    <home>/ca.key          its private key                                        0600
    <home>/registry.db     devices, users, claim tokens, bound keys (SQLite WAL)  0600
    <home>/broker/         the rendered Mosquitto set-up (broker_config)

The home directory itself is 0700 (0711 when root, see :func:`home_mode`). :func:`init_fleet` writes
everything or refuses: it never overwrites an existing fleet. :meth:`FleetHome.load` reads and
validates ``fleet.toml``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from broker_config.accounts import Role
from broker_config.conf import DEFAULT_PLAIN_PORT, DEFAULT_RUN_AS, DEFAULT_TLS_PORT, BrokerSettings
from broker_config.errors import BrokerConfigError
from broker_config.files import blocking_dir
from broker_config.tls import CertAndKey, general_names, generate_ca
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id
from edge_protocol.keys import Signer, atomic_write, write_private_key
from edge_protocol.tlog import NoteSigner
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.mqtt.settings import MqttSettings, MqttVersion
from fleet_cli.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_HOME = "EDGESEAL_HOME"
APP_NAME = "edgeseal"
CONFIG_NAME = "fleet.toml"
CONFIG_VERSION = 1
DEFAULT_FLEET = "demo"
# Names the broker knows a client by must not be anything else's name: init reserves these two
# users (role collector / operator) for `fleet collect` and `fleet cmd` on this host.
DEFAULT_COLLECTOR_USER = "collector"
DEFAULT_OPERATOR_USER = "operator"
# Reads verified results only (P/_fleet/#): what `fleet watch` and dashboards connect as.
DEFAULT_VIEWER_USER = "watcher"
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
# Where root's broker goes when the home is out of the broker user's reach (/root is 0700).
SYSTEM_BROKER_ROOT = Path("/var/lib/edgeseal")


def home_mode() -> int:
    """0700, or 0711 when root: the broker, running as its own user, must pass through the home to
    reach ``broker/`` (docs/field-notes.md "Mosquitto"); it cannot list the home, and every secret in it
    is 0600."""
    return 0o711 if os.geteuid() == 0 else 0o700


@dataclass(frozen=True)
class BrokerConfig:
    """The ``[broker]`` table of ``fleet.toml``."""

    host: str = "localhost"  # what devices put in their broker URL; must be one of the SANs
    sans: tuple[str, ...] = DEFAULT_SANS
    tls_port: int = DEFAULT_TLS_PORT
    plain_port: int = DEFAULT_PLAIN_PORT  # loopback only; 0 = no plain listener
    tls_bind: str = ""  # "" = all interfaces
    dir: str = ""  # "" = <home>/broker
    run_as: str = DEFAULT_RUN_AS
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        try:
            general_names(self.sans)
        except BrokerConfigError as e:
            raise UsageError(f"fleet.toml [broker] sans: {e}", hint=e.hint) from e
        if self.host not in self.sans:
            raise UsageError(
                f"fleet.toml [broker] host {self.host!r} is not among the TLS names {list(self.sans)}",
                hint="add it to [broker] sans so that TLS clients accept the broker",
            )


@dataclass(frozen=True)
class FleetConfig:
    """``fleet.toml``."""

    fleet: str
    created: str
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    collector_user: str = DEFAULT_COLLECTOR_USER
    operator_user: str = DEFAULT_OPERATOR_USER
    viewer_user: str = DEFAULT_VIEWER_USER

    def __post_init__(self) -> None:
        try:
            validate_id(self.fleet, "fleet id")
            validate_id(self.collector_user, "collector user")
            validate_id(self.operator_user, "operator user")
            validate_id(self.viewer_user, "viewer user")
        except InvalidId as e:
            raise UsageError(str(e), hint=e.hint) from e


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render_config(config: FleetConfig) -> str:
    """``fleet.toml`` text (comments included) for ``config``."""
    b = config.broker
    return f"""# edgeseal fleet configuration, written by `fleet init`.
# After editing, run `fleet broker render` (or `fleet broker reload` when it runs).
version = {CONFIG_VERSION}
fleet = {_toml_value(config.fleet)}
created = {_toml_value(config.created)}

[broker]
# Host name devices use to reach the broker; must be one of `sans`.
host = {_toml_value(b.host)}
# Names and addresses in the broker's TLS certificate.
sans = {_toml_value(b.sans)}
# TLS listener (devices, remote users). 8883 is MQTT over TLS.
tls_port = {_toml_value(b.tls_port)}
# Address the TLS listener binds to; "" = all interfaces.
tls_bind = {_toml_value(b.tls_bind)}
# Plain listener on 127.0.0.1 only, for local tools; 0 = none. 1884 leaves 1883 to a system broker.
plain_port = {_toml_value(b.plain_port)}
# Where the rendered broker lives; "" = <home>/broker. When root, the user below must reach it.
dir = {_toml_value(b.dir)}
# User Mosquitto switches to when started as root.
run_as = {_toml_value(b.run_as)}
# Also require a client certificate from the fleet CA (mutual TLS) on the TLS listener.
require_client_cert = {_toml_value(b.require_client_cert)}

[users]
# MQTT users `fleet collect`, `fleet cmd` and `fleet watch` connect as (created by `fleet init`).
collector = {_toml_value(config.collector_user)}
operator = {_toml_value(config.operator_user)}
viewer = {_toml_value(config.viewer_user)}
"""


def _get(table: Mapping[str, Any], key: str, kind: type, default: object, where: str) -> Any:
    value = table.get(key, default)
    if kind is int and isinstance(value, bool):
        raise UsageError(f"{where}.{key} must be an integer")
    if not isinstance(value, kind):
        raise UsageError(f"{where}.{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_config(text: str, source: str = CONFIG_NAME) -> FleetConfig:
    """Parse and validate ``fleet.toml``; any problem is a :class:`UsageError` naming the key."""
    try:
        data = tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, and an integer of more than 4300 digits (int's own limit)
        raise UsageError(f"{source} is not valid TOML: {e}") from e
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise UsageError(f"{source} is not valid TOML: arrays or tables nested too deeply") from None
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise UsageError(f"{source} has version {version!r}; this fleet CLI reads version {CONFIG_VERSION}")
    broker = data.get("broker", {})
    users = data.get("users", {})
    if not isinstance(broker, dict) or not isinstance(users, dict):
        raise UsageError(f"{source}: [broker] and [users] must be tables")
    d = BrokerConfig()
    sans = _get(broker, "sans", list, list(d.sans), "broker")
    if not all(isinstance(s, str) for s in sans):
        raise UsageError("broker.sans must be a list of strings")
    return FleetConfig(
        fleet=_get(data, "fleet", str, "", "fleet"),
        created=_get(data, "created", str, "", "fleet"),
        broker=BrokerConfig(
            host=_get(broker, "host", str, d.host, "broker"),
            sans=tuple(sans),
            tls_port=_get(broker, "tls_port", int, d.tls_port, "broker"),
            plain_port=_get(broker, "plain_port", int, d.plain_port, "broker"),
            tls_bind=_get(broker, "tls_bind", str, d.tls_bind, "broker"),
            dir=_get(broker, "dir", str, d.dir, "broker"),
            run_as=_get(broker, "run_as", str, d.run_as, "broker"),
            require_client_cert=_get(broker, "require_client_cert", bool, d.require_client_cert, "broker"),
        ),
        collector_user=_get(users, "collector", str, DEFAULT_COLLECTOR_USER, "users"),
        operator_user=_get(users, "operator", str, DEFAULT_OPERATOR_USER, "users"),
        viewer_user=_get(users, "viewer", str, DEFAULT_VIEWER_USER, "users"),
    )


# The fleet log's origin and its key's name (docs/log.md §8): C2SP asks for a unique, schema-less name.
LOG_ORIGIN_PREFIX = "edgeseal/"


LOG_KEY_NAME = "log.key"  # in the fleet home (docs/log.md §8)


def log_origin(fleet: str) -> str:
    """``edgeseal/<fleet>``: the fleet log's origin and its key's name (docs/log.md §8)."""
    return LOG_ORIGIN_PREFIX + fleet


def write_log_key(path: Path, signer: NoteSigner) -> None:
    """The log key as Go's ``PRIVATE+KEY+...`` string, mode 0600, atomically."""
    atomic_write(Path(path), signer.skey().encode("ascii") + b"\n", 0o600)


@dataclass(frozen=True)
class FleetHome:
    """An initialised fleet home; paths are properties so nobody spells a file name twice."""

    root: Path
    config: FleetConfig

    @property
    def fleet(self) -> str:
        return self.config.fleet

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def operator_key(self) -> Path:
        return self.root / "operator.key"

    @property
    def collector_key(self) -> Path:
        return self.root / "collector.key"

    @property
    def log_key(self) -> Path:
        """The fleet log's signing key (docs/log.md §8)."""
        return self.root / LOG_KEY_NAME

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def registry_db(self) -> Path:
        return self.root / "registry.db"

    @property
    def broker_dir(self) -> Path:
        configured = self.config.broker.dir
        if not configured:
            return self.root / "broker"
        path = Path(configured).expanduser()
        return path if path.is_absolute() else self.root / path

    def ca(self) -> CertAndKey:
        """The fleet CA (certificate and private key)."""
        try:
            return CertAndKey(self.ca_cert.read_bytes(), self.ca_key.read_bytes())
        except OSError as e:
            raise FleetError(f"cannot read the fleet CA in {self.root}: {e.strerror or e}") from e

    def broker_settings(
        self, *, tls_port: int | None = None, plain_port: int | None = None
    ) -> BrokerSettings:
        """Broker settings from ``fleet.toml``, with the ports optionally overridden."""
        b = self.config.broker
        try:
            return BrokerSettings(
                directory=self.broker_dir.resolve(),
                tls_port=b.tls_port if tls_port is None else tls_port,
                plain_port=b.plain_port if plain_port is None else plain_port,
                tls_bind=b.tls_bind,
                run_as=b.run_as,
                require_client_cert=b.require_client_cert,
            )
        except BrokerConfigError as e:
            raise UsageError(str(e), hint=e.hint) from e

    @staticmethod
    def resolve(home: Path | None = None) -> Path:
        """``--home``, else ``$EDGESEAL_HOME``, else the per-user data directory (platformdirs)."""
        if home is not None:
            return Path(home).expanduser().absolute()
        env = os.environ.get(ENV_HOME)
        if env:
            return Path(env).expanduser().absolute()
        import platformdirs

        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))

    @classmethod
    def load(cls, path: Path | None = None) -> FleetHome:
        """Open the fleet at ``path`` (resolved as in :meth:`resolve`)."""
        root = cls.resolve(path)
        config_path = root / CONFIG_NAME
        try:
            text = config_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{config_path} is not UTF-8 text (byte {e.start})") from None
        except FileNotFoundError:
            raise FleetError(
                f"no fleet in {root} ({CONFIG_NAME} is missing)",
                hint="create one with `fleet init --fleet NAME`, or point --home / EDGESEAL_HOME at it",
            ) from None
        except OSError as e:
            raise FleetError(f"cannot read {config_path}: {e.strerror or e}") from e
        return cls(root, parse_config(text, str(config_path)))


def init_fleet(
    home: Path,
    fleet: str = DEFAULT_FLEET,
    *,
    broker_host: str = "localhost",
    sans: Sequence[str] | None = None,
    tls_port: int = DEFAULT_TLS_PORT,
    plain_port: int = DEFAULT_PLAIN_PORT,
    broker_dir: str = "",
    now: dt.datetime | None = None,
) -> FleetHome:
    """Create a fleet in ``home``: keys, CA, registry with the default users, ``fleet.toml``.

    Refuses (FleetError) if ``home`` already holds a fleet or any of its files. Written in a
    temporary sibling directory and renamed into place when ``home`` does not exist yet, so a
    failure leaves nothing half-made; in an existing empty directory the files are written one by
    one with ``fleet.toml`` last (it is what marks a fleet as complete).
    """
    try:
        validate_id(fleet, "fleet id")
    except InvalidId as e:
        raise UsageError(str(e), hint=e.hint) from e
    now = now if now is not None else dt.datetime.now(dt.timezone.utc)
    all_sans = tuple(dict.fromkeys([broker_host, *(sans if sans is not None else DEFAULT_SANS)]))
    config = FleetConfig(
        fleet=fleet,
        created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        broker=BrokerConfig(
            host=broker_host, sans=all_sans, tls_port=tls_port, plain_port=plain_port, dir=broker_dir
        ),
    )
    root = Path(home).expanduser().absolute()
    if not broker_dir and blocking_dir(root, DEFAULT_RUN_AS) is not None:
        # Root with a home under /root: keep the broker where its user can read it.
        broker_dir = str(SYSTEM_BROKER_ROOT / fleet / "broker")
        config = replace(config, broker=replace(config.broker, dir=broker_dir))
    target = FleetHome(root, config)
    target.broker_settings()  # validates the ports now rather than at the first render
    if root.exists():
        if not root.is_dir():
            raise FleetError(f"{root} exists and is not a directory")
        existing = [p.name for p in root.iterdir()]
        if existing:
            what = (
                "a fleet" if CONFIG_NAME in existing else f"other files ({', '.join(sorted(existing)[:3])})"
            )
            raise FleetError(
                f"{root} already holds {what}; refusing to overwrite it",
                hint="use another --home, or remove that directory first if you really mean to start over",
            )
        work = root
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        work = root.with_name(f".{root.name}.init-{os.getpid()}")
        work.mkdir(mode=0o700)
    try:
        work.chmod(home_mode())
        staged = replace(target, root=work)
        write_private_key(staged.operator_key, Signer.generate())
        write_private_key(staged.collector_key, Signer.generate())
        write_log_key(staged.log_key, NoteSigner.generate(log_origin(fleet)))
        ca = generate_ca(fleet, now=now)
        atomic_write(staged.ca_key, ca.key_pem, 0o600)
        atomic_write(staged.ca_cert, ca.cert_pem, 0o644)
        with Registry(staged.registry_db) as registry:
            registry.add_user(config.collector_user, Role.COLLECTOR)
            registry.add_user(config.operator_user, Role.OPERATOR)
            registry.add_user(config.viewer_user, Role.VIEWER)
        atomic_write(staged.config_path, render_config(config).encode("utf-8"), 0o644)
        if work != root:
            work.rename(root)
    except BaseException:
        if work != root:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for child in list(root.iterdir()):
                with contextlib.suppress(OSError):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return target


def mqtt_settings(
    home: FleetHome,
    user: str,
    *,
    host: str | None = None,
    port: int | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    protocol: MqttVersion = MqttVersion.AUTO,
    client_id: str | None = None,
    persistent: bool = False,
) -> MqttSettings:
    """Connection settings for ``user`` of the fleet in ``home``.

    Default: the broker's plain loopback listener when it has one (no TLS needed on the same host),
    else its TLS listener checked against the fleet CA. ``--port`` alone picks TLS when it is the
    configured TLS port. The password comes from the registry unless given.
    """
    b = home.config.broker
    if port is None:
        port = b.plain_port or b.tls_port
    if tls_ca is None and port == b.tls_port:
        tls_ca = home.ca_cert
    if host is None:
        host = "127.0.0.1" if tls_ca is None else b.host
    if password is None:
        with Registry(home.registry_db) as reg:
            password = reg.user_credentials(user).password
    return MqttSettings(
        host=host,
        port=port,
        username=user,
        password=password,
        tls_ca=tls_ca,
        protocol=protocol,
        client_id=client_id or user,
        persistent=persistent,
    )
