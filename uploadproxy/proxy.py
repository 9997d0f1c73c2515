"""The upload proxy: the public HTTPS endpoint for uploads, ``python -m uploadproxy.proxy``.

For every upload path (CDI's, and ``/v1beta1/upload-resumable``):

1. ``Authorization: Bearer <token>``: missing or malformed -> 400; a token that does not verify
   (signature, expiry with 10 s leeway, issuer) -> 401; a valid token that is not an upload
   token for a PVC -> 400. The token is checked when the request starts only.
2. The resolver finds the volume's upload server; not ready -> 503 with the reason.
   A volume whose content type is neither ``kubevirt`` nor ``archive`` -> 503. Uploads to an
   ``archive`` volume go to the server's archive path (CDI's rewrite).
3. The request is streamed to ``<server>/<path>`` over mutual TLS (the proxy's client
   certificate, the servers' CA) and the answer streamed back; the proxy cannot reach it -> 500.

``HEAD`` on the async paths answers 200 without a token (virtctl's capability probe), as does
``HEAD`` on the resumable path without ``Upload-Id``. ``/healthz`` answers ``OK``. Every text
the proxy writes itself is HTML-escaped; CORS is :mod:`uploadproxy.cors`.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import signal
import ssl
import sys
from typing import Callable, Mapping

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from . import eventloop, tokens
from .cors import cors_middleware
from .paths import ASYNC, CONTENT_TYPE_HEADER, HEALTHZ, ID_HEADER, PROXY_PATHS, RESUMABLE, ROUTES, archive_path
from .relay import Relay, relay_when_reachable
from .resolver import NotReady, Ready, Resolver, StaticResolver
from .settings import ProxySettings
from .tls import client_context, server_context

log = logging.getLogger("uploadproxy.proxy")
BEARER = re.compile(r"^Bearer\s+([A-Za-z0-9\-._~+/]+=*)$", re.IGNORECASE)
READ_BUFSIZE = 1 << 20
CONTENT_TYPES = ("kubevirt", "archive")


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def text_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=html.escape(message), content_type="text/plain")


def token_target(headers: Mapping[str, str], public_key: rsa.RSAPublicKey) -> tuple[str, str]:
    """``(namespace, pvc)`` from the bearer token, or Refused with CDI's status."""
    header = headers.get("Authorization", "")
    if not header:
        raise Refused(400, "missing Authorization header with an upload token")
    match = BEARER.match(header.strip())
    if not match:
        raise Refused(400, "the Authorization header must be 'Bearer <token>'")
    try:
        payload = tokens.validate(match.group(1), public_key)
    except tokens.InvalidToken as error:
        raise Refused(401, f"invalid upload token: {error}") from error
    try:
        return tokens.upload_target(payload)
    except tokens.NotAnUploadToken as error:
        raise Refused(400, str(error)) from error


def upstream_path(path: str, pvc: str, ready: Ready) -> tuple[str, dict[str, str]]:
    """The server path (and extra headers) for an upload to a volume of this content type."""
    if ready.content_type not in CONTENT_TYPES:
        raise Refused(503, f"rejecting upload request for PVC {pvc} - upload content-type "
                           f"{ready.content_type} is invalid")
    if path == RESUMABLE:
        return path, {CONTENT_TYPE_HEADER: ready.content_type}
    if ready.content_type == "archive":
        if ROUTES[path].form:
            raise Refused(400, f"PVC {pvc} takes an archive: upload it as the body, not as a form")
        return archive_path(path), {}
    return path, {}


def is_probe(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """virtctl's capability probe (``HEAD`` on the async paths, or the resumable path without
    ``Upload-Id``): answered 200 without a token."""
    return method == "HEAD" and (path in (ASYNC, ASYNC.replace("v1beta1", "v1alpha1"))
                                 or (path == RESUMABLE and ID_HEADER not in headers))


class UploadProxy:
    def __init__(self, public_key: rsa.RSAPublicKey, resolver: Resolver, upstream_tls: ssl.SSLContext) -> None:
        self.public_key = public_key
        self.resolver = resolver
        self.upstream_tls = upstream_tls
        self.session: aiohttp.ClientSession | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.extensions: list[Callable[[web.Application], None]] = []
        """More routes for :meth:`make_app` (the nginx data path's gate)."""

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[cors_middleware()], client_max_size=1 << 62)
        app.router.add_get(HEALTHZ, _healthz)
        for path in (*PROXY_PATHS, RESUMABLE):
            app.router.add_route("*", path, self.handle)
        for extend in self.extensions:
            extend(app)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(ssl=self.upstream_tls, limit=0)
        self.session = aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE,
                                             auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def decide(self, method: str, path: str, headers: Mapping[str, str]) -> Relay | web.Response:
        """Every decision about an upload request, from its method, path and headers alone: the
        answer the proxy gives itself, or where the body goes. The nginx data path asks this too
        (:mod:`uploadproxy.gate`)."""
        if is_probe(method, path, headers):
            return web.Response(status=200)
        try:
            namespace, pvc = token_target(headers, self.public_key)
            found = await self.resolver.resolve(namespace, pvc)
            if isinstance(found, NotReady):
                raise Refused(503, found.reason)
            upstream, extra = upstream_path(path, pvc, found)
        except Refused as refused:
            log.info("refused %s %s: %s", method, path, refused)
            return text_response(refused.status, str(refused))
        return Relay(found.url, upstream, extra, found.server_name)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        decision = await self.decide(request.method, request.path, request.headers)
        if isinstance(decision, web.Response):
            return decision
        assert self.session is not None
        try:
            return await relay_when_reachable(request, self.session, decision.url + decision.path,
                                              decision.headers, decision.server_name)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            log.error("proxying to %s failed: %s", decision.url, error)
            return text_response(500, f"error proxying the upload: {error}")

    async def start(self, address: str, port: int, tls: ssl.SSLContext | None) -> int:
        self._runner = web.AppRunner(self.make_app(), read_bufsize=READ_BUFSIZE, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port, ssl_context=tls)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("upload proxy listening on %s:%d", address, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK")


def resolver_for(settings: ProxySettings) -> Resolver:
    """The static table when one is given, else the cluster."""
    if settings.upload_servers:
        return StaticResolver.parse(settings.upload_servers)
    from kubernetes import client, config

    from .kuberesolver import KubeResolver

    configuration = client.Configuration()
    if settings.kubeconfig:
        config.load_kube_config(config_file=str(settings.kubeconfig), client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return KubeResolver(client.ApiClient(configuration), mode=settings.upstream)


def from_settings(settings: ProxySettings) -> UploadProxy:
    upstream = client_context(settings.server_ca, settings.client_cert, settings.client_key)
    return UploadProxy(tokens.load_public_key(settings.public_key_pem), resolver_for(settings), upstream)


async def serve(settings: ProxySettings) -> None:
    """Until cancelled (SIGTERM) or, with nginx as the data path, until nginx exits."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _cancel, asyncio.current_task())
    proxy = from_settings(settings)
    if settings.data_path == "nginx":
        from . import nginx

        log.info("data path: nginx relays upload bodies; this process decides")
        await nginx.serve(proxy, settings)
        return
    log.info("data path: python (this process relays upload bodies)")
    tls = server_context(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    await proxy.start(settings.address, settings.port, tls)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()


def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ProxySettings.from_env()
    except (ValueError, OSError) as error:
        log.error("bad upload proxy settings: %s", error)
        return 1
    try:
        eventloop.run(serve(settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except Exception as error:  # nginx missing or gone: exit, so the kubelet restarts the pod
        log.error("upload proxy stopped: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
