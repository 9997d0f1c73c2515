"""A loopback TCP relay that cuts the client->server stream once, ``at`` bytes in.

The faults of :mod:`tests.servers.faultproxy` hit what servers send; an upload needs the other
direction: the connection dies while the client is sending. Bytes are relayed untouched (TLS
passes through), counted over all connections; the cut happens once.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from tests.servers.faultproxy import accept_in_background


class UploadCutter:
    def __init__(self, upstream_port: int, at: int, stall: float = 0.0,
                 on_cut: Callable[[], None] | None = None) -> None:
        self.upstream_port = upstream_port
        self.on_cut = on_cut
        """Called once, as the cut happens (before the stall): for tests that change the world
        exactly while the client is disconnected."""
        self.stall = stall
        """Seconds to hold the connection open, sending nothing, before the cut."""
        self.at = at
        self.sent = 0
        self.cuts = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        accept_in_background(self._listener, self._connect)

    def close(self) -> None:
        self._listener.close()

    def _connect(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self.connections += 1
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if upward and self._should_cut(len(data)):
                    if self.on_cut is not None:
                        self.on_cut()
                    time.sleep(self.stall)
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def _should_cut(self, nbytes: int) -> bool:
        with self._lock:
            self.sent += nbytes
            if self.cuts == 0 and self.sent >= self.at:
                self.cuts += 1
                return True
            return False
