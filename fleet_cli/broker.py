"""The fleet's hardened Mosquitto: render, start, stop, reload and check it.

What ``fleet broker`` (fleet_cli/commands/broker.py), ``fleet demo`` and tests call.

* ``render`` writes conf, password file, ACL and TLS files from ``fleet.toml`` and the registry.
* ``start`` renders first when nothing is rendered yet, otherwise runs what is rendered (so a
  ``render --tls-port N`` sticks); in the background it records a pid file in the broker directory.
* ``reload`` re-renders from the registry on the ports the running broker already uses (Mosquitto
  cannot change listener ports on reload) and sends SIGHUP: new and revoked accounts take effect.
* ``check`` test-starts a copy of the rendered set-up (configured ports when free, else temporary
  ones), checks the TLS certificate against the fleet CA and host name, checks that an anonymous
  CONNECT is refused, and stops it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import shutil
import signal
import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from broker_config.conf import BrokerSettings, Listener, listeners
from broker_config.errors import BrokerError
from broker_config.render import RenderedBroker, render, write_broker
from broker_config.runner import (
    MosquittoProcess,
    exec_foreground,
    free_port,
    mosquitto_binary,
    mosquitto_version,
    running_pid,
    signal_background,
    start_background,
    stop_background,
    wait_listening,
)
from fleet_cli.errors import FleetError
from fleet_cli.home import FleetHome
from fleet_cli.registry import Registry

# How long the check waits for the broker's TLS handshake and CONNACK.
PROBE_TIMEOUT_S = 5.0
# MQTT 3.1.1 §3.2.2.3: CONNACK return code 5 = "not authorized".
CONNACK_NOT_AUTHORIZED = 5


def render_broker(
    home: FleetHome,
    *,
    out: Path | None = None,
    tls_port: int | None = None,
    plain_port: int | None = None,
    now: dt.datetime | None = None,
) -> RenderedBroker:
    """Render the broker from ``fleet.toml`` and the registry and write it (to ``out`` if given)."""
    settings = home.broker_settings(tls_port=tls_port, plain_port=plain_port)
    if out is not None:
        settings = replace(settings, directory=Path(out).expanduser().resolve())
    return _render_with(home, settings, now=now)


def _render_with(
    home: FleetHome, settings: BrokerSettings, *, now: dt.datetime | None = None
) -> RenderedBroker:
    with Registry(home.registry_db) as reg:
        devices, users = reg.broker_accounts()
    rendered = render(home.fleet, devices, users, settings)
    write_broker(rendered, ca=home.ca(), sans=home.config.broker.sans, now=now)
    return rendered


def rendered_listeners(home: FleetHome) -> list[Listener] | None:
    try:
        found = listeners(home.broker_settings().paths.conf.read_text())
    except FileNotFoundError:
        return None
    return found or None


def _connect_host(listener: Listener) -> str:
    if not listener.bind or ipaddress.ip_address(listener.bind).is_unspecified:
        return "127.0.0.1"
    return listener.bind


def _ports_of(found: list[Listener]) -> tuple[int, int]:
    return found[0].port, (found[1].port if len(found) > 1 else 0)


def start_broker(home: FleetHome, *, foreground: bool = False) -> int:
    """Start the broker (rendering it first if it never was); the pid of the background broker."""
    mosquitto_binary()  # the install hint before anything else
    found = rendered_listeners(home)
    if found is None:
        render_broker(home)
        found = rendered_listeners(home)
    assert found is not None
    paths = home.broker_settings().paths
    if foreground:
        if running_pid(paths.pid_file, paths.conf) is not None:
            raise BrokerError("the broker is already running", hint="`fleet broker stop` it first")
        exec_foreground(paths.conf, paths.pid_file)
    return start_background(
        paths.conf, found[0].port, paths.pid_file, paths.log_file, _connect_host(found[0])
    )


def stop_broker(home: FleetHome) -> int | None:
    paths = home.broker_settings().paths
    return stop_background(paths.pid_file, paths.conf)


def reload_broker(home: FleetHome) -> tuple[RenderedBroker, int]:
    """Re-render on the running broker's ports and SIGHUP it. Returns the render and the pid."""
    paths = home.broker_settings().paths
    if running_pid(paths.pid_file, paths.conf) is None:
        raise BrokerError(
            "no broker started by `fleet broker start` is running", hint="start it with `fleet broker start`"
        )
    found = rendered_listeners(home)
    assert found is not None
    tls_port, plain_port = _ports_of(found)
    rendered = render_broker(home, tls_port=tls_port, plain_port=plain_port)
    pid = signal_background(paths.pid_file, paths.conf, signal.SIGHUP)
    return rendered, pid


