"""MQTT topics of an edgeseal fleet (docs/protocol.md §5): build them and parse them back, validating ids.

Prefix ``P = edgeseal/v1/{fleet}``; device topics are ``P/{dev}/{channel}`` and ``P/{dev}/res/{pipe}``;
the collector publishes under ``P/_fleet/``. ``_fleet`` cannot be a device id (ids start with
``[a-z0-9]``), so the two name spaces never overlap.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edge_protocol.errors import InvalidTopic
from edge_protocol.ids import validate_id
from edge_protocol.payload import Kind

ROOT = "edgeseal/v1"
FLEET_SEGMENT = "_fleet"


class Channel(enum.Enum):
    """The last level(s) of a device topic, with who publishes it."""

    BIRTH = "birth"  # device -> fleet, retained
    RESULT = "res"  # device -> fleet, followed by /{pipe}
    HEARTBEAT = "hb"  # device -> fleet
    GAP = "gap"  # device -> fleet
    REPLY = "reply"  # device -> operator
    STATE = "state"  # device Will / online marker, retained JSON
    CMD = "cmd"  # operator -> device
    ACK = "ack"  # collector -> device

    def __str__(self) -> str:
        return self.value


# The one list of a device's channels (docs/protocol.md §5); the broker's ACL, the collector's
# subscriptions and the verifier's kind check are derived from it.
#
# The channel each device-signed kind is published on (docs/protocol.md §4: the kind must fit the topic).
CHANNEL_OF_KIND: Mapping[Kind, Channel] = MappingProxyType(
    {
        Kind.BIRTH: Channel.BIRTH,
        Kind.RESULT: Channel.RESULT,
        Kind.HEARTBEAT: Channel.HEARTBEAT,
        Kind.GAP: Channel.GAP,
        Kind.REPLY: Channel.REPLY,
    }
)
# Channels whose payload is a COSE envelope signed by the device.
DEVICE_SIGNED = frozenset(CHANNEL_OF_KIND.values())
# What a device publishes under its own P/{dev}/ (the signed channels, then its retained state) and
# what it reads there.
DEVICE_PUBLISHES = (*CHANNEL_OF_KIND.values(), Channel.STATE)
DEVICE_READS = (Channel.CMD, Channel.ACK)


def channel_filter(channel: Channel) -> str:
    """The topic levels after ``P/{dev}/`` that match every topic of ``channel``: ``res/+`` for
    results (one level per pipeline), the channel's name for the others."""
    return f"{channel.value}/+" if channel is Channel.RESULT else channel.value


@dataclass(frozen=True)
class DeviceTopic:
    """A parsed device topic."""

    fleet: str
    dev: str
    channel: Channel
    pipe: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.fleet, "fleet id")
        validate_id(self.dev, "device id")
        if (self.channel is Channel.RESULT) != (self.pipe is not None):
            raise InvalidTopic("a pipeline name goes with the 'res' channel and only with it")
        if self.pipe is not None:
            validate_id(self.pipe, "pipeline id")

    def __str__(self) -> str:
        return device_topic(self.fleet, self.dev, self.channel, self.pipe)


def fleet_prefix(fleet: str) -> str:
    return f"{ROOT}/{validate_id(fleet, 'fleet id')}"


def device_topic(fleet: str, dev: str, channel: Channel, pipe: str | None = None) -> str:
    """``edgeseal/v1/{fleet}/{dev}/{channel}[/{pipe}]``, every id validated."""
    base = f"{fleet_prefix(fleet)}/{validate_id(dev, 'device id')}/{channel.value}"
    if channel is Channel.RESULT:
        if pipe is None:
            raise InvalidTopic("a result topic needs a pipeline name")
        return f"{base}/{validate_id(pipe, 'pipeline id')}"
    if pipe is not None:
        raise InvalidTopic(f"the {channel.value!r} channel takes no pipeline name")
    return base


def parse_topic(topic: str) -> DeviceTopic:
    """Parse a device topic; raise :class:`InvalidTopic` for anything that is not one."""
    if not isinstance(topic, str):
        raise InvalidTopic("a topic must be text")
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise InvalidTopic(f"not an edgeseal v1 topic: {topic[:120]!r}")
    fleet, dev, rest = parts[2], parts[3], parts[4:]
    if not rest:
        raise InvalidTopic(f"topic has no channel: {topic[:120]!r}")
    try:
        channel = Channel(rest[0])
    except ValueError:
        raise InvalidTopic(f"unknown channel {rest[0][:40]!r}") from None
    expected = 2 if channel is Channel.RESULT else 1
    if len(rest) != expected:
        raise InvalidTopic(f"wrong number of levels for channel {channel.value!r}: {topic[:120]!r}")
    try:
        return DeviceTopic(fleet, dev, channel, rest[1] if channel is Channel.RESULT else None)
    except ValueError as e:  # InvalidId is a ValueError too
        raise InvalidTopic(f"{topic[:120]!r}: {e}") from e


def verified_topic(fleet: str, dev: str, pipe: str) -> str:
    """Where the collector republishes verified results as JSON."""
    return f"{fleet_prefix(fleet)}/{FLEET_SEGMENT}/verified/{validate_id(dev, 'device id')}/" + validate_id(
        pipe, "pipeline id"
    )


def agg_topic(fleet: str, *parts: str) -> str:
    """``P/_fleet/agg/...`` for aggregates; each part must be an id."""
    tail = "/".join(validate_id(p, "aggregate name") for p in parts)
    return f"{fleet_prefix(fleet)}/{FLEET_SEGMENT}/agg" + (f"/{tail}" if tail else "")


def log_checkpoint_topic(fleet: str) -> str:
    """``P/_fleet/log/checkpoint``: the fleet log's latest signed checkpoint (retained; docs/log.md)."""
    return f"{fleet_prefix(fleet)}/{FLEET_SEGMENT}/log/checkpoint"


def device_filter(fleet: str, dev: str) -> str:
    """Every topic of one device."""
    return f"{fleet_prefix(fleet)}/{validate_id(dev, 'device id')}/#"


def fleet_device_filter(fleet: str) -> str:
    """Every device topic of a fleet (also matches ``_fleet/...``, which :func:`parse_topic` refuses)."""
    return f"{fleet_prefix(fleet)}/+/#"
