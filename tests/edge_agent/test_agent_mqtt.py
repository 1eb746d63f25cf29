"""The agent end to end against a real Mosquitto and real SQLite, with an in-memory sensor and model."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, load_config
from edge_agent.outbox import ZERO_ID
from edge_protocol.keys import Signer
from edge_protocol.payload import Key, Kind
from tests._mosquitto import Broker
from tests.edge_agent._support import (
    DEV,
    Collector,
    FakeEngine,
    ListSource,
    command_cose,
    config_text,
    sample,
    unique_fleet,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Rig:
    """An agent with a fake engine and an in-memory source, run on a thread, plus the test collector."""

    def __init__(self, tmp: Path, broker: Broker, *, ack: bool = True, **kw: Any) -> None:
        self.tmp = tmp
        self.fleet = unique_fleet()
        (tmp / "model.tflite").write_bytes(b"fake")
        self.conf = tmp / "agent.toml"
        self.conf.write_text(config_text(tmp / "state", broker.port, fleet=self.fleet, **kw))
        self.broker = broker
        self.collector = Collector(broker.host, broker.port, ack=ack, fleet=self.fleet)
        self.source = ListSource()
        self.agent: Agent | None = None
        self.thread: threading.Thread | None = None

    def cfg(self) -> AgentConfig:
        return load_config(self.conf)

    def start(self) -> Agent:
        self.agent = Agent(
            self.cfg(), source_factory=lambda _p: self.source, engine_factory=lambda _p: FakeEngine()
        )
        self.agent.start()
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        return self.agent

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.request_stop()
        if self.thread is not None:
            self.thread.join(10)
            assert not self.thread.is_alive()
        self.agent = None
        self.thread = None

    def close(self) -> None:
        self.stop()
        self.collector.close()


@pytest.fixture
def rig_factory(tmp_path: Path, mosquitto: Broker) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        r = Rig(tmp_path / f"r{len(rigs)}", mosquitto, **kw)
        rigs.append(r)
        return r

    for d in range(4):
        (tmp_path / f"r{d}").mkdir()
    yield make
    for r in rigs:
        r.close()


def test_results_are_signed_chained_delivered_and_acked(rig_factory: Any) -> None:
    rig = rig_factory()
    agent = rig.start()
    c = rig.collector
    rig.source.feed([sample(i) for i in range(100)])  # window 8 hop 4: 24 results
    assert c.wait_for(lambda: len(c.messages) >= 25), c.errors
    assert not c.errors
    birth, *results = [m for _, m in sorted(c.messages.items())]
    assert birth.kind is Kind.BIRTH
    assert birth.seq == 0
    assert birth.prev == ZERO_ID
    assert birth.payload[Key.INFO]["pipes"] == {"vib": FakeEngine().model_hash}
    assert Key.CLAIM not in birth.payload
    prev = birth
    for r in results:
        assert r.kind is Kind.RESULT
        assert r.prev == prev.msg_id
        assert r.seq == prev.seq + 1
        assert r.payload[Key.PIPE] == "vib"
        out = r.payload[Key.OUT]
        assert out["label"] in ("normal", "imbalance", "bearing")
        assert len(out["values"]) == 3
        assert len(out["top"]) == 2
        prev = r
    # acks empty the outbox
    assert c.wait_for(lambda: (agent.outbox is not None and agent.outbox.depth == 0) or False, 10)
    assert agent.outbox is not None
    assert agent.outbox.depth == 0
    states = [json.loads(s) for s in c.states]
    assert {"state": "online", "boot": agent.boot} == {k: states[-1][k] for k in ("state", "boot")}
    rig.stop()
    assert c.wait_for(lambda: json.loads(c.states[-1])["state"] == "offline", 5)


def test_chain_continues_across_restarts(rig_factory: Any) -> None:
    rig = rig_factory()
    c = rig.collector
    rig.start()
    rig.source.feed([sample(i) for i in range(40)])
    assert c.wait_for(lambda: len(c.messages) >= 10)
    rig.stop()
    last = max(c.messages)
    rig.start()
    assert c.wait_for(lambda: (last[0] + 1, 0) in c.messages)
    birth2 = c.messages[(last[0] + 1, 0)]
    assert birth2.prev == c.messages[last].msg_id


def test_broker_ack_mode_deletes_on_puback(rig_factory: Any) -> None:
    rig = rig_factory(ack=False, delivery="broker-ack")
    agent = rig.start()
    rig.source.feed([sample(i) for i in range(60)])
    c = rig.collector
    assert c.wait_for(lambda: len(c.messages) >= 15)
    assert c.wait_for(lambda: agent.outbox is not None and agent.outbox.depth == 0, 5)


def test_unacked_entries_are_resent_after_timeout(rig_factory: Any) -> None:
    rig = rig_factory(ack=False)  # resend_after_s = 2 in the test config
    agent = rig.start()
    rig.source.feed([sample(i) for i in range(20)])
    c = rig.collector
    assert c.wait_for(lambda: len(c.messages) >= 5)
    assert c.wait_for(lambda: c.duplicates >= 5, 8)
    assert agent.outbox is not None
    assert agent.outbox.depth >= 5
    assert not c.errors


def test_commands(rig_factory: Any) -> None:
    rig = rig_factory()
    agent = rig.start()
    c = rig.collector
    f = rig.fleet

    def reply_to(cid: bytes) -> dict[str, Any] | None:
        for m in c.of_kind(Kind.REPLY):
            if m.payload[Key.ID] == cid:
                return dict(m.payload[Key.REPLY])
        return None

    # commands are not retained: send them once the agent is subscribed (its birth follows the SUBSCRIBE)
    assert c.wait_for(lambda: bool(c.of_kind(Kind.BIRTH)))
    c.send_command(command_cose("ping", b"p" * 16, fleet=f))
    assert c.wait_for(lambda: reply_to(b"p" * 16) is not None)
    assert reply_to(b"p" * 16)["ok"] is True  # type: ignore[index]

    c.send_command(command_cose("pause", b"a" * 16, args={"pipe": "vib"}, fleet=f))
    assert c.wait_for(lambda: reply_to(b"a" * 16) is not None)
    assert reply_to(b"a" * 16) == {"ok": True, "paused": ["vib"]}
    n_results = len(c.of_kind(Kind.RESULT))
    rig.source.feed([sample(i) for i in range(40)])
    c.send_command(command_cose("status", b"s" * 16, fleet=f))
    assert c.wait_for(lambda: reply_to(b"s" * 16) is not None)
    status = reply_to(b"s" * 16)
    assert status is not None
    assert status["pipes"]["vib"]["paused"] is True
    assert len(c.of_kind(Kind.RESULT)) == n_results
    c.send_command(command_cose("resume", b"r" * 16, fleet=f))
    assert c.wait_for(lambda: reply_to(b"r" * 16) is not None)
    rig.source.feed([sample(i) for i in range(40)])
    assert c.wait_for(lambda: len(c.of_kind(Kind.RESULT)) > n_results)

    c.send_command(command_cose("reboot", b"u" * 16, fleet=f))
    assert c.wait_for(lambda: reply_to(b"u" * 16) is not None)
    assert reply_to(b"u" * 16)["ok"] is False  # type: ignore[index]
    c.send_command(command_cose("pause", b"x" * 16, args={"pipe": "nope"}, fleet=f))
    assert c.wait_for(lambda: reply_to(b"x" * 16) is not None)
    assert reply_to(b"x" * 16)["error"] == "unknown pipeline"  # type: ignore[index]

    # expired: a signed error reply; bad signature and replay: no reply at all
    c.send_command(command_cose("ping", b"e" * 16, exp_ms=1, fleet=f))
    assert c.wait_for(lambda: reply_to(b"e" * 16) is not None)
    assert reply_to(b"e" * 16) == {"ok": False, "error": "expired"}
    c.send_command(command_cose("ping", b"b" * 16, signer=Signer.from_seed(b"\x09" * 32), fleet=f))
    c.send_command(command_cose("ping", b"p" * 16, fleet=f))  # replayed id
    c.send_command(command_cose("ping", b"z" * 16, fleet=f))  # a marker after both
    assert c.wait_for(lambda: reply_to(b"z" * 16) is not None)
    assert reply_to(b"b" * 16) is None
    assert len([m for m in c.of_kind(Kind.REPLY) if m.payload[Key.ID] == b"p" * 16]) == 1
    assert agent.counters["commands_refused"] >= 3
    # replies sit in the chain
    seqs = sorted(k[1] for k in c.messages if k[0] == agent.boot)
    assert seqs == list(range(len(seqs)))


def test_a_command_that_raises_is_answered_and_the_agent_goes_on(
    rig_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in one command's handler (anything but an AgentError) must not stop the agent: the
    command gets a signed error reply, the error is counted, and the next command runs."""
    real = Agent._run_command

    def run(self: Agent, name: str, args: Any) -> dict[str, Any]:
        if name == "status":
            raise RuntimeError("a bug")
        return real(self, name, args)

    monkeypatch.setattr(Agent, "_run_command", run)
    rig = rig_factory()
    agent = rig.start()
    c = rig.collector

    def reply_to(cid: bytes) -> dict[str, Any] | None:
        for m in c.of_kind(Kind.REPLY):
            if m.payload[Key.ID] == cid:
                return dict(m.payload[Key.REPLY])
        return None

    assert c.wait_for(lambda: bool(c.of_kind(Kind.BIRTH)))
    c.send_command(command_cose("status", b"s" * 16, fleet=rig.fleet))
    assert c.wait_for(lambda: reply_to(b"s" * 16) is not None)
    assert reply_to(b"s" * 16) == {"ok": False, "error": "internal error: RuntimeError"}
    c.send_command(command_cose("ping", b"p" * 16, fleet=rig.fleet))
    assert c.wait_for(lambda: reply_to(b"p" * 16) is not None)
    assert reply_to(b"p" * 16)["ok"] is True  # type: ignore[index]
    assert agent.counters["command_errors"] == 1


