"""CORS like CDI's proxy (``cors.AllowAll()`` of github.com/rs/cors), so browsers can upload.

* Preflight (``OPTIONS`` with ``Access-Control-Request-Method``): answered here, never passed
  on (it carries no token); allows any origin, the requested method if it is one of HEAD, GET,
  POST, PUT, PATCH, DELETE, and whatever headers were requested.
* Other requests: ``Access-Control-Allow-Origin: *`` when an ``Origin`` was sent, plus the
  ``Upload-*`` headers exposed so a browser can run the resumable protocol.
* ``Vary`` is always set, so caches keep answers per origin.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from .paths import EXPOSED_HEADERS

METHODS = ("HEAD", "GET", "POST", "PUT", "PATCH", "DELETE")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "Access-Control-Request-Method" in headers


def preflight(headers: Mapping[str, str]) -> web.Response:
    response = web.Response(status=204)
    for vary in ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"):
        response.headers.add("Vary", vary)
    method = headers.get("Access-Control-Request-Method", "").upper()
    if not headers.get("Origin") or method not in METHODS:
        return response
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = method
    requested = headers.get("Access-Control-Request-Headers", "")
    allowed = [h.strip() for h in requested.split(",") if h.strip()]
    if allowed:
        response.headers["Access-Control-Allow-Headers"] = ", ".join(allowed)
    return response


def decorate(request: web.Request, response: web.StreamResponse) -> None:
    decorate_for(request.method, request.headers, response)


def decorate_for(method: str, headers: Mapping[str, str], response: web.StreamResponse) -> None:
    """:func:`decorate` from the request's method and headers alone."""
    response.headers.add("Vary", "Origin")
    if headers.get("Origin") and method.upper() in METHODS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)


def cors_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_preflight(request.method, request.headers):
            return preflight(request.headers)
        response = await handler(request)  # a streamed answer calls decorate() itself
        if not response.prepared:
            decorate(request, response)
        return response

    return middleware
