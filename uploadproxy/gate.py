"""The decision point of the nginx data path: nginx's ``auth_request`` for every upload request.

nginx relays upload bodies (:mod:`uploadproxy.nginx`), but every decision stays here. For each
request on an upload path nginx first sends its headers (no body) to :data:`GATE_PATH`, with the
method and URI in :data:`METHOD_HEADER`/:data:`URI_HEADER`. The answer is
:meth:`~uploadproxy.proxy.UploadProxy.decide`'s, in headers nginx copies into variables:

* relay: ``204`` with ``X-Cdi-Upstream`` (``address:port/path``, the address already resolved
  and accepting connections, so nginx needs no DNS resolver), ``X-Cdi-Ssl-Name`` (the name the
  server's certificate must carry) and ``X-Cdi-Content-Type`` (``Upload-Content-Type`` for the
  resumable path);
* answer it here: ``403`` with ``X-Cdi-Status`` and ``X-Cdi-Body`` (the status and text the
  Python proxy gives: refusals, the ``HEAD`` probe, CORS preflight), which nginx returns itself
  (``auth_request`` passes no body from here, and nginx never reads the upload's body);
* both carry the CORS headers of the answer as ``X-Cdi-<header>``.

A target named by an IP address with no name to check is refused: nginx checks certificate
names only, never addresses (our resolvers give names; static tables must too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Mapping

from aiohttp import web
from yarl import URL

from . import cors
from .paths import CONTENT_TYPE_HEADER
from .proxy import Refused, UploadProxy, text_response
from .relay import REACH_PATIENCE, Relay

log = logging.getLogger(__name__)

GATE_PATH = "/.cdi/gate"
METHOD_HEADER = "X-Cdi-Method"
URI_HEADER = "X-Cdi-Uri"
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
                "Access-Control-Expose-Headers", "Vary")
"""The answer headers nginx adds, from ``X-Cdi-<name>``."""
CONNECT_TIMEOUT = 10.0


def add_route(app: web.Application, proxy: UploadProxy, patience: float = REACH_PATIENCE) -> None:
    async def gate(request: web.Request) -> web.Response:
        return await answer(proxy, request.headers, patience)

    app.router.add_get(GATE_PATH, gate)


async def answer(proxy: UploadProxy, headers: Mapping[str, str], patience: float) -> web.Response:
    method = headers.get(METHOD_HEADER, "GET").upper()
    path = URL(headers.get(URI_HEADER, "/")).path
    if cors.is_preflight(method, headers):
        preflight = cors.preflight(headers)
        return with_cors(own_answer(preflight), preflight)
    decision = await proxy.decide(method, path, headers)
    if isinstance(decision, Relay):
        try:
            response = await relay_answer(decision, patience)
        except Refused as refused:
            decision = text_response(refused.status, str(refused))
        else:
            cors.decorate_for(method, headers, response)
            return with_cors(response, response)
    cors.decorate_for(method, headers, decision)
    return with_cors(own_answer(decision), decision)


def own_answer(decision: web.Response) -> web.Response:
    """``403``: nginx answers with the status and text given here, never reading the body."""
    return web.Response(status=403, headers={"X-Cdi-Status": str(decision.status),
                                             "X-Cdi-Body": header_safe(decision.text or "")})


def with_cors(response: web.Response, source: web.StreamResponse) -> web.Response:
    """``response`` carrying ``source``'s CORS headers as ``X-Cdi-<name>`` for nginx to add."""
    for name in CORS_HEADERS:
        if name in source.headers:
            response.headers[f"X-Cdi-{name}"] = ", ".join(source.headers.getall(name))
    return response


async def relay_answer(relay: Relay, patience: float) -> web.Response:
    """``204`` with where nginx sends the body, or Refused(500) like the Python proxy's answer
    when the server cannot be reached."""
    url = URL(relay.url)
    host, port = url.raw_host or "", url.port or 443
    name = relay.server_name or host
    if _is_address(name):
        raise Refused(500, f"error proxying the upload: the upload server {host} is named by address; "
                           "the nginx data path checks certificate names only")
    address = await reachable_address(host, port, patience)
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    headers = {"X-Cdi-Upstream": target + relay.path, "X-Cdi-Ssl-Name": name}
    if CONTENT_TYPE_HEADER in relay.headers:
        headers["X-Cdi-Content-Type"] = relay.headers[CONTENT_TYPE_HEADER]
    return web.Response(status=204, headers=headers)


async def reachable_address(host: str, port: int, patience: float) -> str:
    """The first address of ``host`` that accepts a connection, retrying refused connections for
    ``patience`` seconds as :func:`~uploadproxy.relay.relay_when_reachable` does (a new upload
    Service may not be routed yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            return await _connect_any(host, port)
        except OSError as error:
            if loop.time() > deadline:
                log.error("proxying to %s:%d failed: %s", host, port, error)
                raise Refused(500, f"error proxying the upload: {error}") from error
            await asyncio.sleep(0.25)


async def _connect_any(host: str, port: int) -> str:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host} has no address")
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as failed:
            error = failed if isinstance(failed, OSError) else OSError(f"connecting to {address}:{port} timed out")
            continue
        writer.close()
        return address
    raise error


def header_safe(text: str) -> str:
    """One header line: nginx returns it as the body."""
    return " ".join(text.splitlines())


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
