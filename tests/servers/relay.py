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
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self.listener.close()


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
