"""Servers for the upload tests, on loopback with real TLS.

Three CAs, as in a cluster: the *proxy CA* signs the proxy's public certificate (clients trust
it), the *server CA* signs upload servers' certificates (the proxy trusts it), the *client CA*
signs the proxy's client certificate (upload servers trust it). Servers and proxies run on one
event loop in a background thread (:class:`LoopThread`) so tests can use blocking clients
(curl, requests) against them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.servers.images import sha256_file
from tests.servers.pki import CertPair, TestCA, make_ca
from tests.servers.ports import free_port, wait_listening
from uploadproxy import nginx
from uploadproxy.proxy import UploadProxy
from uploadproxy.resolver import NotReady, Ready, StaticResolver
from uploadproxy.server import UploadServer
from uploadproxy.settings import PROXY_CLIENT_NAME, ProxySettings, ServerSettings
from uploadproxy.tls import client_context, server_context

T = TypeVar("T")
NAMESPACE = "default"


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop, first waiting for its worker threads (imports run there): one still
        busy would block the interpreter's exit forever, so it fails the session here instead."""
        self.run(asyncio.wait_for(self.loop.shutdown_default_executor(), 30), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Pki:
    proxy_ca: TestCA
    server_ca: TestCA
    client_ca: TestCA
    proxy_cert: CertPair
    server_cert: CertPair
    proxy_client: CertPair
    """The proxy's client certificate (CN ``client.upload-server.cdi.kubevirt.io``)."""
    wrong_name_client: CertPair
    """Signed by the client CA, but for another name."""
    stranger_client: CertPair
    """The right name, signed by a CA nobody trusts."""
    token_key: rsa.RSAPrivateKey


def make_pki(directory: Path, token_key: rsa.RSAPrivateKey) -> Pki:
    proxy_ca = make_ca(directory / "proxy-ca", "proxy-ca")
    server_ca = make_ca(directory / "server-ca", "server-ca")
    client_ca = make_ca(directory / "client-ca", "client-ca")
    stranger_ca = make_ca(directory / "stranger-ca", "stranger-ca")
    return Pki(
        proxy_ca, server_ca, client_ca,
        proxy_cert=proxy_ca.issue(directory / "proxy", "cdi-uploadproxy"),
        server_cert=server_ca.issue(directory / "server", "cdi-upload-server"),
        proxy_client=client_ca.issue(directory / "client", PROXY_CLIENT_NAME, client=True),
        wrong_name_client=client_ca.issue(directory / "client", "somebody-else", client=True),
        stranger_client=stranger_ca.issue(directory / "stranger", PROXY_CLIENT_NAME, client=True),
        token_key=token_key,
    )


@dataclass
class ServerHandle:
    server: UploadServer
    settings: ServerSettings
    volume: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    @property
    def disk(self) -> Path:
        return self.settings.destination

    def termination(self) -> dict[str, Any]:
        path = self.settings.termination_message_path
        return json.loads(path.read_text()) if path.exists() else {}

    def leftovers(self) -> list[str]:
        """Anything in the volume besides lost+found: after a failure, must be empty."""
        return sorted(p.name for p in self.volume.iterdir() if p.name != "lost+found")


def server_settings(pki: Pki, volume: Path, **overrides: Any) -> ServerSettings:
    volume.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = dict(
        tls_cert=pki.server_cert.cert, tls_key=pki.server_cert.key, client_ca=pki.client_ca.cert,
        destination=volume / "disk.img", address="127.0.0.1", port=0,
        termination_message_path=volume.parent / f"{volume.name}.termination-log", resume_timeout=30.0)
    values.update(overrides)
    return ServerSettings(**values)


def start_server(loop: LoopThread, settings: ServerSettings) -> ServerHandle:
    server = UploadServer(settings)

    async def start() -> None:
        await server.start()

    loop.run(start())
    return ServerHandle(server, settings, settings.destination.parent)


@dataclass
class ProxyHandle:
    proxy: UploadProxy
    resolver: StaticResolver
    tokens: dict[str, str] = field(default_factory=dict)
    nginx: "asyncio.Task[None] | None" = None
    """With nginx as the data path: the task running :func:`uploadproxy.nginx.serve`."""
    nginx_port: int = 0

    @property
    def port(self) -> int:
        """Where clients connect (nginx's port, or the Python proxy's)."""
        return self.nginx_port or self.proxy.port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def route(self, pvc: str, target: Ready | NotReady) -> None:
        """nginx checks the names of upload servers only, so it is given the name the test
        certificates carry for 127.0.0.1."""
        if self.nginx is not None and isinstance(target, Ready) and "//127.0.0.1:" in target.url:
            target = dataclasses.replace(target, url=target.url.replace("//127.0.0.1:", "//localhost:"))
        self.resolver.table[(NAMESPACE, pvc)] = target

    def stop(self, loop: LoopThread) -> None:
        if self.nginx is None:
            loop.run(self.proxy.stop())
            return
        loop.loop.call_soon_threadsafe(self.nginx.cancel)
        loop.run(asyncio.wait([self.nginx]))


def start_proxy(loop: LoopThread, pki: Pki, client: CertPair | None = None, data_path: str = "python",
                directory: Path | None = None) -> ProxyHandle:
    """The proxy in this process; with ``data_path="nginx"``, nginx relays (state in ``directory``)."""
    client = pki.proxy_client if client is None else client
    resolver = StaticResolver()
    upstream = client_context(pki.server_ca.cert, client.cert, client.key)
    proxy = UploadProxy(rsa_public(pki.token_key), resolver, upstream)
    if data_path == "nginx":
        return start_nginx_proxy(loop, pki, proxy, client, directory)
    tls = server_context(pki.proxy_cert.cert, pki.proxy_cert.key)
    loop.run(proxy.start("127.0.0.1", 0, tls))
    return ProxyHandle(proxy, resolver)


def proxy_settings(pki: Pki, client: CertPair, port: int, directory: Path | None) -> ProxySettings:
    return ProxySettings(
        public_key_pem=b"", tls_cert=pki.proxy_cert.cert, tls_key=pki.proxy_cert.key, client_cert=client.cert,
        client_key=client.key, server_ca=pki.server_ca.cert, address="127.0.0.1", port=port,
        data_path="nginx", nginx_dir=directory)


def start_nginx_proxy(loop: LoopThread, pki: Pki, proxy: UploadProxy, client: CertPair,
                      directory: Path | None) -> ProxyHandle:
    port = free_port()

    async def start() -> asyncio.Task[None]:
        return asyncio.create_task(nginx.serve(proxy, proxy_settings(pki, client, port, directory)))

    task = loop.run(start())
    try:
        wait_listening(port)
    except TimeoutError:
        raise RuntimeError(f"nginx did not start: {task}") from None
    assert isinstance(proxy.resolver, StaticResolver)
    return ProxyHandle(proxy, proxy.resolver, nginx=task, nginx_port=port)


def rsa_public(key: rsa.RSAPrivateKey) -> rsa.RSAPublicKey:
    return key.public_key()


def curl(*args: str, timeout: float = 120) -> tuple[int, str, int]:
    """Run curl; returns (HTTP status or 0, body, curl exit code)."""
    proc = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=timeout)
    body, _, status = proc.stdout.rpartition("\n")
    return int(status or 0), body, proc.returncode


