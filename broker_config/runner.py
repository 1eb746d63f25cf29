"""Run a Mosquitto process with a given config file: start, wait until it listens, stop.

Used by ``fleet broker start``, ``fleet demo`` and the test fixtures. A :class:`MosquittoProcess` is
owned by the caller: :meth:`MosquittoProcess.stop` sends SIGTERM, waits, then SIGKILLs.
:func:`start_background` starts one that outlives the caller and records it in a pid file, which
:func:`signal_background` and :func:`stop_background` use; they check that the pid still belongs to
a ``mosquitto -c <that config>`` before signalling it, so a recycled pid is never hit.
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
from typing import NoReturn

from broker_config.errors import BrokerError, BrokerNotRunningError

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


def _log_tail(log: Path) -> str:
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 800))
            return f.read().decode("utf-8", errors="replace").strip() or "(nothing)"
    except OSError:
        return "(no log)"


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is our exited child; True if it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: someone else reaps it
        return not _alive(pid)
    return done == pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_background(config: Path, port: int, pid_file: Path, log: Path, host: str = "127.0.0.1") -> int:
    """Start ``mosquitto -c config`` detached (own session, output appended to ``log``), wait until
    it listens on ``(host, port)``, write ``pid_file`` and return the pid."""
    binary = mosquitto_binary()
    existing = running_pid(pid_file, config)
    if existing is not None:
        raise BrokerError(
            f"a broker with {config} is already running (pid {existing})",
            hint="`fleet broker reload` applies changes, `fleet broker stop` stops it",
        )
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        pid = os.posix_spawn(
            binary,
            [binary, "-c", str(config)],
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)
    if not wait_listening(host, port, START_TIMEOUT_S) or _reap(pid):
        if not _reap(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise BrokerError(
            f"mosquitto did not start listening on {host}:{port}", hint=f"its log says: {_log_tail(log)}"
        )
    pid_file.write_text(f"{pid}\n")
    return pid


def running_pid(pid_file: Path, config: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive and is a mosquitto run with ``config``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 1 or _reap(pid):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid if _alive(pid) else None  # no /proc (macOS): trust the pid file
    if not argv or not argv[0].endswith(b"mosquitto") or str(config).encode() not in argv:
        return None
    return pid


def signal_background(pid_file: Path, config: Path, sig: signal.Signals) -> int:
    """Send ``sig`` to the broker recorded in ``pid_file``; return its pid."""
    pid = running_pid(pid_file, config)
    if pid is None:
        raise BrokerNotRunningError(
            f"no broker started with {config} is running", hint="start it with `fleet broker start`"
        )
    os.kill(pid, sig)
    return pid


def stop_background(pid_file: Path, config: Path) -> int | None:
    """SIGTERM the recorded broker, wait, SIGKILL if it lingers; remove the pid file. Its pid or None."""
    pid = running_pid(pid_file, config)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not _reap(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not _reap(pid):
            os.kill(pid, signal.SIGKILL)
            while not _reap(pid):
                time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return pid


def exec_foreground(config: Path, pid_file: Path) -> NoReturn:
    """Replace this process with ``mosquitto -c config`` (for systemd or a terminal); the pid file
    records this pid, which the broker keeps."""
    binary = mosquitto_binary()
    pid_file.write_text(f"{os.getpid()}\n")
    os.execv(binary, [binary, "-c", str(config)])  # noqa: S606 - fixed argv, no shell


def mosquitto_version() -> str:
    """``mosquitto version 2.0.11`` -> ``2.0.11`` (empty if it cannot be told)."""
    out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    return first.rsplit(" ", 1)[-1] if first.startswith("mosquitto version") else ""
