"""The agent: wiring of config, identity, outbox, pipelines, the MQTT session, heartbeats, commands.

Start order (each step fails with a clear :class:`~edge_agent.errors.AgentError` before the next):

1. every pipeline's model is loaded and checked against its window and postprocessing;
2. the state directory, the device key (made on first start, 0600) and the claim token are read;
3. the outbox opens and gives the stored chain head; the boot counter is incremented above it and
   made durable (docs/protocol.md §6) *before* any connection;
4. the birth (seq 0; ``claim`` while the device is not enrolled) is sealed into the outbox;
5. the MQTT session starts; then one reader thread per serial port feeds its pipelines.

Threads: ``edge-agent-mqtt`` (the only one that touches paho), one ``edge-agent-read-*`` per serial
port (read → window → infer → seal → notify), and the control thread (the caller of :meth:`run`:
commands, heartbeats, signals).

Stop (SIGTERM/SIGINT, or :meth:`request_stop`): readers stop reading and finish the batch in hand (a
window is sealed whole or not at all, one transaction), the session publishes what it can for up to
``STOP_FLUSH_S``, publishes the retained ``offline`` state and disconnects; everything ends well
within :data:`STOP_BUDGET_S`.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.commands import BUILTINS, ReplyBudget, admit_command, error_reply, reply_draft
from edge_agent.config import AgentConfig, Delivery, PipelineConfig, load_config
from edge_agent.errors import AgentError
from edge_agent.heartbeat import CpuMeter, link_metrics, system_metrics
from edge_agent.identity import OUTBOX_FILE, ensure_state_dir, load_or_create_key, next_boot, read_claim_token
from edge_agent.outbox import Draft, Entry, Outbox
from edge_agent.pipeline import Pipeline, SampleSource, build_engine
from edge_protocol.commands import PIPE_ARG, CommandName
from edge_protocol.envelope import EnvelopeError
from edge_protocol.keys import Verifier, claim_tag
from edge_protocol.payload import Key, Kind
from edge_protocol.topics import Channel, device_topic

log = logging.getLogger(__name__)

# SIGTERM must end the agent within 5 s (docs/agent.md "SIGTERM"; systemd's default TimeoutStopSec is 90 s,
# but a Pi shutting down should not wait). Budget: readers 0.5 s, MQTT flush 2 s, offline state 1 s.
STOP_BUDGET_S = 5.0
STOP_FLUSH_S = 2.0
# A reader asks the link for samples at most this long, so it notices a stop request this fast.
READ_TIMEOUT_S = 0.1
# Commands waiting for the control thread; a flood beyond this is dropped (and counted).
MAX_COMMAND_QUEUE = 256

SourceFactory = Callable[[PipelineConfig], SampleSource]


def open_link(cfg: PipelineConfig) -> SampleSource:
    """A firmware_bridge SensorLink for a pipeline's source; waits for a port that is not there yet."""
    from firmware_bridge.link import SensorLink

    channels = list(cfg.channels) if cfg.source.protocol.value == "lines" else None
    link = SensorLink(cfg.source.port, cfg.source.baud, cfg.source.protocol.value, channels)
    link.open(wait=True)
    return link


@dataclass
class _Reader:
    port: str
    source: SampleSource
    pipelines: list[Pipeline]
    thread: threading.Thread | None = None
    reconnects: int = 0
    halt: bool = False


