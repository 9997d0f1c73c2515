"""Clone mode of the upload server: the target side of a host-assisted clone.

The cloner (``python -m cloner`` beside the source volume) talks to ``CLONE`` over the same
mutual TLS as the proxy (CN ``CLIENT_NAME``); the proxy never forwards this path. The stream's
frames are :mod:`importer.clonewire`'s. Requests:

* ``GET``: ``{"state", "offset", "size", "contentType"}``, the acknowledged offset a cloner
  resumes from (``idle`` when no clone is held, ``done`` after success);
* ``POST`` with ``Clone-Size`` and ``Clone-Content-Type``: a new clone (any held one is
  abandoned). A source that cannot fit is refused here, before a byte is sent (400, permanent);
* ``PUT`` with ``Clone-Offset`` (must be the acknowledged offset, else 409 with the server's)
  and frames from there: answered 200 once the last segment is verified and the volume
  committed, after which the server ends as a finished upload does (``Clone Complete``). A new
  ``PUT`` supersedes one still running (a half-open connection from before a cut).

The targets themselves (image or archive, writing and verifying) are :mod:`uploadproxy.clonejobs`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web

from importer import clonewire as wire
from importer.clonewire import ProtocolError
from importer.errors import CdiImportError

from .clonejobs import ArchiveJob, Batch, CloneJob, CloneResult, ImageJob, in_thread
from .errors import UploadInterrupted, http_message, http_status
from .session import Uploads
from .settings import ServerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Cut(Exception):
    """The cloner's connection ended before the stream did: keep the clone for a resume."""


class CloneReceiver:
    """The handler of ``CLONE`` and the server's one clone."""

    def __init__(self, settings: ServerSettings, uploads: Uploads,
                 on_done: Callable[[CloneResult], None]) -> None:
        self.settings = settings
        self.uploads = uploads
        self.on_done = on_done
        self.job: CloneJob | None = None
        self.result: CloneResult | None = None
        self._receiving: asyncio.Task[Any] | None = None
        self.failure: dict[str, Any] | None = None
        """How the last clone failed, for a cloner that lost the answer with its connection."""
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self.job is not None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        handlers = {"GET": self.state, "POST": self.create, "PUT": self.put}
        handler = handlers.get(request.method)
        if handler is None:
            return web.Response(status=405, text=f"{request.method} is not allowed here")
        try:
            return await handler(request)
        except ValueError as error:
            return _answer(400, {"message": f"bad clone request: {error}", "permanent": True,
                                 "reason": "BadRequest"})

    async def state(self, request: web.Request) -> web.Response:
        return _answer(200, self._state())

    def _state(self) -> dict[str, Any]:
        if self.result is not None:
            return {"state": "done", "offset": self.result.size, "size": self.result.size,
                    "contentType": self.result.content_type}
        job = self.job
        if job is None and self.failure is not None:
            return {"state": "failed", "offset": 0, "size": 0, "contentType": "", **self.failure}
        if job is None:
            return {"state": "idle", "offset": 0, "size": 0, "contentType": ""}
        receiving = self._receiving is not None and not self._receiving.done()
        return {"state": "receiving" if receiving else "paused", "offset": job.acknowledged,
                "size": job.size, "contentType": job.content_type}

    async def create(self, request: web.Request) -> web.Response:
        size = int(request.headers.get(wire.SIZE_HEADER, ""))
        content_type = request.headers.get(wire.CONTENT_TYPE_HEADER, "kubevirt")
        if size <= 0 or content_type not in ("kubevirt", "archive"):
            raise ValueError(f"{wire.SIZE_HEADER} must be positive and {wire.CONTENT_TYPE_HEADER} "
                             "kubevirt or archive")
        if self.result is not None or self.uploads.busy or self.uploads.result is not None:
            return _answer(409 if self.result else 503, {"message": "the volume is taken by another transfer"})
        async with self._lock:
            await self._supersede()
            if self.job is not None:
                await self.job.abort(UploadInterrupted("the cloner started the clone over"))
                self.job = None
            self.failure = None
            try:
                self.job = await self._new_job(size, content_type)
            except Exception as error:
                return _failure(error)
        log.info("clone of %s content, %d bytes, started", content_type, size)
        return _answer(201, self._state())

    async def _new_job(self, size: int, content_type: str) -> CloneJob:
        if content_type == "archive":
            return ArchiveJob(self.settings, size, asyncio.get_running_loop())
        job: ImageJob = await in_thread(ImageJob, self.settings, size)
        return job

    async def put(self, request: web.Request) -> web.Response:
        offset = int(request.headers.get(wire.OFFSET_HEADER, ""))
        async with self._lock:
            await self._supersede()
            job = self.job
            if job is None or offset != job.acknowledged:
                return _answer(409, {**self._state(), "message": "resume from the server's offset"})
            await job.rewind()
            self._receiving = asyncio.current_task()
        try:
            result = await receive(request, job)
        except Cut as cut:
            log.warning("clone connection cut at verified offset %d: %s", job.acknowledged, cut)
            return _answer(400, {"message": str(cut), "permanent": False, "reason": "Interrupted",
                                 "offset": job.acknowledged})
        except Exception as error:
            log.error("clone failed: %s", error)
            await job.abort(error)
            self.job, self.failure = None, _failure_payload(error)
            return _failure(error)
        finally:
            self._receiving = None
        self.job, self.result = None, result
        log.info("clone complete: %s (%d bytes)", result.path, result.size)
        self.on_done(result)
        return _answer(200, self._state())

    async def _supersede(self) -> None:
        """A request still receiving (its connection half-dead) gives way to a new one."""
        task = self._receiving
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def abort(self, why: str) -> None:
        """The server stops: drop a held clone and what it wrote."""
        await self._supersede()
        if self.job is not None:
            await self.job.abort(UploadInterrupted(why))
            self.job = None


