"""Ids and topics (docs/protocol.md §5): valid ones round-trip, every bad kind is refused with a clear
message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_protocol.errors import InvalidId, InvalidTopic
from edge_protocol.ids import MAX_ID_LEN, validate_id
from edge_protocol.payload import DEVICE_KINDS
from edge_protocol.topics import (
    CHANNEL_OF_KIND,
    DEVICE_PUBLISHES,
    DEVICE_READS,
    DEVICE_SIGNED,
    Channel,
    DeviceTopic,
    agg_topic,
    channel_filter,
    device_topic,
    fleet_device_filter,
    fleet_prefix,
    parse_topic,
    verified_topic,
)

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "empty"),
        ("a" * (MAX_ID_LEN + 1), "at most 63"),
        ("dev+1", "wildcard '+'"),
        ("dev#", "wildcard '#'"),
        ("dev/1", "separator"),
        ("dev\x001", "NUL"),
        ("dévice", "non-ASCII"),
        ("Dev", "upper-case"),
        ("_fleet", "start"),
        ("-x", "start"),
        ("a b", "' '"),
        (b"dev", "text"),
        (None, "text"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(value: object, needle: str) -> None:
    with pytest.raises(InvalidId) as e:
        validate_id(value, "device id")
    assert needle in str(e.value)
    assert "device id" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_longest_id_is_accepted() -> None:
    assert validate_id("a" * MAX_ID_LEN) == "a" * MAX_ID_LEN


@given(ids, ids, ids)
def test_topics_round_trip(fleet: str, dev: str, pipe: str) -> None:
    for ch in Channel:
        p = pipe if ch is Channel.RESULT else None
        topic = device_topic(fleet, dev, ch, p)
        assert parse_topic(topic) == DeviceTopic(fleet, dev, ch, p)
        assert str(parse_topic(topic)) == topic


def test_topic_shapes() -> None:
    assert fleet_prefix("demo") == "edgeseal/v1/demo"
    assert device_topic("demo", "dev-01", Channel.RESULT, "vib") == "edgeseal/v1/demo/dev-01/res/vib"
    assert device_topic("demo", "dev-01", Channel.BIRTH) == "edgeseal/v1/demo/dev-01/birth"
    assert verified_topic("demo", "dev-01", "vib") == "edgeseal/v1/demo/_fleet/verified/dev-01/vib"
    assert agg_topic("demo", "label", "vib") == "edgeseal/v1/demo/_fleet/agg/label/vib"
    assert fleet_device_filter("demo") == "edgeseal/v1/demo/+/#"


@pytest.mark.parametrize(
    "topic",
    [
        "edgeseal/v1/demo/dev-01",
        "edgeseal/v2/demo/dev-01/birth",
        "edgeseal/v1/demo/dev-01/res",
        "edgeseal/v1/demo/dev-01/birth/x",
        "edgeseal/v1/demo/dev-01/nope",
        "edgeseal/v1/demo/_fleet/verified/dev-01/vib",
        "edgeseal/v1/demo/+/birth",
        "edgeseal/v1/de#mo/dev-01/birth",
        "edgeseal/v1/demo/dev-01/res/v/b",
    ],
)
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        parse_topic(topic)


def test_builders_refuse_bad_ids_and_shapes() -> None:
    with pytest.raises(InvalidId):
        device_topic("demo", "dev/1", Channel.BIRTH)
    with pytest.raises(InvalidTopic):
        device_topic("demo", "dev-01", Channel.RESULT)
    with pytest.raises(InvalidTopic):
        device_topic("demo", "dev-01", Channel.HEARTBEAT, "vib")


def test_one_list_of_device_channels() -> None:
    """docs/protocol.md §5: what a device publishes and reads; the ACL, the collector's filters and
    the kind check are derived from these."""
    assert [channel_filter(c) for c in DEVICE_PUBLISHES] == ["birth", "res/+", "hb", "gap", "reply", "state"]
    assert [channel_filter(c) for c in DEVICE_READS] == ["cmd", "ack"]
    assert set(CHANNEL_OF_KIND) == DEVICE_KINDS
    assert set(DEVICE_PUBLISHES) - {Channel.STATE} == DEVICE_SIGNED
    assert set(DEVICE_PUBLISHES) | set(DEVICE_READS) == set(Channel)
    for kind, channel in CHANNEL_OF_KIND.items():
        assert channel.value == {0: "birth", 1: "res", 2: "hb", 3: "gap", 4: "reply"}[kind]


def test_collector_and_acl_use_the_list() -> None:
    from broker_config.acl import DEVICE_WRITES
    from fleet_cli.collector.config import SUBSCRIBED

    assert SUBSCRIBED == DEVICE_WRITES == tuple(channel_filter(c) for c in DEVICE_PUBLISHES)
