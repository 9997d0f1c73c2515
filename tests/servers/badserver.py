"""A deliberately misbehaving HTTP server (aiohttp), after CDI's bad-webserver, plus the
faults CDI's lacks. URLs are ``/<behaviour>/<file>`` over one directory:

=====================  ======================================================================
behaviour              what it does
=====================  ======================================================================
``plain``              a well-behaved server: ranges, ETag
``forbidden-HEAD``     HEAD answers 403
``flaky``              every other request answers 503 (with ``Retry-After: 0``)
``no-accept-ranges``   no ``Accept-Ranges``; ``Range`` ignored (always 200, whole body)
``bad-content-type``   ``Content-Type: text/html``
``reset``              every response is cut (connection aborted) after ``cut`` bytes
``reset-once``         only the first response is cut after ``cut`` bytes
``drip``               slow: 64 KiB at a time with pauses
``changing``           the first response is cut and has ETag v1; later ones have ETag v2
``vanishing``          first response cut; then 404, then 503, then fine again
``auth``               needs basic auth cdi:s3cret-pass
``headers``            needs ``X-Extra: extra-value`` and ``X-Secret: secret-value``
``redirect-same``      302 to ``/auth/<file>`` on the same host
``redirect-other``     302 to ``/record/<file>`` on another host name (localhost)
``record``             serves the file and records the request headers
``status-<code>``      answers with that status code
``empty``              a 200 with an empty body (0 bytes)
``range-from-zero``    answers a Range request that starts past byte 0 with 206 and the
                       whole file from byte 0 (its ``Content-Range`` honestly says so)
``range-wrong-total``  206 answers whose ``Content-Range`` total is one more than the size
``range-no-header``    206 answers without any ``Content-Range``
``range-lie-late``     206 answers to ranges that start past byte 0 (the later parts of a
                       parallel read) carry a ``Content-Range`` one byte off
``ignore-ranges``      advertises ``Accept-Ranges: bytes`` but answers 200 (whole file) to
                       every Range request
``gzip`` / ``deflate`` ``Content-Encoding`` gzip / deflate (zlib), whatever was asked for
``raw-deflate``        ``Content-Encoding: deflate`` as raw deflate (no zlib header)
``br``                 ``Content-Encoding: br`` (bytes we never decode)
``trickle``            1 byte every 0.1 s (far below any sane speed floor), forever
``stall``              64 KiB, then silence (the connection stays open)
``redirect-to``        302 to the URL in the ``to`` query parameter (any scheme)
``/v2/...``            a registry that sends every client to the token realm
                       :attr:`BadServer.registry_realm` (401 with a Bearer challenge)
=====================  ======================================================================

Behaviours combine with ``+`` (``reset+range-from-zero``). Every request's headers are
kept in :attr:`BadServer.seen` (name, headers), so tests can see what a client asked for.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .ports import free_port, wait_listening

AUTH = "Basic " + base64.b64encode(b"cdi:s3cret-pass").decode()


@dataclass
class BadServer:
    root: Path
    cut: int = 3 * 1024 * 1024
    port: int = 0
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recorded: list[dict[str, str]] = field(default_factory=list)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None
    registry_realm: str = ""
    """``/v2/...`` answers 401 with a Bearer challenge naming this token realm."""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    def url(self, behaviour: str, name: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}/{behaviour}/{name}"

    # -- request handling -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        behaviour, name = request.match_info["behaviour"], request.match_info["name"]
        key = f"{behaviour}/{name}"
        self.requests[key] += 1
        self.seen.append((key, dict(request.headers)))
        count = self.requests[key]
        flags = set(behaviour.split("+"))
        path = self.root / name
        if not path.is_file():
            raise web.HTTPNotFound()
        if behaviour.startswith("status-"):
            return web.Response(status=int(behaviour[7:]), text="no")
        if "forbidden-HEAD" in flags and request.method == "HEAD":
            return web.Response(status=403)
        if "flaky" in flags and count % 2 == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if "auth" in flags and request.headers.get("Authorization") != AUTH:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="cdi"'})
        if "headers" in flags and (request.headers.get("X-Extra") != "extra-value"
                                   or request.headers.get("X-Secret") != "secret-value"):
            return web.Response(status=403, text="missing headers")
        if "redirect-same" in flags:
            raise web.HTTPFound(f"/auth/{name}")
        if "redirect-other" in flags:
            raise web.HTTPFound(self.url("record", name, host="localhost"))
        if "redirect-to" in flags:
            return web.Response(status=302, headers={"Location": request.query["to"]})
        if "record" in flags:
            self.recorded.append(dict(request.headers))
        if "vanishing" in flags and count in (2, 3):
            return web.Response(status=404 if count == 2 else 503, headers={"Retry-After": "0"})
        if "empty" in flags:
            return web.Response(status=200, body=b"", headers={"Accept-Ranges": "bytes", "ETag": '"v1"'})
        return await self.send_file(request, flags, path, count)

    async def registry(self, request: web.Request) -> web.Response:
        """A registry that wants a token from :attr:`registry_realm`."""
        self.seen.append((request.path, dict(request.headers)))
        challenge = f'Bearer realm="{self.registry_realm}",service="bad"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def send_file(self, request: web.Request, flags: set[str], path: Path, count: int) -> web.StreamResponse:
        size = path.stat().st_size
        etag = '"v1"' if "changing" not in flags or count == 1 else '"v2"'
        start, stop = 0, size
        ranged = not flags & {"no-accept-ranges", "ignore-ranges"} and request.http_range.start is not None
        if ranged and request.headers.get("If-Range", etag) != etag:
            ranged = False
        if ranged:
            start = request.http_range.start or 0
            stop = min(size, request.http_range.stop or size)
            if start and "range-from-zero" in flags:
                start, stop = 0, size
        encoding = next((e for e in ("gzip", "deflate", "raw-deflate", "br") if e in flags), None)
        body = _encode(path.read_bytes()[start:stop], encoding) if encoding else None
        response = web.StreamResponse(status=206 if ranged else 200)
        response.content_length = len(body) if body is not None else stop - start
        response.headers["ETag"] = etag
        response.headers["Content-Type"] = "text/html" if "bad-content-type" in flags else "application/octet-stream"
        if "no-accept-ranges" not in flags:
            response.headers["Accept-Ranges"] = "bytes"
        if encoding:
            response.headers["Content-Encoding"] = "deflate" if encoding == "raw-deflate" else encoding
        if ranged and "range-no-header" not in flags:
            total = size + 1 if "range-wrong-total" in flags else size
            shift = 1 if start and "range-lie-late" in flags else 0
            response.headers["Content-Range"] = f"bytes {start + shift}-{stop - 1}/{total}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        if body is not None:
            if flags & {"reset", "reset-once"} and (count == 1 or "reset" in flags):
                await response.write(body[:self.cut])
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(body)
        elif "trickle" in flags or "stall" in flags:
            await self._starve(request, response, flags, path)
        elif not await self._stream(request, response, flags, path, (start, stop), count):
            return response  # the connection was cut
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, flags: set[str], path: Path,
                      span: tuple[int, int], count: int) -> bool:
        """The file, cut after ``cut`` bytes where the behaviour says so; False when cut."""
        start, stop = span
        cut = None
        if "reset" in flags or (flags & {"changing", "vanishing", "reset-once"} and count == 1):
            cut = self.cut
        step = 64 * 1024 if "drip" in flags else 1024 * 1024
        sent = 0
        with open(path, "rb") as file:
            file.seek(start)
            while chunk := file.read(min(step, stop - start - sent)):
                if cut is not None and sent + len(chunk) > cut:
                    await response.write(chunk[:cut - sent])
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return False
                await response.write(chunk)
                sent += len(chunk)
                if "drip" in flags:
                    await asyncio.sleep(0.01)
        return True

    async def _starve(self, request: web.Request, response: web.StreamResponse, flags: set[str], path: Path) -> None:
        """``trickle``: a byte every 0.1 s; ``stall``: 64 KiB then nothing, until the client leaves."""
        data = path.read_bytes()
        if "stall" in flags:
            await response.write(data[:64 * 1024])
            await asyncio.sleep(3600)
        for offset in range(len(data)):
            await response.write(data[offset:offset + 1])
            await asyncio.sleep(0.1)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "BadServer":
        self.port = free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/v2/{tail:.*}", self.registry)
            app.router.add_route("*", "/{behaviour}/{name}", self.handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="badserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        wait_listening(self.port)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    elif encoding == "raw-deflate":
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    elif encoding == "deflate":
        compressor = zlib.compressobj(6)
    else:
        return b"\x0b\x02\x80" + data[:64]  # not really brotli: it must never be decoded
    return compressor.compress(data) + compressor.flush()