def test_claim_on_first_birth_only(rig_factory: Any) -> None:
    rig = rig_factory(extra='\n[enrol]\nclaim_token_file = "claim.token"\n')
    (rig.tmp / "claim.token").write_text("ab" * 32 + "\n")
    c = rig.collector
    agent = rig.start()
    boot1 = agent.boot
    assert c.wait_for(lambda: (boot1, 0) in c.messages)
    birth = c.messages[(boot1, 0)]
    from edge_protocol.keys import claim_tag

    assert birth.payload[Key.CLAIM] == claim_tag(b"\xab" * 32, birth.payload[Key.KEY], DEV)
    assert c.wait_for(lambda: agent.outbox is not None and agent.outbox.get_flag("enrolled") is not None, 5)
    rig.stop()
    agent = rig.start()
    assert c.wait_for(lambda: (agent.boot, 0) in c.messages)
    assert Key.CLAIM not in c.messages[(agent.boot, 0)].payload


def test_heartbeat(rig_factory: Any) -> None:
    rig = rig_factory(heartbeat=0.3)
    rig.start()
    c = rig.collector
    assert c.wait_for(lambda: len(c.of_kind(Kind.HEARTBEAT)) >= 2)
    m = c.of_kind(Kind.HEARTBEAT)[0].payload[Key.METRICS]
    for k in ("cpu", "rss_mb", "outbox_depth", "outbox_bytes", "lat_p50_us", "lat_p95_us", "drops", "links"):
        assert k in m, k
    assert m["rss_mb"] > 0
    # docs/agent.md "Heartbeats" names every metric and counts them (temp_c and disk_free_mb may be
    # absent on a machine without them)
    section = (ROOT / "docs" / "agent.md").read_text().split("## Heartbeats (")[1].split("\n## ")[0]
    documented = set(re.findall(r"`(\w+)(?:`|:)", section))
    assert int(section.split(" metrics")[0]) == len(documented)
    assert set(m) <= documented
    assert documented - set(m) <= {"temp_c", "disk_free_mb"}