_TYPE = 1
"""Bytes of a frame's type."""
BATCH = 1 << 20


async def receive(request: web.Request, job: CloneJob) -> CloneResult:
    """Read frames until ``D``. Extents are applied in batches of about :data:`BATCH` bytes
    (one hop to a worker thread each), one batch written while the next is read. A cut or a
    cancellation waits for the write in flight, so a resume starts from a quiet target; a
    failed write outranks the cut that followed it."""
    content = request.content
    pending: asyncio.Future[None] | None = None
    batch: Batch = []
    size = 0
    try:
        while True:
            kind = await _read(content, _TYPE)
            if kind == wire.EXTENT:
                batch.append(await _extent(content))
                size += len(batch[-1][3])
                if size < BATCH:
                    continue
            elif kind not in (wire.SEGMENT, wire.DONE):
                raise ProtocolError(f"unknown clone frame {kind!r}")
            if pending is not None:
                await pending
                pending = None
            if batch:
                pending = asyncio.ensure_future(job.extents(batch))
                batch, size = [], 0
            if kind == wire.EXTENT:
                continue
            if pending is not None:
                await pending
                pending = None
            if kind == wire.SEGMENT:
                end, digest = wire.SEGMENT_BODY.unpack(await _read(content, wire.SEGMENT_BODY.size))
                await _whole(job.segment(end, digest))
            else:
                (end,) = wire.DONE_BODY.unpack(await _read(content, wire.DONE_BODY.size))
                return await _whole(job.done(end))
    except BaseException:
        if pending is not None:
            await asyncio.wait([pending])
            if not pending.cancelled() and pending.exception() is not None:
                raise pending.exception() from None  # type: ignore[misc]
        raise


async def _whole(step: Awaitable[T]) -> T:
    """Run ``step`` to its end even if the request is cancelled (superseded): a segment half
    verified on a worker thread, or half handed to the extractor, must not overlap the next
    request's rewind."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


async def _extent(content: Any) -> tuple[int, int, int, bytes]:
    offset, length, encoding, size = wire.EXTENT_HEAD.unpack(await _read(content, wire.EXTENT_HEAD.size))
    wire.check_extent_head(length, encoding, size)
    return offset, length, encoding, await _read(content, size)


async def _read(content: Any, size: int) -> bytes:
    try:
        return bytes(await content.readexactly(size))
    except asyncio.IncompleteReadError as error:
        raise Cut(f"the stream ended {len(error.partial)} bytes into a {size}-byte read") from error
    except (ConnectionError, asyncio.TimeoutError) as error:
        raise Cut(f"the connection broke: {error or type(error).__name__}") from error
    except Exception as error:  # aiohttp's payload errors have no common base
        if isinstance(error, CdiImportError):
            raise
        raise Cut(f"the stream broke: {error or type(error).__name__}") from error


def _answer(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")


def _failure_payload(error: BaseException) -> dict[str, Any]:
    permanent = isinstance(error, CdiImportError) and error.permanent
    return {"message": http_message(error), "permanent": permanent, "reason": getattr(error, "reason", "Error")}


def _failure(error: BaseException) -> web.Response:
    return _answer(http_status(error), _failure_payload(error))
