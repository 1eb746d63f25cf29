"""A small TCP fault proxy for the suite: sits between an agent and the broker and injects latency,
stalls, connection resets, a bandwidth limit and outages (connections refused), switchable at run time.

Per connection two pumps (one per direction) read from one side into a queue stamped with the time
the bytes may leave (now + latency) and a sender writes them to the other side, sleeping after each
write so the rate stays under the bandwidth limit, and holding everything while the proxy is stalled.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time

CHUNK = 4096
POLL_S = 0.01


class _Conn:
    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = socket.create_connection(proxy.upstream, timeout=5)
        self.upstream.settimeout(None)
        self.closed = threading.Event()
        self.threads = []
        for src, dst in ((client, self.upstream), (self.upstream, client)):
            q: queue.Queue[tuple[float, bytes]] = queue.Queue()
            self.threads.append(threading.Thread(target=self._read, args=(src, q), daemon=True))
            self.threads.append(threading.Thread(target=self._send, args=(dst, q), daemon=True))
        for t in self.threads:
            t.start()

    def _read(self, src: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(CHUNK)
                if not data:
                    break
                q.put((time.monotonic() + self.proxy.latency_s, data))
        except OSError:
            pass
        self.close()

    def _send(self, dst: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        try:
            while not self.closed.is_set():
                try:
                    due, data = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                while not self.closed.is_set() and (self.proxy.stalled or time.monotonic() < due):
                    time.sleep(POLL_S)
                dst.sendall(data)
                self.proxy.forwarded += len(data)
                bw = self.proxy.bandwidth_bps
                if bw > 0:
                    time.sleep(len(data) / bw)
        except OSError:
            pass
        self.close()

    def close(self, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                if reset:  # RST instead of FIN: what a NAT timeout or a dying Wi-Fi link looks like
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class FaultProxy:
    """Listens on 127.0.0.1:``port`` (0: a free one) and forwards to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.latency_s = 0.0
        self.bandwidth_bps = 0  # 0: unlimited
        self.stalled = False
        self.refusing = False  # outage: accepted connections are closed at once
        self.forwarded = 0
        self.resets = 0
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            if self.refusing:
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                continue
            try:
                conn = _Conn(self, client)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns = [c for c in self._conns if not c.closed.is_set()]
                self._conns.append(conn)
                self.connections += 1

    def reset_all(self) -> int:
        """RST every open connection; returns how many."""
        with self._lock:
            conns, self._conns = self._conns, []
        n = 0
        for c in conns:
            if not c.closed.is_set():
                c.close(reset=True)
                n += 1
        self.resets += n
        return n

    def outage(self, on: bool) -> None:
        """Start (reset everything, refuse new connections) or end an outage."""
        self.refusing = on
        if on:
            self.reset_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        self.reset_all()