def test_falls_back_to_mqtt_311_and_reconnects_cleanly(tmp_path: Path) -> None:
    """A 3.1.1-only broker (amqtt) that never answers an MQTT 5 CONNECT with a Will: with protocol
    "auto" the agent gives up after connect_timeout_s, speaks 3.1.1, and stays connected (a stale
    disconnect callback of the dropped client once made every later connection flap)."""
    from fleet_cli.demo.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as emb:
        broker = Broker(emb.host, emb.port, None)  # type: ignore[arg-type]
        rig = Rig(tmp_path, broker, mqtt_extra='protocol = "auto"\nconnect_timeout_s = 1.0')
        try:
            agent = rig.start()
            c = rig.collector
            rig.source.feed([sample(i) for i in range(100)])
            assert c.wait_for(lambda: len(c.messages) >= 25, 20), c.errors
            assert not c.errors
            assert agent.session is not None
            assert agent.session.counters.protocol == "3.1.1"
            assert agent.session.counters.disconnects == 0
            assert c.wait_for(lambda: agent.outbox is not None and agent.outbox.depth == 0, 10)
        finally:
            rig.close()


def test_an_outage_does_not_pin_mqtt_311(rig_factory: Any, mosquitto: Broker) -> None:
    """Connections reset right after accept (an outage behind a load balancer, a broker restarting) look
    like a broker closing on MQTT 5. With protocol "auto" against Mosquitto the agent must come back to
    MQTT 5: the outage may cost at most the one connection that was probing 3.1.1 when it ended."""
    from tests.faults._proxy import FaultProxy

    proxy = FaultProxy((mosquitto.host, mosquitto.port))
    try:
        rig = rig_factory(mqtt_extra='protocol = "auto"\nconnect_timeout_s = 5.0')
        rig.conf.write_text(
            rig.conf.read_text().replace(f"port = {mosquitto.port}\n", f"port = {proxy.port}\n")
        )
        proxy.outage(True)
        agent = rig.start()
        assert agent.session is not None
        session = agent.session
        assert rig.collector.wait_for(lambda: session.counters.connect_failures >= 8, 20)
        proxy.outage(False)
        rig.source.feed([sample(i) for i in range(40)])
        c = rig.collector
        assert c.wait_for(lambda: len(c.messages) >= 5, 20), c.errors
        connects = session.counters.connects
        if session.counters.protocol != "5":  # the outage ended on a 3.1.1 probe: one connection
            proxy.reset_all()
            assert c.wait_for(lambda: session.counters.connects > connects, 20)
        assert session.counters.protocol == "5"
        connects = session.counters.connects
        proxy.reset_all()  # and a reconnect after a normal connection loss stays on MQTT 5
        assert c.wait_for(lambda: session.counters.connects > connects, 20)
        assert session.counters.protocol == "5"
        assert not c.errors
    finally:
        proxy.close()
