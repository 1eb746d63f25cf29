"""systemd's notify protocol (sd_notify(3)): READY, STATUS, WATCHDOG and STOPPING, without libsystemd.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. Under a unit with ``Type=notify`` and
``WatchdogSec=``, the agent pings the watchdog at half the interval systemd asks for, and only while
it is healthy (its control loop runs, its MQTT session thread and every serial reader thread are alive),
so that a wedged agent is restarted by systemd rather than left silent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# sd_notify(3): a datagram of newline-separated assignments; 4 KiB is far above anything we send.
MAX_MESSAGE_BYTES = 4096


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; a no-op when the variable is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        # '@' names a socket in the abstract namespace (sd_notify(3)).
        self._addr = ("\0" + addr[1:]) if addr.startswith("@") else addr
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2  # ping at half the timeout, as systemd advises
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, message: str) -> bool:
        if not self._addr:
            return False
        data = message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self._addr)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed: %s (not repeated)", self._addr.lstrip("\0"), e)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
