"""Broker accounts: who may connect to the fleet's Mosquitto and in which role (docs/protocol.md §5,
docs/fleet-home.md).

An :class:`Account` is what the renderer needs to know about a registry entry: the MQTT username
(a device id or a user name, validated with :func:`edge_protocol.ids.validate_id`, so it can never
hold ``+``, ``#``, ``/`` or NUL), its role, and the ``$7$`` hash of its password. Plain-text
passwords never reach the renderer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from broker_config.errors import BrokerConfigError
from broker_config.passwd import parse_hash
from edge_protocol.errors import InvalidId
from edge_protocol.ids import validate_id


class Role(str, enum.Enum):
    """What an account may do on the broker; the ACL rules per role are in :mod:`broker_config.acl`."""

    DEVICE = "device"  # publishes its own birth/res/hb/gap/reply/state, reads its own cmd/ack
    COLLECTOR = "collector"  # reads all device topics, writes acks and P/_fleet/#
    OPERATOR = "operator"  # writes commands, reads replies
    VIEWER = "viewer"  # reads P/_fleet/# (dashboards, Home Assistant)

    def __str__(self) -> str:
        return self.value


# Roles a `fleet user add` may give; devices are added with `fleet device add`.
USER_ROLES = (Role.COLLECTOR, Role.OPERATOR, Role.VIEWER)


@dataclass(frozen=True)
class Account:
    """One MQTT login. ``revoked`` accounts are rendered nowhere: no password line, no ACL rule."""

    username: str
    role: Role
    password_hash: str
    revoked: bool = False

    def __post_init__(self) -> None:
        try:
            validate_id(self.username, "broker username")
        except InvalidId as e:
            raise BrokerConfigError(str(e), hint=e.hint) from e
        if not isinstance(self.role, Role):
            raise BrokerConfigError(f"unknown role {self.role!r} for {self.username}")
        if not self.revoked:
            parse_hash(self.password_hash)
