"""Run a Mosquitto process with a given config file: start, wait until it listens, stop.

Used by ``fleet broker start``, ``fleet demo`` and the test fixtures. The process is owned by the
caller: :meth:`MosquittoProcess.stop` sends SIGTERM, waits, then SIGKILLs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from broker_config.errors import BrokerError

# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin")
INSTALL_HINT = "install it: sudo apt-get install mosquitto mosquitto-clients (Debian/Ubuntu)"
# How long a broker may take to open its listeners before we call the start failed.
START_TIMEOUT_S = 10.0
# How long a broker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0


def mosquitto_binary() -> str:
    """Return the path of the ``mosquitto`` binary or raise :class:`BrokerError` with the install hint."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in _EXTRA_DIRS:
        candidate = Path(d) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrokerError("mosquitto is not installed", hint=INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout_s: float) -> bool:
    """Poll until something accepts TCP connections on (host, port)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


class MosquittoProcess:
    """A Mosquitto broker started from ``config`` that listens on ``port`` of ``host``."""

    def __init__(self, config: Path, port: int, host: str = "127.0.0.1", log: Path | None = None) -> None:
        self.config = config
        self.port = port
        self.host = host
        self.log = log if log is not None else config.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> MosquittoProcess:
        binary = mosquitto_binary()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_listening(self.host, self.port, START_TIMEOUT_S) or self._proc.poll() is not None:
            self.stop()
            tail = self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""
            raise BrokerError(
                f"mosquitto did not start listening on {self.host}:{self.port}",
                hint=f"its log says: {tail.strip() or '(nothing)'}",
            )
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, for fault-injection tests."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> MosquittoProcess:
        return self.start() if self._proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
