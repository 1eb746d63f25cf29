"""Render a fleet's hardened Mosquitto set-up and write it out.

:func:`render` is the pure core: accounts + settings in, the three texts out (``mosquitto.conf``,
the password file, the ACL), byte-for-byte reproducible for the same inputs (golden tests pin them).
:func:`write_broker` is the I/O edge: it creates the directory with the right owner and modes,
(re)issues the server certificate from the fleet CA when needed, and replaces each file atomically,
the conf last so it never names a file that is not there yet.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker_config.accounts import Account, Role
from broker_config.acl import render_acl
from broker_config.conf import BrokerPaths, BrokerSettings, render_conf
from broker_config.errors import BrokerConfigError
from broker_config.files import (
    Visibility,
    atomic_write_text,
    check_reachable,
    ownership_for,
    prepare_dir,
)
from broker_config.passwd import render_passwd
from broker_config.tls import CertAndKey, issue_server_cert, server_cert_current
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderedBroker:
    """The texts of a rendered broker and where they go (``settings.paths``)."""

    fleet: str
    settings: BrokerSettings
    conf: str
    passwd: str
    acl: str

    @property
    def paths(self) -> BrokerPaths:
        return self.settings.paths


def render(
    fleet: str, devices: Iterable[Account], users: Iterable[Account], settings: BrokerSettings
) -> RenderedBroker:
    """Render conf, password file and ACL. Revoked accounts get neither a password nor a rule."""
    try:
        validate_id(fleet, "fleet id")
    except InvalidId as e:
        raise BrokerConfigError(str(e), hint=e.hint) from e
    devices, users = list(devices), list(users)
    for d in devices:
        if d.role is not Role.DEVICE:
            raise BrokerConfigError(f"{d.username} is listed as a device but has role {d.role}")
    for u in users:
        if u.role is Role.DEVICE:
            raise BrokerConfigError(f"{u.username} is listed as a user but has role {u.role}")
    seen: set[str] = set()
    for a in (*devices, *users):
        if a.username in seen:
            raise BrokerConfigError(f"broker username {a.username} is used twice")
        seen.add(a.username)
    live = [a for a in (*devices, *users) if not a.revoked]
    return RenderedBroker(
        fleet=fleet,
        settings=settings,
        conf=render_conf(fleet, settings),
        passwd=render_passwd((a.username, a.password_hash) for a in live),
        acl=render_acl(fleet, live),
    )


def write_broker(
    rendered: RenderedBroker,
    *,
    ca: CertAndKey,
    sans: Sequence[str],
    now: dt.datetime | None = None,
) -> BrokerPaths:
    """Write everything the broker needs into ``rendered.paths.directory``; return the paths.

    The server certificate is re-issued only when it is missing, not from this CA, valid for other
    names than ``sans``, or near expiry; otherwise clients keep seeing the same certificate.
    """
    settings = rendered.settings
    paths = settings.paths
    ownership = ownership_for(settings.run_as)
    prepare_dir(paths.directory, ownership)
    check_reachable(paths.directory, settings.run_as)
    prepare_dir(paths.data_dir, ownership, owner_is_broker=True)

    atomic_write_text(paths.ca_cert, ca.cert_pem.decode("ascii"), ownership, Visibility.PUBLIC)
    try:
        current = server_cert_current(paths.server_cert.read_bytes(), ca.cert_pem, sans, now=now)
        current = current and paths.server_key.is_file()
    except FileNotFoundError:
        current = False
    if not current:
        log.info("issuing a new server certificate for %s", ", ".join(sans))
        server = issue_server_cert(ca, sans, now=now)
        # Key before certificate: a reader never pairs a new certificate with the old key.
        atomic_write_text(paths.server_key, server.key_pem.decode("ascii"), ownership, Visibility.PRIVATE)
        atomic_write_text(paths.server_cert, server.cert_pem.decode("ascii"), ownership, Visibility.PUBLIC)
    else:
        # Re-assert owner and mode (a copied or restored directory may have lost them).
        atomic_write_text(paths.server_key, paths.server_key.read_text(), ownership, Visibility.PRIVATE)

    atomic_write_text(paths.passwd, rendered.passwd, ownership, Visibility.PRIVATE)
    atomic_write_text(paths.acl, rendered.acl, ownership, Visibility.PRIVATE)
    atomic_write_text(paths.conf, rendered.conf, ownership, Visibility.PRIVATE)
    return paths
