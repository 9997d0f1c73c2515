"""A loopback TCP relay that injects one fault into what a server sends to the client.

Used by the resume tests of every source: the connection is cut (optionally after a stall,
as a hung server would) or one byte is flipped, exactly ``at`` bytes into the server->client
stream, counted over all connections, once per proxy. ``before_fault`` runs first, so a test
can, say, replace the object at that very moment. What the client sent is kept (readable
when the server speaks plain http)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterator


class FaultProxy:
    def __init__(self, upstream_port: int, at: int, fault: str = "cut",
                 before_fault: Callable[[], None] | None = None, stall: float = 0.0) -> None:
        if fault not in ("cut", "flip"):
            raise ValueError(f"unknown fault {fault!r}")
        self.upstream_port, self.at, self.fault = upstream_port, at, fault
        self.before_fault = before_fault
        self.stall = stall
        self.sent = 0
        self.faults = 0
        self.connections = 0
        self.client_bytes = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        accept_in_background(self._listener, self._connect)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _connect(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self.connections += 1
        threading.Thread(target=self._upward, args=(client, upstream), daemon=True).start()
        self._downward(upstream, client)

    def _upward(self, client: socket.socket, upstream: socket.socket) -> None:
        for data in _receive(client):
            self.client_bytes += data[:4096]
            if not _send(upstream, data):
                return

    def _downward(self, upstream: socket.socket, client: socket.socket) -> None:
        for data in _receive(upstream):
            data, cut = self._apply_fault(data)
            if not _send(client, data) or cut:
                if cut:
                    time.sleep(self.stall)
                break
        for end in (client, upstream):
            _hang_up(end)

    def _apply_fault(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to forward, and whether to cut the connection after them."""
        with self._lock:
            offset = self.at - self.sent
            self.sent += len(data)
            if self.faults or not 0 <= offset < len(data):
                return data, False
            self.faults = 1
        if self.before_fault:
            self.before_fault()
        if self.fault == "cut":
            return data[:offset], True
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        return bytes(flipped), False


def accept_in_background(listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
    """Accept connections until ``listener`` is closed, serving each on its own thread."""

    def loop() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _receive(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            data = sock.recv(256 * 1024)
        except OSError:
            return
        if not data:
            return
        yield data


def _hang_up(sock: socket.socket) -> None:
    """Shut down (which wakes the thread blocked in recv on it), then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False