@dataclass(frozen=True)
class CheckReport:
    version: str
    tls: Listener
    plain: Listener | None
    temporary_ports: bool
    tls_name: str
    cert_expires: dt.datetime
    tls_version: str
    anonymous_refused: bool
    devices: int
    revoked_devices: int
    users: int

    @property
    def ok(self) -> bool:
        return self.anonymous_refused


def probe_tls(host: str, port: int, ca_cert: Path, server_name: str) -> tuple[dt.datetime, str, int | None]:
    """TLS handshake verifying the chain (fleet CA) and ``server_name``, then an anonymous MQTT 3.1.1
    CONNECT. Returns the certificate's expiry, the TLS version and the CONNACK return code."""
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with (
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            version = tls.version() or "?"
            # CONNECT: protocol "MQTT" level 4, clean session, keepalive 10 s, empty client id.
            tls.sendall(bytes([0x10, 12, 0, 4, *b"MQTT", 4, 0x02, 0, 10, 0, 0]))
            reply = b""
            with contextlib.suppress(OSError):
                while len(reply) < 4:
                    chunk = tls.recv(4 - len(reply))
                    if not chunk:
                        break
                    reply += chunk
    except ssl.SSLCertVerificationError as e:
        raise FleetError(
            f"the broker's TLS certificate does not verify for {server_name!r}: {e.verify_message}",
            hint="`fleet broker render` re-issues it from the fleet CA with the names in fleet.toml",
        ) from e
    except (OSError, ssl.SSLError) as e:
        raise FleetError(f"TLS connection to {host}:{port} failed: {e}") from e
    assert der is not None
    expires = x509.load_der_x509_certificate(der).not_valid_after_utc
    code = reply[3] if len(reply) == 4 and reply[0] == 0x20 else None
    return expires, version, code


def check_broker(home: FleetHome, *, temporary_ports: bool = False) -> CheckReport:
    """Test-start a copy of the rendered broker and probe it; raise FleetError when it fails."""
    mosquitto_binary()
    real = home.broker_settings()
    if rendered_listeners(home) is None:
        render_broker(home)
    use_temp = temporary_ports or running_pid(real.paths.pid_file, real.paths.conf) is not None
    if not use_temp:
        for port in (real.tls_port, real.plain_port):
            if port and wait_listening("127.0.0.1", port, 0.05):
                use_temp = True
    tls_port = free_port() if use_temp else real.tls_port
    plain_port = (free_port() if use_temp else real.plain_port) if real.plain_port else 0
    copy_dir = real.paths.directory / f"check-{tls_port}"
    settings = replace(real, directory=copy_dir, tls_port=tls_port, plain_port=plain_port)
    shutil.rmtree(copy_dir, ignore_errors=True)
    try:
        copy_dir.mkdir(mode=0o700)
        for name in ("server.crt", "server.key"):  # probe the real certificate, not a new one
            with contextlib.suppress(FileNotFoundError):
                shutil.copy2(real.paths.directory / name, copy_dir / name)
        rendered = _render_with(home, settings)
        found = listeners(rendered.conf)
        tls_listener = found[0]
        host = _connect_host(tls_listener)
        with MosquittoProcess(settings.paths.conf, tls_port, host=host, log=copy_dir / "mosquitto.log"):
            expires, version, code = probe_tls(host, tls_port, home.ca_cert, home.config.broker.host)
            with Registry(home.registry_db) as reg:
                devices, users = reg.broker_accounts()
            return CheckReport(
                version=mosquitto_version(),
                tls=Listener(real.tls_port if not use_temp else tls_port, tls_listener.bind),
                plain=found[1] if len(found) > 1 else None,
                temporary_ports=use_temp,
                tls_name=home.config.broker.host,
                cert_expires=expires,
                tls_version=version,
                anonymous_refused=code == CONNACK_NOT_AUTHORIZED,
                devices=sum(1 for d in devices if not d.revoked),
                revoked_devices=sum(1 for d in devices if d.revoked),
                users=sum(1 for u in users if not u.revoked),
            )
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
