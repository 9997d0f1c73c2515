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
``drip``               slow: 64 KiB at a time with pauses
``changing``           the first response is cut and has ETag v1; later ones have ETag v2
``vanishing``          first response cut; then 404, then 503, then fine again
``auth``               needs basic auth cdi:s3cret-pass
``headers``            needs ``X-Extra: extra-value`` and ``X-Secret: secret-value``
``redirect-same``      302 to ``/auth/<file>`` on the same host
``redirect-other``     302 to ``/record/<file>`` on another host name (localhost)
``record``             serves the file and records the request headers
``status-<code>``      answers with that status code
=====================  ======================================================================
"""

from __future__ import annotations

import asyncio
import base64
import threading
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
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    def url(self, behaviour: str, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{behaviour}/{name}"

    # -- request handling -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        behaviour, name = request.match_info["behaviour"], request.match_info["name"]
        key = f"{behaviour}/{name}"
        self.requests[key] += 1
        count = self.requests[key]
        path = self.root / name
        if not path.is_file():
            raise web.HTTPNotFound()
        if behaviour.startswith("status-"):
            return web.Response(status=int(behaviour[7:]), text="no")
        if behaviour == "forbidden-HEAD" and request.method == "HEAD":
            return web.Response(status=403)
        if behaviour == "flaky" and count % 2 == 1:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if behaviour == "auth" and request.headers.get("Authorization") != AUTH:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="cdi"'})
        if behaviour == "headers" and (request.headers.get("X-Extra") != "extra-value"
                                       or request.headers.get("X-Secret") != "secret-value"):
            return web.Response(status=403, text="missing headers")
        if behaviour == "redirect-same":
            raise web.HTTPFound(f"/auth/{name}")
        if behaviour == "redirect-other":
            raise web.HTTPFound(self.url("record", name, host="localhost"))
        if behaviour == "record":
            self.recorded.append(dict(request.headers))
        if behaviour == "vanishing" and count in (2, 3):
            return web.Response(status=404 if count == 2 else 503, headers={"Retry-After": "0"})
        return await self.send_file(request, behaviour, path, count)

    async def send_file(self, request: web.Request, behaviour: str, path: Path, count: int) -> web.StreamResponse:
        size = path.stat().st_size
        etag = '"v1"' if behaviour != "changing" or count == 1 else '"v2"'
        start = 0
        ranged = behaviour != "no-accept-ranges" and request.http_range.start is not None
        if ranged and request.headers.get("If-Range", etag) != etag:
            ranged = False
        stop = size
        if ranged:
            start = request.http_range.start or 0
            stop = min(size, request.http_range.stop or size)
        response = web.StreamResponse(status=206 if ranged else 200)
        response.content_length = stop - start
        response.headers["ETag"] = etag
        response.headers["Content-Type"] = "text/html" if behaviour == "bad-content-type" else "application/octet-stream"
        if behaviour != "no-accept-ranges":
            response.headers["Accept-Ranges"] = "bytes"
        if ranged:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        cut = None
        if behaviour == "reset" or (behaviour in ("changing", "vanishing") and count == 1):
            cut = self.cut
        step = 64 * 1024 if behaviour == "drip" else 1024 * 1024
        sent = 0
        with open(path, "rb") as file:
            file.seek(start)
            while chunk := file.read(min(step, stop - start - sent)):
                if cut is not None and sent + len(chunk) > cut:
                    await response.write(chunk[:cut - sent])
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(chunk)
                sent += len(chunk)
                if behaviour == "drip":
                    await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "BadServer":
        self.port = free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{behaviour}/{name}", self.handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
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
