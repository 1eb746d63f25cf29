"""``fleet demo``: a whole fleet on one machine, built from the real parts.

A private broker (Mosquitto with the rendered hardened config when it is installed, else the embedded
amqtt broker), N virtual microcontrollers on pseudo-terminals with scheduled faults, N ``edge-agent``
processes running the shipped TFLite model, one in-process collector verifying and storing, and an
attacker who injects a tampered result, a result signed by a stranger's key and a replay. Nothing is
mocked: the agents are the same processes a Raspberry Pi runs, talking over real ptys and real MQTT.

Everything lives in a temporary directory that is removed afterwards (``keep=True`` keeps it), and
every process and thread started here is stopped in :meth:`Demo.close`, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker_config.files import blocking_dir
from broker_config.passwd import hash_password
from broker_config.runner import MosquittoProcess, free_port, mosquitto_binary
from edge_protocol.envelope import decode_unverified, seal
from edge_protocol.keys import Signer, read_private_key
from edge_protocol.topics import Channel, device_topic, fleet_device_filter
from fleet_cli import flash, shipped_model
from fleet_cli.errors import FleetError, UsageError
from fleet_cli.mqtt.settings import MqttVersion

if TYPE_CHECKING:  # loaded where used: the demo's parts are heavy and not all needed for --help
    from firmware_bridge.sim.simulator import Simulator
    from fleet_cli.collector.service import Collector
    from fleet_cli.demo.embedded_broker import EmbeddedBroker
    from fleet_cli.registry import Registry

log = logging.getLogger(__name__)

# The demo shows results within a fraction of a second: commit often, ack often.
DEMO_BATCH_DELAY_S = 0.05
DEMO_ACK_INTERVAL_S = 0.5
DEMO_REORDER_TIMEOUT_S = 10.0

FLEET = "demo"
PIPE = flash.PIPELINE_NAME
# The agents' timers, shorter than a device's defaults so the demo shows resends and reconnects.
HEARTBEAT_S = 5.0
RESEND_AFTER_S = 5.0
BACKOFF_S = (0.2, 3.0)
SIMULATOR_BAUD = 921600  # a pty has no baud rate; this is what the agents' configs say
MAX_DEVICES = 20  # each device is a simulator thread plus an agent process: 2 cores go no further
MIN_DURATION_S = 5.0
MAX_DURATION_S = 24 * 3600.0
AGENT_STOP_TIMEOUT_S = 6.0  # agents exit within 5 s of SIGTERM (docs/agent.md)
ATTACKER = "mallory"


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 3
    duration_s: float = 30.0
    broker: str = "auto"  # auto | mosquitto | embedded
    seed: int = 1
    attack: bool = True
    keep: bool = False
    workdir: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= MAX_DEVICES:
            raise UsageError(f"--devices must be between 1 and {MAX_DEVICES}, not {self.devices}")
        if not MIN_DURATION_S <= self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"--duration must be between {MIN_DURATION_S:g} and {MAX_DURATION_S:g} seconds")
        if self.broker not in ("auto", "mosquitto", "embedded"):
            raise UsageError(f"--broker must be auto, mosquitto or embedded, not {self.broker!r}")


@dataclass
class AttackRecord:
    at_s: float
    what: str
    device: str
    expected: str
    data: bytes = b""
    duplicates_before: int = 0


@dataclass
class DeviceScript:
    """What happens to one virtual machine during the demo (conditions and line faults)."""

    name: str
    schedule: tuple[tuple[float, str], ...]
    faults: dict[str, float] = field(default_factory=dict)
    note: str = ""


def device_scripts(n: int, duration_s: float) -> list[DeviceScript]:
    """A varied, repeatable scenario: healthy machines, one that goes out of balance, one with a
    bearing fault, one with a noisy line, one that gets unplugged."""
    d = duration_s
    plans = [
        DeviceScript("dev-01", ((0.0, "normal"),), note="healthy"),
        DeviceScript("dev-02", ((0.0, "normal"), (0.35 * d, "imbalance")), note="goes out of balance"),
        DeviceScript(
            "dev-03", ((0.0, "bearing"),), {"ber": 1e-4}, note="bearing fault, noisy line (BER 1e-4)"
        ),
        DeviceScript(
            "dev-04",
            ((0.0, "normal"), (0.5 * d, "bearing")),
            {"disconnect_every_s": max(d / 3, 4.0), "disconnect_for_s": 1.5},
            note="unplugged now and then, then a bearing fault",
        ),
        DeviceScript(
            "dev-05", ((0.0, "imbalance"),), {"garbage_every_s": 2.0}, note="imbalance, garbage bursts"
        ),
    ]
    out = []
    for i in range(n):
        base = plans[i % len(plans)]
        name = f"dev-{i + 1:02d}"
        out.append(DeviceScript(name, base.schedule, dict(base.faults), base.note))
    return out


def _agent_command() -> list[str]:
    found = shutil.which("edge-agent", path=str(Path(sys.executable).parent)) or shutil.which("edge-agent")
    return [found] if found else [sys.executable, "-m", "edge_agent.cli"]


def _agent_settings(
    script: DeviceScript,
    *,
    state_dir: Path,
    port_link: Path,
    models: Path,
    facts: shipped_model.ModelFacts,
    mqtt: dict[str, Any],
    operator_key: str,
    collector_key: str,
    claim_file: Path,
) -> flash.AgentSettings:
    """A demo agent's agent.toml, rendered by the same code as a flashed device's (absolute paths,
    TLS and a password only on Mosquitto, the model's facts from its sidecar)."""
    return flash.AgentSettings(
        device=script.name,
        fleet=FLEET,
        broker_host=mqtt["host"],
        broker_port=mqtt["port"],
        operator_key=operator_key,
        collector_keys=(collector_key,),
        serial_port=str(port_link),
        baud=SIMULATOR_BAUD,
        model=shipped_model.INT8_MODEL,
        model_dir=str(models),
        labels=facts.labels,
        channels=facts.channels,
        window=facts.window,
        hop=facts.hop,
        state_dir=str(state_dir),
        heartbeat_s=HEARTBEAT_S,
        written_by="`fleet demo`",
        tls_ca=mqtt.get("tls_ca"),
        password_file=mqtt.get("password_file"),
        claim_token_file=str(claim_file),
        protocol=mqtt["protocol"],
        resend_after_s=RESEND_AFTER_S,
        backoff_min_s=BACKOFF_S[0],
        backoff_max_s=BACKOFF_S[1],
    )


class Demo:
    """Sets up, runs and tears down the whole demo. Use as a context manager."""

    def __init__(self, options: DemoOptions, on_event: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.on_event = on_event or (lambda text: None)
        self.workdir = (
            Path(options.workdir) if options.workdir else Path(tempfile.mkdtemp(prefix="edgeseal-demo-"))
        )
        self.scripts = device_scripts(options.devices, options.duration_s)
        self.broker_kind = ""
        self.mqtt: dict[str, Any] = {}
        self.attacks: list[AttackRecord] = []
        self.started_at = 0.0
        self._mosquitto: MosquittoProcess | None = None
        self._embedded: EmbeddedBroker | None = None
        self._simulators: list[Simulator] = []
        self._agents: dict[str, subprocess.Popen[bytes]] = {}
        self._agent_logs: list[Any] = []
        self.collector: Collector | None = None
        self._registry: Registry | None = None
        self._attacker_password = secrets.token_urlsafe(24)
        self._captured: dict[str, bytes] = {}
        self._capture_client: Any = None
        self._lock = threading.Lock()
        self._broker_tmp: Path | None = None
        self._models = Path()
        self._facts: shipped_model.ModelFacts | None = None

    @property
    def store_path(self) -> Path:
        """The collector's store, where ``fleet collect`` keeps it in the demo's fleet home: after
        ``--keep``, ``fleet status --home WORKDIR/fleet`` and the other commands find it (after setup)."""
        from fleet_cli.collector.store import default_store_path

        return default_store_path(self.home.root)

    # -- set-up ---------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The demo fleet's registry, open between the fleet's creation and :meth:`stop`."""
        if self._registry is None:
            raise FleetError("the demo's registry is not open")
        return self._registry

    def _event(self, text: str) -> None:
        log.info("%s", text)
        self.on_event(text)

    def _choose_broker(self) -> str:
        if self.options.broker != "auto":
            if self.options.broker == "mosquitto":
                mosquitto_binary()  # raises with the install hint
            return self.options.broker
        try:
            mosquitto_binary()
        except Exception:
            return "embedded"
        return "mosquitto"

    def setup(self) -> None:
        from fleet_cli.home import init_fleet
        from fleet_cli.registry import Registry

        self._models = shipped_model.models_dir()
        self._facts = shipped_model.read_facts(self._models)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # Mosquitto drops to its own user: it must reach the broker directory
            self.workdir.chmod(0o755)
        self.broker_kind = self._choose_broker()
        tls_port, plain_port = free_port(), free_port()
        broker_dir = self.workdir / "broker"
        if blocking_dir(broker_dir, "mosquitto") is not None:
            # A --workdir below a private directory (a 0700 home, pytest's tmp): the broker's user
            # could not read its files there, so they go to a fresh directory of their own.
            self._broker_tmp = Path(tempfile.mkdtemp(prefix="edgeseal-demo-broker-"))
            self._broker_tmp.chmod(0o755)
            broker_dir = self._broker_tmp / "broker"
        self.home = init_fleet(
            self.workdir / "fleet", FLEET, broker_host="localhost", tls_port=tls_port, plain_port=plain_port,
            broker_dir=str(broker_dir),
        )  # fmt: skip
        self._registry = Registry(self.home.registry_db)
        for s in self.scripts:
            self.registry.add_device(s.name, {"demo": "true"})
        self._event(f"fleet '{FLEET}' created in {self.workdir} with {len(self.scripts)} devices")

        if self.broker_kind == "mosquitto":
            self._start_mosquitto(tls_port)
        else:
            from fleet_cli.demo.embedded_broker import EmbeddedBroker

            self._embedded = EmbeddedBroker().start()
            self.mqtt = {"host": "127.0.0.1", "port": self._embedded.port, "protocol": "3.1.1"}
            self._event(f"embedded amqtt broker (MQTT 3.1.1) on 127.0.0.1:{self._embedded.port}")

        self._start_simulators()
        self._start_collector()
        self._start_agents()
        self._start_capture()
        self.started_at = time.monotonic()

    def _start_mosquitto(self, tls_port: int) -> None:
        from fleet_cli.broker import render_broker

        rendered = render_broker(self.home)
        paths = self.home.broker_settings().paths
        # The demo's attacker: a compromised broker account allowed to write every device's topics,
        # which is exactly the threat device signatures exist for (docs/reliability.md).
        with paths.acl.open("a") as f:
            f.write(
                f"\n# demo only: a compromised broker account\nuser {ATTACKER}\n"
                f"topic write edgeseal/v1/{FLEET}/+/res/+\n"
            )
        with paths.passwd.open("a") as f:
            f.write(f"{ATTACKER}:{hash_password(self._attacker_password)}\n")
        del rendered
        self._mosquitto = MosquittoProcess(paths.conf, tls_port, log=self.workdir / "mosquitto.log").start()
        self.mqtt = {
            "host": "localhost",
            "port": tls_port,
            "protocol": "auto",
            "tls_ca": str(self.home.ca_cert),
        }
        self._event(f"Mosquitto with the rendered hardened config (TLS, ACL per device) on port {tls_port}")

    def _start_simulators(self) -> None:
        from firmware_bridge.sim.faults import FaultConfig
        from firmware_bridge.sim.simulator import Simulator

        assert self._facts is not None
        hz = self._facts.hz  # the rate the model was trained at
        for i, s in enumerate(self.scripts):
            sim = Simulator(
                profile="vibration",
                hz=hz,
                protocol="frames",
                link=self.workdir / f"tty-{s.name}",
                seed=self.options.seed * 1000 + i,
                faults=FaultConfig(**s.faults),
                schedule=s.schedule,
            )
            sim.start()
            self._simulators.append(sim)
        self._event(f"{len(self._simulators)} virtual microcontrollers streaming a 3-axis IMU at {hz:g} Hz")

    def _device_mqtt(self, name: str) -> dict[str, Any]:
        mqtt = dict(self.mqtt)
        if self.broker_kind == "mosquitto":
            creds = self.registry.device_credentials(name)
            pw = self.workdir / "agents" / name / "mqtt.pass"
            pw.write_text(creds.password + "\n")
            pw.chmod(0o600)
            mqtt.update(username=creds.username, password_file=str(pw))
        return mqtt

    def _start_agents(self) -> None:
        operator = read_private_key(self.home.operator_key).public_key.hex()
        collector = read_private_key(self.home.collector_key).public_key.hex()
        assert self._facts is not None
        cmd = _agent_command()
        for s in self.scripts:
            adir = self.workdir / "agents" / s.name
            adir.mkdir(parents=True, exist_ok=True)
            claim = adir / "claim.token"
            token = self.registry.device_credentials(s.name).claim_token
            if token is None:  # added by this demo a moment ago: never enrolled
                raise FleetError(f"demo device {s.name} has no claim token")
            claim.write_text(token + "\n")
            claim.chmod(0o600)
            conf = adir / "agent.toml"
            settings = _agent_settings(
                s,
                state_dir=adir / "state",
                port_link=self.workdir / f"tty-{s.name}",
                models=self._models,
                facts=self._facts,
                mqtt=self._device_mqtt(s.name),
                operator_key=operator,
                collector_key=collector,
                claim_file=claim,
            )
            conf.write_text(flash.render_agent_config(settings))
            logf = (adir / "agent.log").open("ab")
            self._agent_logs.append(logf)
            self._agents[s.name] = subprocess.Popen(
                [*cmd, "run", "--config", str(conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the demo, which stops the agents itself
            )
        self._event(f"{len(self._agents)} edge-agent processes running the shipped int8 model")

    def _start_collector(self) -> None:
        from edge_protocol.keys import read_private_key
        from fleet_cli.collector.config import CollectorConfig
        from fleet_cli.collector.log import load_log_signer
        from fleet_cli.collector.service import Collector

        mqtt = self.mqtt
        username = password = None
        if self.broker_kind == "mosquitto":
            creds = self.registry.user_credentials(self.home.config.collector_user)
            username, password = creds.username, creds.password
        config = CollectorConfig(
            fleet=self.home.fleet,
            store_path=self.store_path,
            host=mqtt["host"],
            port=mqtt["port"],
            username=username,
            password=password,
            tls_ca=self.home.ca_cert if mqtt.get("tls_ca") else None,
            protocol=MqttVersion.V311 if self.broker_kind == "embedded" else MqttVersion.AUTO,
            client_id="demo-collector",
            batch_max_delay_s=DEMO_BATCH_DELAY_S,
            ack_interval_s=DEMO_ACK_INTERVAL_S,
            reorder_timeout_s=DEMO_REORDER_TIMEOUT_S,
        )
        # The fleet log (docs/log.md): the demo's collector signs checkpoints like a real one.
        log_signer = load_log_signer(self.home.root, self.home.fleet, create=True)
        self.collector = Collector(
            config, self.registry, read_private_key(self.home.collector_key), log_signer=log_signer
        )
        self.collector.start()
        self._event("collector verifying, storing and acking (fleet-ack delivery)")

    def _attacker_client(self, client_id: str) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if self.broker_kind == "mosquitto":
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ATTACKER, protocol=mqtt.MQTTv311)
            c.username_pw_set(ATTACKER, self._attacker_password)
            c.tls_set(ca_certs=self.mqtt["tls_ca"])
        else:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        return c

    def _start_capture(self) -> None:
        """The attacker listens (where the broker lets it) to capture genuine results to replay.

        On the hardened broker the attacker account may not read: the capture then uses the
        collector's own view of stored messages instead (an attacker with a broker dump)."""
        if self.broker_kind != "embedded":
            return
        c = self._attacker_client("mallory-listen")

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            if "/res/" in msg.topic:
                with self._lock:
                    self._captured.setdefault(msg.topic.split("/")[3], bytes(msg.payload))

        c.on_message = on_message
        c.connect(self.mqtt["host"], self.mqtt["port"])
        c.subscribe(fleet_device_filter(FLEET), qos=0)
        c.loop_start()
        self._capture_client = c

    # -- the attack -----------------------------------------------------------------------
    def _genuine_result(self, dev: str) -> bytes | None:
        with self._lock:
            raw = self._captured.get(dev)
        if raw is None and self.collector is not None:
            from fleet_cli.demo.view import latest_result_raw

            raw = latest_result_raw(self.store_path, dev)
        return raw

    def attack(self) -> None:
        """Inject a tampered result, a result signed by an unknown key, and a replay."""
        targets = [s.name for s in self.scripts]
        victim = targets[0]
        genuine = self._genuine_result(victim)
        if genuine is None:
            self._event("attacker: no genuine result captured yet, attack postponed")
            return
        opened = decode_unverified(genuine)
        topic = device_topic(FLEET, victim, Channel.RESULT, PIPE)
        elapsed = time.monotonic() - self.started_at

        # 1. Tamper: a genuine envelope whose label is changed after signing.
        tampered = bytearray(genuine)
        for old, new in ((b"imbalance", b"imbalanc3"), (b"bearing", b"bearin9"), (b"normal", b"n0rmal")):
            i = genuine.find(old)
            if i >= 0:
                tampered[i : i + len(old)] = new
                break
        # 2. Forge: a well-formed result for the victim signed by the attacker's own key.
        payload = dict(opened.payload)
        payload[3] = int(payload[3]) + 1_000_000
        payload[10] = {"label": "normal", "score": 1.0, "values": [1.0, 0.0, 0.0]}
        forged = seal(payload, Signer.generate(), FLEET).cose
        # 3. Replay: the genuine bytes again, later.
        injections = [
            ("result with its label changed after signing", bytes(tampered), "BAD_SIGNATURE"),
            ("result signed by a key the fleet does not know", forged, "UNKNOWN_KEY"),
            ("replay of a genuine result", genuine, "DUPLICATE"),
        ]
        c = self._attacker_client("mallory")
        done = threading.Event()
        c.on_connect = lambda *a: done.set()
        c.connect(self.mqtt["host"], self.mqtt["port"])
        c.loop_start()
        try:
            if not done.wait(5):
                self._event("attacker: could not connect")
                return
            for what, data, expected in injections:
                dups = self.collector.snapshot().duplicates if self.collector is not None else 0
                info = c.publish(topic, data, qos=1)
                info.wait_for_publish(5)
                with self._lock:
                    self.attacks.append(AttackRecord(elapsed, what, victim, expected, data, dups))
                self._event(f"attacker injects: {what} ({victim})")
        finally:
            c.loop_stop()
            c.disconnect()

    # -- tear-down ------------------------------------------------------------------------
    def agents_alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self._agents.items()}

    def close(self) -> None:
        """Stop everything this demo started, in the reverse order, whatever state it is in."""
        for p in self._agents.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + AGENT_STOP_TIMEOUT_S
        for p in self._agents.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._agent_logs:
            f.close()
        if self.collector is not None:
            with contextlib.suppress(Exception):
                self.collector.stop()
        if self._capture_client is not None:
            self._capture_client.loop_stop()
            self._capture_client.disconnect()
        for sim in self._simulators:
            with contextlib.suppress(Exception):
                sim.stop()
        if self._mosquitto is not None:
            self._mosquitto.stop()
        if self._embedded is not None:
            self._embedded.stop()
        if self._registry is not None:
            self._registry.close()
        if not self.options.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self._broker_tmp is not None:
                shutil.rmtree(self._broker_tmp, ignore_errors=True)

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