def server_curl_args(pki: Pki, client: CertPair | None) -> list[str]:
    args = ["--cacert", str(pki.server_ca.cert)]
    if client is not None:
        args += ["--cert", str(client.cert), "--key", str(client.key)]
    return args


def sha256_prefix(path: Path, length: int) -> str:
    """sha256 of the first ``length`` bytes (the image inside a disk grown to its volume)."""
    return sha256_file(path, length)


def raw_request(port: int, head: bytes, body: bytes, cafile: Path, client: CertPair) -> None:
    """Send ``head`` and ``body`` over TLS and hang up without reading: a client that dies
    mid-upload."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(head + body)


__all__ = ["LoopThread", "Pki", "make_pki", "ServerHandle", "server_settings", "start_server",
           "ProxyHandle", "start_proxy", "curl", "server_curl_args", "sha256_prefix", "raw_request",
           "NAMESPACE", "Ready", "NotReady", "server_context", "server_session", "wait_outcome", "wait_idle"]


class VerifyingSession(requests.Session):
    """requests lets REQUESTS_CA_BUNDLE override ``Session.verify``; this one pins it."""

    def __init__(self, verify: str) -> None:
        super().__init__()
        self._pinned = verify

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self._pinned)
        return super().request(*args, **kwargs)


def server_session(pki: Pki) -> requests.Session:
    """requests speaking to an upload server as the proxy does."""
    session = VerifyingSession(str(pki.server_ca.cert))
    session.cert = (str(pki.proxy_client.cert), str(pki.proxy_client.key))
    return session


def wait_outcome(loop: LoopThread, handle: ServerHandle, timeout: float = 120) -> Any:
    """Block until the server's upload finished (async uploads answer before that)."""
    async def wait() -> Any:
        assert handle.server.outcome is not None
        await asyncio.wait_for(asyncio.shield(handle.server.outcome), timeout)
        return handle.server.outcome.result()

    return loop.run(wait(), timeout + 5)


def wait_idle(handle: ServerHandle, timeout: float = 60) -> None:
    """Until no upload holds the server (a failed one has been cleaned up)."""
    import time

    deadline = time.monotonic() + timeout
    while handle.server.uploads.busy:
        if time.monotonic() > deadline:
            raise TimeoutError("the upload server stayed busy")
        time.sleep(0.02)
