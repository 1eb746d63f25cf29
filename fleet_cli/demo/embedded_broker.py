"""An embedded MQTT 3.1.1 broker (amqtt) for ``fleet demo`` on machines without Mosquitto.

It runs in its own thread with its own asyncio loop and listens on loopback only, anonymously: it is a
demonstration convenience, never a production broker (use ``fleet broker`` and Mosquitto for that).
amqtt speaks MQTT 3.1.1 only, so clients must fall back from MQTT 5.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from broker_config.runner import free_port
from fleet_cli.errors import FleetError

_log = logging.getLogger(__name__)

# How long the embedded broker may take to open its listener or to shut down.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# A demo runs a few dozen clients; the bound keeps a runaway test from exhausting file descriptors.
MAX_CONNECTIONS = 256


class _SnapshotDict(dict[str, Any]):
    """A dict whose iteration works on a copy of its keys or items.

    amqtt 0.11-0.12 iterates ``Broker._subscriptions`` with ``await`` inside the loop (retained messages for a
    new session, broadcasts); a client that subscribes meanwhile changes the dict's size and the iterating
    coroutine dies with ``RuntimeError: dictionary changed size during iteration``, dropping that client's
    connection. Iterating a snapshot keeps the broker's semantics (a filter added meanwhile is simply not
    visited by the loop already running) without the crash.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.keys(self)))

    def keys(self) -> list[str]:  # type: ignore[override]
        return list(dict.keys(self))

    def values(self) -> list[Any]:  # type: ignore[override]
        return list(dict.values(self))

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return list(dict.items(self))


def amqtt_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one anonymous TCP listener on ``host:port``."""
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": MAX_CONNECTIONS}
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def install_snapshot_table(broker: Any) -> bool:
    """Swap amqtt's subscription table for a :class:`_SnapshotDict` with the same entries.

    ``Broker._subscriptions`` is private: pyproject.toml bounds amqtt to the versions this was checked
    on, and tests/fleet_cli/demo/test_embedded_broker.py fails the day the attribute is renamed, is no plain
    dict any more, or is no longer the table behind the public ``Broker.subscriptions``. False (and
    nothing changed) when the table is not a plain dict.
    """
    table = getattr(broker, "_subscriptions", None)
    if type(table) is not dict:
        return False
    broker._subscriptions = _SnapshotDict(table)
    return True


class EmbeddedBroker:
    """amqtt on ``127.0.0.1:port`` in a background thread."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Exceptions that escaped amqtt's own handlers (it would otherwise print a traceback per client).
        self.internal_errors = 0

    def start(self) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as e:  # pragma: no cover - amqtt is a dependency of edgeseal
            raise FleetError("the embedded broker needs amqtt", hint="pip install amqtt") from e
        # amqtt logs every half-open probe connection as an error; the demo has its own display.
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        config = amqtt_config(self.host, self.port)
        loop = asyncio.new_event_loop()
        self._loop = loop

        loop.set_exception_handler(self._on_loop_exception)

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(config, loop=loop)
                if not install_snapshot_table(self._broker):
                    _log.warning(
                        "embedded broker: this amqtt has no Broker._subscriptions dict to patch;"
                        " clients subscribing while others connect may be dropped"
                    )
                loop.run_until_complete(self._broker.start())
            except BaseException as e:  # reported to start() below
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
        self._thread.start()
        self._ready.wait(START_TIMEOUT_S)
        # broker.start() returns once the listener is bound; no probe connection (amqtt would log it).
        if self._error is not None or not self._ready.is_set():
            self.stop()
            raise FleetError(f"the embedded broker did not start on {self.host}:{self.port}: {self._error}")
        return self

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """One line per escaped exception instead of asyncio's traceback; counted in ``internal_errors``."""
        self.internal_errors += 1
        exc = context.get("exception")
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else str(context.get("message", "?"))
        _log.warning("embedded broker: a client's session ended with an internal amqtt error (%s)", detail)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._broker is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            try:
                fut.result(STOP_TIMEOUT_S)
            except Exception:
                _log.debug("embedded broker shutdown failed", exc_info=True)
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        self._loop = self._thread = self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
