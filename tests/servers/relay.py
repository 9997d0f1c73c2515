"""A plain TCP relay, so pods (which reach the host only at the node IP) can talk to a test
server that listens on 127.0.0.1, without teaching every server fixture another address."""

from __future__ import annotations

import socket
import threading

from .faultproxy import accept_in_background


class TcpRelay:
    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((listen_host, 0))
        self.address = f"{listen_host}:{self.listener.getsockname()[1]}"
        accept_in_background(self.listener, self._serve)

    def _serve(self, client: socket.socket) -> None:
        _splice(client, self.target)

    def close(self) -> None:
        self.listener.close()


def _splice(client: socket.socket, target: tuple[str, int]) -> None:
    """Connect to ``target`` and copy both ways until both ends are done."""
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until it ends, then pass the end on."""
    try:
        while data := source.recv(256 * 1024):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


class SchemeSplitter(TcpRelay):
    """One port that speaks https and plain http: a connection whose first byte starts a TLS
    handshake (0x16) goes to ``tls_target``, any other to ``plain_target``. So a redirect can
    change only the scheme, keeping host and port (``https://h:p/`` -> ``http://h:p/``)."""

    def __init__(self, listen_host: str, tls_target: tuple[str, int], plain_target: tuple[str, int]) -> None:
        self.plain_target = plain_target
        super().__init__(listen_host, tls_target)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def _serve(self, client: socket.socket) -> None:
        first = client.recv(1, socket.MSG_PEEK)
        _splice(client, self.target if first == b"\x16" else self.plain_target)
