"""The upload server: one per target volume, ``python -m uploadproxy.server`` in CDI's upload pod.

HTTPS on :8443 (aiohttp). ``/healthz`` answers ``OK`` to anyone (the readiness probe), and
``/metrics`` the running upload's progress (``kubevirt_cdi_upload_progress_total{ownerUID}``,
where the controller reads the importer's; CDI reports none for uploads); every other path needs a client certificate signed by ``CLIENT_CERT_FILE`` whose CN is
``CLIENT_NAME`` (the proxy's), else 401. Paths: CDI's one-shot uploads
(:mod:`uploadproxy.upload`) and our resumable protocol (:mod:`uploadproxy.resumable`).

The process ends when its job is done, as CDI's does, writing the termination message the
controller reads: ``Upload Complete`` (exit 0) after a successful upload, ``Clone Complete`` (exit 0) after a
clone in clone mode (:mod:`uploadproxy.clone`, reachable only with the client certificate,
never through the proxy); ``Deadline Passed``
with ``deadlinePassed: true`` (exit 0) when ``DEADLINE`` comes while no upload is running, so
the controller starts a fresh pod with fresh certificates; and a failure message (exit 1) when
an async upload fails after its client was told the bytes were accepted.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
from typing import Any, Awaitable, Callable

from aiohttp import web

from importer.__main__ import write_termination
from importer.errors import CdiImportError
from importer.pipeline import ImportResult

from . import eventloop
from .clone import CloneReceiver
from .clonejobs import CloneResult
from .errors import http_message
from .paths import CLONE, HEALTHZ, RESUMABLE, ROUTES
from .resumable import Resumable
from .session import Session, Uploads
from .settings import ServerSettings
from .tls import peer_common_name, server_context
from .upload import OneShot

log = logging.getLogger("uploadproxy.server")
READ_BUFSIZE = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS = "/metrics"
OPEN_PATHS = (HEALTHZ, METRICS)
"""What anyone who reaches the pod may read: liveness and a progress number, no data."""


def client_check(settings: ServerSettings) -> Any:
    """CDI's rule: the client certificate's CN must be ``CLIENT_NAME`` (401 otherwise)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and settings.client_ca is not None:
            transport = request.transport
            name = peer_common_name(transport.get_extra_info("peercert") if transport else None)
            if name != settings.client_name:
                log.warning("refused a request from client %r (want %r)", name, settings.client_name)
                return web.Response(status=401, text="a client certificate for the upload proxy is required")
        return await handler(request)

    return middleware


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK")


class UploadServer:
    """The app, its one upload slot, and the outcome the entrypoint waits for."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings.checked()
        self.uploads = Uploads(settings, on_outcome=self._outcome)
        self.clones = CloneReceiver(self.settings, self.uploads, on_done=self._clone_done)
        self.outcome: asyncio.Future[ImportResult | CloneResult] | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[client_check(self.settings)], client_max_size=1 << 62)
        app.router.add_get(HEALTHZ, healthz)
        app.router.add_get(METRICS, self._metrics)
        one_shot = OneShot(self.uploads)
        for path in ROUTES:
            app.router.add_route("*", path, one_shot.handle)
        app.router.add_route("*", RESUMABLE, Resumable(self.uploads, self.settings.resume_timeout).handle)
        app.router.add_route("*", CLONE, self.clones.handle)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.uploads.progress.render(), content_type="text/plain")

    async def start(self) -> int:
        self.outcome = asyncio.get_running_loop().create_future()
        self._runner = web.AppRunner(self.make_app(), read_bufsize=READ_BUFSIZE, access_log=None)
        await self._runner.setup()
        context = None
        if self.settings.tls_cert and self.settings.tls_key:
            context = server_context(self.settings.tls_cert, self.settings.tls_key, self.settings.client_ca,
                                     min_version=self.settings.tls_min_version, ciphers=self.settings.tls_ciphers)
        site = web.TCPSite(self._runner, self.settings.address, self.settings.port, ssl_context=context)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.port
        log.info("upload server listening on %s:%d", self.settings.address, self.port)
        return self.port

    async def stop(self) -> None:
        await self.uploads.abort("the upload server stopped before the upload finished")
        await self.clones.abort("the upload server stopped before the clone finished")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _outcome(self, session: Session, outcome: ImportResult | BaseException) -> None:
        """A finished upload, or an async one that failed after it was acknowledged."""
        path = self.settings.termination_message_path
        if isinstance(outcome, ImportResult):
            write_termination(path, {
                "message": "Upload Complete", "scratchSpaceRequired": False, "deadlinePassed": False,
                "preallocationApplied": outcome.preallocated, "format": outcome.format,
                "virtualSize": outcome.virtual_size, "route": outcome.route})
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_result(outcome)
            return
        permanent = isinstance(outcome, CdiImportError) and outcome.permanent
        write_termination(path, {"message": http_message(outcome), "fatalError": permanent,
                                 "reason": getattr(outcome, "reason", "Error")})
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_exception(outcome)

    def _clone_done(self, result: CloneResult) -> None:
        write_termination(self.settings.termination_message_path, {
            "message": "Clone Complete", "scratchSpaceRequired": False, "deadlinePassed": False,
            "preallocationApplied": result.preallocated, "virtualSize": result.size, "route": "clone",
            "contentType": result.content_type})
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(result)

    async def run_until_done(self) -> int:
        """Serve until the upload completes (0), an acknowledged upload fails (1), or the
        deadline passes while idle (0)."""
        assert self.outcome is not None
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(self.outcome), timeout=1.0)
            except asyncio.TimeoutError:
                if self._deadline_passed():
                    write_termination(self.settings.termination_message_path,
                                      {"message": "Deadline Passed", "deadlinePassed": True})
                    return 0
                continue
            except Exception:
                return 1
            return 0

    def _deadline_passed(self) -> bool:
        deadline = self.settings.deadline
        if deadline is None or self.uploads.busy or self.clones.busy:
            return False
        now = datetime.datetime.now(deadline.tzinfo or datetime.timezone.utc)
        if deadline.tzinfo is None:
            now = now.replace(tzinfo=None)
        return now >= deadline


async def serve(settings: ServerSettings) -> int:
    server = UploadServer(settings)
    await server.start()
    try:
        return await server.run_until_done()
    finally:
        await server.stop()


def main(env: dict[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ServerSettings.from_env(env)
    except (ValueError, OSError) as error:
        log.error("bad upload server settings: %s", error)
        write_termination(ServerSettings.termination_path_from_env(env),
                          {"message": f"Unable to start the upload server: {error}"})
        return 1
    return eventloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
