"""Streaming one request to an upload server and its answer back, with no buffering.

The client's body goes upstream as it arrives (aiohttp sends the request's StreamReader in the
pieces it receives, and awaits the upstream socket before reading more, so a slow disk slows
the client instead of filling memory). ``Content-Length`` is passed on so the server knows the
size, and the answer is streamed back with its status, ``Content-Type`` and ``Upload-*``
headers. An upstream answer that comes early (the server refused the image while the client was
still sending) is relayed at once; aiohttp then drains what the client still sends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Mapping

import aiohttp
from aiohttp import web

from . import cors
from .paths import CHECKSUM_HEADER, EXPOSED_HEADERS, LENGTH_HEADER, MODE_HEADER

log = logging.getLogger(__name__)

REQUEST_HEADERS = ("Content-Type", "Content-Length", CHECKSUM_HEADER, LENGTH_HEADER, MODE_HEADER,
                   *EXPOSED_HEADERS)
RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Retry-After", *EXPOSED_HEADERS)
TIMEOUT = aiohttp.ClientTimeout(total=24 * 3600, sock_connect=10)
"""CDI's proxy gives an upload 24 hours."""


@dataclass(frozen=True)
class Relay:
    """An accepted upload: where it goes (the server's base URL and path), the headers the proxy
    adds, and the name the server's certificate must carry when ``url`` names an address. (Here,
    not in :mod:`uploadproxy.proxy`: that module also runs as ``__main__``, which would make a
    second class of the same name.)"""

    url: str
    path: str
    headers: dict[str, str]
    server_name: str | None = None


def upstream_headers(request: web.Request, extra: Mapping[str, str]) -> dict[str, str]:
    headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
    headers.update(extra)
    return headers


async def relay(request: web.Request, session: aiohttp.ClientSession, url: str,
                extra_headers: Mapping[str, str], server_name: str | None = None) -> web.StreamResponse:
    data = request.content if request.body_exists else None
    headers = upstream_headers(request, extra_headers)
    async with session.request(request.method, url, data=data, headers=headers, timeout=TIMEOUT,
                               auto_decompress=False, allow_redirects=False,
                               server_hostname=server_name) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name in RESPONSE_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        cors.decorate(request, response)
        await response.prepare(request)
        if request.method != "HEAD":
            async for piece in upstream.content.iter_any():
                await response.write(piece)
        await response.write_eof()
        return response


REACH_PATIENCE = 10.0
"""How long a refused connection to a new upload server is retried: its pod is Ready, but the
node's Service routing (kube-proxy) may not carry it yet."""


async def relay_when_reachable(request: web.Request, session: aiohttp.ClientSession, url: str,
                               extra_headers: Mapping[str, str], server_name: str | None = None,
                               patience: float = REACH_PATIENCE) -> web.StreamResponse:
    """:func:`relay`, retrying while the upstream cannot be connected to (nothing of the request
    has been read then); a certificate that does not verify is never retried."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            return await relay(request, session, url, extra_headers, server_name)
        except aiohttp.ClientConnectorCertificateError:
            raise
        except aiohttp.ClientConnectorError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.25)
