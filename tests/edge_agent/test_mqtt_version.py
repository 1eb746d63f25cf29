"""The MQTT version policy (auto): proof, timeouts and closes weigh differently; faults do not pin 3.1.1."""

from __future__ import annotations

import pytest

from edge_agent.config import MqttVersion
from edge_agent.mqtt_version import CLOSES_BEFORE_PROBE, REPROBE_S, Cause, VersionPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def auto(clock: Clock) -> VersionPolicy:
    return VersionPolicy(MqttVersion.AUTO, clock)


def test_fixed_modes_never_switch(clock: Clock) -> None:
    for mode, v5 in ((MqttVersion.V5, True), (MqttVersion.V311, False)):
        p = VersionPolicy(mode, clock)
        assert p.use_v5 is v5
        assert not p.refused()
        assert not p.no_connack(Cause.TIMED_OUT)
        for _ in range(5):
            assert not p.no_connack(Cause.CLOSED)
        p.disconnected()
        assert p.use_v5 is v5
        assert p.fallbacks == 0


def test_refusal_keeps_311_until_the_reprobe_interval(clock: Clock) -> None:
    p = auto(clock)
    assert p.use_v5
    assert p.refused()
    assert not p.use_v5
    assert p.kept
    assert p.fallbacks == 1
    p.answered()  # 3.1.1 accepted
    p.disconnected()
    assert not p.use_v5, "proof holds across reconnects"
    assert not p.no_connack(Cause.CLOSED)  # a broker restart while on kept 3.1.1
    assert not p.use_v5
    clock.t += REPROBE_S
    p.disconnected()
    assert p.use_v5, "after an hour a reconnect tries MQTT 5 again (the broker may have been upgraded)"


def test_timeout_probes_at_once_and_keeps_311_when_it_answers(clock: Clock) -> None:
    p = auto(clock)
    assert p.no_connack(Cause.TIMED_OUT)
    assert not p.use_v5
    assert not p.kept
    p.answered()
    assert p.kept
    p.disconnected()
    assert not p.use_v5


def test_a_failed_probe_means_the_broker_was_down(clock: Clock) -> None:
    p = auto(clock)
    assert p.no_connack(Cause.TIMED_OUT)
    assert not p.use_v5
    assert not p.no_connack(Cause.CLOSED)  # the 3.1.1 probe got no CONNACK either
    assert p.use_v5
    assert not p.kept
    assert p.no_connack(Cause.TIMED_OUT)
    p.unreachable()  # the probe could not even connect
    assert p.use_v5


def test_single_closes_are_ordinary_failures(clock: Clock) -> None:
    """A broker restart or a network reset closes before CONNACK: that alone must not switch versions."""
    p = auto(clock)
    for _ in range(10):
        for _ in range(CLOSES_BEFORE_PROBE - 1):
            assert not p.no_connack(Cause.CLOSED)
            assert p.use_v5
        p.unreachable()  # connection refused in between: the streak starts again
    assert p.fallbacks == 0
    for _ in range(CLOSES_BEFORE_PROBE - 1):
        assert not p.no_connack(Cause.CLOSED)
    p.answered()  # MQTT 5 connected: the streak starts again too
    assert not p.no_connack(Cause.CLOSED)
    assert p.use_v5


def test_an_outage_that_ends_on_a_close_probe_costs_one_connection(clock: Clock) -> None:
    p = auto(clock)
    for _ in range(CLOSES_BEFORE_PROBE - 1):
        assert not p.no_connack(Cause.CLOSED)
    assert p.no_connack(Cause.CLOSED)
    assert not p.use_v5
    p.answered()  # the outage ended just then: 3.1.1 connected
    assert not p.kept
    p.disconnected()
    assert p.use_v5, "the next connection speaks MQTT 5 again"


def test_a_broker_that_always_closes_mqtt5_earns_kept_311(clock: Clock) -> None:
    p = auto(clock)
    for connection in range(2):
        for _ in range(CLOSES_BEFORE_PROBE - 1):
            assert not p.no_connack(Cause.CLOSED)
        assert p.no_connack(Cause.CLOSED), connection
        p.answered()
        p.disconnected()
    assert p.kept
    assert not p.use_v5
    assert p.fallbacks == 2