class Agent:
    """One running agent. ``start()`` then ``run()`` (blocks until stopped), or use in tests."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        source_factory: SourceFactory = open_link,
        engine_factory: Callable[[PipelineConfig], Any] = build_engine,
    ) -> None:
        self.cfg = cfg
        self._source_factory = source_factory
        self._engine_factory = engine_factory
        self._stop = threading.Event()
        self._control: queue.Queue[bytes | None] = queue.Queue(MAX_COMMAND_QUEUE)
        self._readers: list[_Reader] = []
        self._pipelines: dict[str, Pipeline] = {}
        self._cpu = CpuMeter()
        self._started = time.monotonic()
        self.first_result_at: float | None = None
        self.counters: dict[str, int] = {
            "seal_errors": 0,
            "commands_refused": 0,
            "commands_dropped": 0,
            "commands_done": 0,
            "refusal_replies_suppressed": 0,
            "command_errors": 0,
        }
        self._refusal_replies = ReplyBudget()
        self.outbox: Outbox | None = None
        self.session: Any = None
        self.boot = 0
        self._operator = Verifier(cfg.trust.operator_key) if cfg.trust.operator_key else None

    # -- start ----------------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        pipelines = self._build_pipelines(cfg)  # 1. models first: a bad model never bumps the boot
        state = ensure_state_dir(cfg.device.state_dir)  # 2.
        signer = load_or_create_key(state)
        token = read_claim_token(cfg.claim_token_file)
        outbox = Outbox(
            state / OUTBOX_FILE, max_bytes=cfg.outbox.max_bytes, synchronous=cfg.outbox.synchronous
        )
        head = outbox.stored_head  # 3.
        self.boot = next_boot(state, at_least=(head.boot + 1) if head else 1)
        outbox.start_boot(signer, cfg.device.id, cfg.device.fleet, self.boot)
        self.outbox = outbox
        self._signer = signer
        self._pipelines = {p.name: p for p in pipelines}
        birth = self._seal([self._birth_draft(signer.public_key, token, pipelines)])  # 4.
        log.info(
            "device %s boot %d: birth sealed (kid %s, %d pipelines)",
            cfg.device.id,
            self.boot,
            signer.kid.hex(),
            len(pipelines),
        )
        from edge_agent.session import Session  # 5.

        self.session = Session(
            cfg.mqtt,
            fleet=cfg.device.fleet,
            dev=cfg.device.id,
            boot=self.boot,
            outbox=outbox,
            delivery=cfg.trust.delivery,
            collector_keys=cfg.trust.collector_keys,
            on_command=self._enqueue_command,
            on_delivered=self._delivered,
        )
        self.session.start()
        self.session.notify(birth)
        self._start_readers(pipelines)

    def _build_pipelines(self, cfg: AgentConfig) -> list[Pipeline]:
        return [Pipeline(p, self._engine_factory(p), cfg.device.fleet, cfg.device.id) for p in cfg.pipelines]

    def _birth_draft(self, public_key: bytes, token: bytes | None, pipelines: Sequence[Pipeline]) -> Draft:
        assert self.outbox is not None
        body: dict[int, object] = {Key.KEY: public_key, Key.INFO: self._info(pipelines)}
        if token is not None and self.outbox.get_flag("enrolled") is None:
            body[Key.CLAIM] = claim_tag(token, public_key, self.cfg.device.id)
            self.outbox.set_flag("claim_boot", str(self.boot))
        return Draft(
            Kind.BIRTH, body, device_topic(self.cfg.device.fleet, self.cfg.device.id, Channel.BIRTH), True
        )

    def _info(self, pipelines: Sequence[Pipeline]) -> dict[str, Any]:
        runtime = ""
        engines = [p.engine for p in pipelines]
        if engines and hasattr(engines[0], "runtime"):
            rt = engines[0].runtime
            runtime = f"{rt.name} {rt.version}"
        hw: dict[str, Any] = {"machine": platform.machine(), "system": platform.system()}
        try:
            model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode("ascii", "replace")
            hw["board"] = model[:120]
        except OSError:
            pass
        return {
            "agent": f"edge-agent {__version__}",
            "runtime": runtime,
            "python": platform.python_version(),
            "pipes": {p.name: p.engine.model_hash for p in pipelines},
            "hw": hw,
        }

    def _delivered(self, boot: int, seq: int) -> None:
        """A birth that carried the claim is delivered: the device is enrolled, later births go without."""
        assert self.outbox is not None
        claim_boot = self.outbox.get_flag("claim_boot")
        # Any ack of that boot covers seq 0, the birth (an ack covers every seq up to its own).
        del seq
        if claim_boot is not None and int(claim_boot) == boot and self.outbox.get_flag("enrolled") is None:
            self.outbox.set_flag("enrolled", str(boot))
            log.info("enrolment confirmed (birth of boot %d delivered)", boot)

    # -- sealing ------------------------------------------------------------------------------------

    def _seal(self, drafts: Sequence[Draft]) -> list[Entry]:
        """Seal drafts in one transaction; a draft that cannot be encoded is skipped and counted."""
        assert self.outbox is not None
        try:
            return self.outbox.seal_many(drafts)
        except EnvelopeError:
            entries: list[Entry] = []
            for d in drafts:
                try:
                    entries += self.outbox.seal_many([d])
                except EnvelopeError as e:
                    self.counters["seal_errors"] += 1
                    log.warning("cannot seal a %s message: %s", d.kind.name.lower(), e.reason)
            return entries

    def _publish(self, drafts: Sequence[Draft]) -> list[Entry]:
        entries = self._seal(drafts)
        if entries and self.session is not None:
            self.session.notify(entries)
        return entries

    # -- readers ------------------------------------------------------------------------------------

    def _start_readers(self, pipelines: Sequence[Pipeline]) -> None:
        by_port: dict[str, list[Pipeline]] = {}
        for p in pipelines:
            by_port.setdefault(p.cfg.source.port, []).append(p)
        for port, group in by_port.items():
            source = self._source_factory(group[0].cfg)
            reader = _Reader(port, source, group)
            reader.thread = threading.Thread(
                target=self._read_loop, args=(reader,), name=f"edge-agent-read-{group[0].name}", daemon=True
            )
            self._readers.append(reader)
            reader.thread.start()

    def _read_loop(self, reader: _Reader) -> None:
        try:
            while not self._stop.is_set() and not reader.halt:
                samples = reader.source.read_samples(READ_TIMEOUT_S)
                reconnects = reader.source.stats().get("reconnects", 0)
                if reconnects != reader.reconnects:
                    reader.reconnects = reconnects
                    for p in reader.pipelines:
                        p.reset()
                if not samples:
                    continue
                drafts: list[Draft] = []
                channels = reader.source.channels
                for p in reader.pipelines:
                    drafts += p.process(samples, channels)
                if drafts:
                    if self.first_result_at is None:
                        self.first_result_at = time.monotonic()
                    self._publish(drafts)
        except Exception:  # a reader must not die silently; the agent stops so systemd restarts it
            log.exception("reader of %s failed; stopping the agent", reader.port)
            self.request_stop()

    def _stop_readers(self) -> None:
        for r in self._readers:
            r.halt = True
        for r in self._readers:
            if r.thread is not None:
                r.thread.join(STOP_BUDGET_S / 5)
            try:
                r.source.close()
            except Exception:  # closing a port that vanished
                log.debug("closing %s failed", r.port, exc_info=True)
        self._readers = []

    # -- control: commands and heartbeats ---------------------------------------------------------

    def _enqueue_command(self, payload: bytes) -> None:
        try:
            self._control.put_nowait(payload)
        except queue.Full:
            self.counters["commands_dropped"] += 1

    def request_stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._control.put_nowait(None)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def healthy(self) -> bool:
        """The threads the agent needs are alive: its MQTT session and every serial reader."""
        session_ok = self.session is not None and self.session.alive()
        return session_ok and all(r.thread is not None and r.thread.is_alive() for r in self._readers)

    def run(self) -> None:
        """The control loop: commands and heartbeats until a stop is requested; then a clean stop."""
        from edge_agent.watchdog import Notifier

        notifier = Notifier()
        notifier.ready(f"device {self.cfg.device.id} boot {self.boot}: {len(self._pipelines)} pipelines")
        wd = notifier.watchdog_interval_s
        next_wd = time.monotonic() if wd is not None else float("inf")
        next_hb = time.monotonic() + (self.cfg.heartbeat_s or float("inf"))
        try:
            while not self._stop.is_set():
                if wd is not None and time.monotonic() >= next_wd:
                    next_wd = time.monotonic() + wd
                    if self.healthy():
                        notifier.watchdog()
                    else:
                        log.error("a session or reader thread died: no watchdog ping (systemd restarts us)")
                timeout = max(0.0, min(next_hb - time.monotonic(), next_wd - time.monotonic(), 1.0))
                try:
                    item = self._control.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is not None and not self._stop.is_set():
                    self._handle_command(item)
                if self.cfg.heartbeat_s and time.monotonic() >= next_hb and not self._stop.is_set():
                    next_hb = time.monotonic() + self.cfg.heartbeat_s
                    self._publish([self.heartbeat_draft()])
        finally:
            notifier.stopping()
            self.shutdown()
            notifier.close()

    def shutdown(self) -> None:
        """Stop readers, flush and say offline, close the outbox. Idempotent."""
        self._stop.set()
        self._stop_readers()
        if self.session is not None:
            self.session.stop(flush_s=STOP_FLUSH_S, timeout_s=STOP_FLUSH_S + 1.5)
            self.session = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    def heartbeat_draft(self) -> Draft:
        assert self.outbox is not None
        lat50 = max((p.latency.percentile(50) for p in self._pipelines.values()), default=0)
        lat95 = max((p.latency.percentile(95) for p in self._pipelines.values()), default=0)
        metrics = system_metrics(self._cpu, self.cfg.device.state_dir, self._started)
        metrics.update(
            {
                "outbox_depth": self.outbox.depth,
                "outbox_bytes": self.outbox.size_bytes,
                "lat_p50_us": lat50,
                "lat_p95_us": lat95,
                "drops": self.outbox.dropped,
                "results": sum(p.counters.results for p in self._pipelines.values()),
                "errors": sum(p.counters.errors for p in self._pipelines.values()),
                "links": {r.pipelines[0].name: link_metrics(r.source.stats()) for r in self._readers},
            }
        )
        return Draft(
            Kind.HEARTBEAT,
            {Key.METRICS: metrics},
            device_topic(self.cfg.device.fleet, self.cfg.device.id, Channel.HEARTBEAT),
        )

    def _reply_topic(self) -> str:
        return device_topic(self.cfg.device.fleet, self.cfg.device.id, Channel.REPLY)

    def _handle_command(self, payload: bytes) -> None:
        assert self.outbox is not None
        if self._operator is None:
            self.counters["commands_refused"] += 1
            log.warning("command ignored: no trust.operator_key configured")
            return
        now = time.time_ns() // 1_000_000
        checked = admit_command(
            payload, self.cfg.device.fleet, self.cfg.device.id, self._operator, cache=self.outbox, now_ms=now
        )
        if checked.command is None:
            self.counters["commands_refused"] += 1
            assert checked.refusal is not None
            log.info("command refused: %s (%s)", checked.refusal.value, checked.detail)
            if checked.refusal.replies and checked.command_id is not None and self._refusal_reply():
                self._publish(
                    [reply_draft(self._reply_topic(), checked.command_id, error_reply(checked.refusal.value))]
                )
            return
        cmd = checked.command
        try:
            reply = self._run_command(cmd.name, cmd.args)
        except AgentError as e:
            reply = error_reply(str(e))
        except Exception as e:  # a bug in one command must not stop the agent: answer it, and log it
            self.counters["command_errors"] += 1
            log.exception("command %s failed", cmd.name[:63])
            reply = error_reply(f"internal error: {type(e).__name__}")
        self.counters["commands_done"] += 1
        self._publish([reply_draft(self._reply_topic(), cmd.id, reply)])

    def _refusal_reply(self) -> bool:
        """Whether a refused command gets its signed error reply (:class:`ReplyBudget`); counted if not."""
        if self._refusal_replies.take():
            return True
        self.counters["refusal_replies_suppressed"] += 1
        return False

    def _run_command(self, name: str, args: dict[str, Any] | Any) -> dict[str, Any]:
        if name == CommandName.PING:
            return {"ok": True, "pong": time.time_ns() // 1_000_000}
        if name == CommandName.STATUS:
            return self.status()
        if name in (CommandName.PAUSE, CommandName.RESUME):
            pipe = args.get(PIPE_ARG) if isinstance(args, dict) else None
            targets = list(self._pipelines.values()) if pipe is None else [self._pipelines.get(str(pipe))]
            if any(t is None for t in targets):
                return error_reply("unknown pipeline", pipe=str(pipe)[:63])
            for t in targets:
                assert t is not None
                (t.paused.set if name == CommandName.PAUSE else t.paused.clear)()
            return {
                "ok": True,
                "paused": sorted(p.name for p in self._pipelines.values() if p.paused.is_set()),
            }
        if name == CommandName.RELOAD:
            return self._reload()
        return error_reply("unknown command", cmd=name[:63], known=list(BUILTINS))

    def _reload(self) -> dict[str, Any]:
        """Re-read the config file and rebuild the pipelines; device, mqtt and trust must not change."""
        try:
            new = load_config(self.cfg.path)
        except AgentError as e:
            return error_reply(f"config: {e}")
        if (new.device, new.mqtt, new.trust, new.outbox) != (
            self.cfg.device,
            self.cfg.mqtt,
            self.cfg.trust,
            self.cfg.outbox,
        ):
            return error_reply("device, mqtt, trust or outbox changed: restart the agent")
        try:
            pipelines = self._build_pipelines(new)
        except AgentError as e:
            return error_reply(str(e))
        self._stop_readers()
        self.cfg = new
        self._pipelines = {p.name: p for p in pipelines}
        self._start_readers(pipelines)
        return {"ok": True, "pipes": {p.name: p.engine.model_hash.hex() for p in pipelines}}

    def status(self) -> dict[str, Any]:
        assert self.outbox is not None
        session = self.session
        return {
            "ok": True,
            "boot": self.boot,
            "seq": self.outbox.next_seq,
            "outbox": {
                "depth": self.outbox.depth,
                "bytes": self.outbox.size_bytes,
                "dropped": self.outbox.dropped,
            },
            "mqtt": {
                "state": session.state.value if session else "stopped",
                "inflight": session.inflight if session else 0,
                "published": session.counters.published if session else 0,
            },
            "pipes": {
                p.name: {
                    "paused": p.paused.is_set(),
                    "results": p.counters.results,
                    "errors": p.counters.errors,
                    "windows": p.counters.windows,
                }
                for p in self._pipelines.values()
            },
            "delivery": self.cfg.trust.delivery.value,
        }


def run_agent(cfg: AgentConfig, *, install_signals: bool = True) -> int:
    """Start the agent, run it until SIGTERM/SIGINT, stop it cleanly; the process exit code."""
    import signal

    agent = Agent(cfg)
    if install_signals:

        def _on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: stopping", signum)
            agent.request_stop()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        agent.start()
    except BaseException:
        agent.shutdown()
        raise
    agent.run()
    return 0


__all__ = ["Agent", "Delivery", "run_agent"]
