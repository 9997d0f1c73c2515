"""CORS like CDI's proxy (``cors.AllowAll()`` of github.com/rs/cors), so browsers can upload.

* Preflight (``OPTIONS`` with ``Access-Control-Request-Method``): answered here, never passed
  on (it carries no token); allows any origin, the requested method if it is one of HEAD, GET,
  POST, PUT, PATCH, DELETE, and whatever headers were requested.
* Other requests: ``Access-Control-Allow-Origin: *`` when an ``Origin`` was sent, plus the
  ``Upload-*`` headers exposed so a browser can run the resumable protocol.
* ``Vary`` is always set, so caches keep answers per origin.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from .paths import EXPOSED_HEADERS

METHODS = ("HEAD", "GET", "POST", "PUT", "PATCH", "DELETE")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def preflight(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    for vary in ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"):
        response.headers.add("Vary", vary)
    method = request.headers.get("Access-Control-Request-Method", "").upper()
    if not request.headers.get("Origin") or method not in METHODS:
        return response
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = method
    requested = request.headers.get("Access-Control-Request-Headers", "")
    headers = [h.strip() for h in requested.split(",") if h.strip()]
    if headers:
        response.headers["Access-Control-Allow-Headers"] = ", ".join(headers)
    return response


def decorate(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.add("Vary", "Origin")
    if request.headers.get("Origin") and request.method.upper() in METHODS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)


def cors_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return preflight(request)
        response = await handler(request)  # a streamed answer calls decorate() itself
        if not response.prepared:
            decorate(request, response)
        return response

    return middleware
