"""A forward HTTP proxy on loopback, as a corporate proxy would be: plain-http requests in
absolute form are relayed, ``CONNECT host:port`` opens a tunnel for https. Every request
line is recorded, so a test can prove that traffic went through the proxy (or bypassed it
for ``no_proxy`` hosts)."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from .faultproxy import _hang_up, _receive, _send, accept_in_background


class ForwardProxy:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        accept_in_background(self._listener, self._serve)

    def close(self) -> None:
        self._listener.close()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                client.close()
                return
            head += data
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.requests.append(request_line)
        method, target, _ = request_line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            parts = urlsplit(target)
            upstream = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            upstream.sendall(head.replace(target.encode(), path.encode(), 1))
        threading.Thread(target=self._relay, args=(upstream, client), daemon=True).start()
        self._relay(client, upstream)

    @staticmethod
    def _relay(source: socket.socket, sink: socket.socket) -> None:
        for data in _receive(source):
            if not _send(sink, data):
                break
        for end in (source, sink):
            _hang_up(end)
