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

Targets (:class:`ImageJob`): ``disk.img`` in the volume or the block device, written through
:class:`importer.target.DiskTarget` (capacity checks, ``.disk.img.partial`` until commit,
resize and preallocation as for uploads). Holes are never written: a file keeps them, a device
gets them punched (zero-filled with ``PREALLOCATION``). Every segment is verified by reading
back what was written and hashing it as the cloner hashed the source; a mismatch (a corrupted
write) fails the clone permanently and removes the partial image. Archives
(:class:`ArchiveJob`) are unpacked by the importer's own safe extractor (the same code as
uploads of archives); their segments are held in memory until verified (bounded by
:data:`MAX_ARCHIVE_SEGMENT`), then handed to it, so a cut never feeds it a byte twice.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from aiohttp import web

from importer import clonewire as wire
from importer.clonewire import ProtocolError, SegmentHash
from importer.errors import CdiImportError, ChecksumMismatch, ImageTooLarge, InvalidSource
from importer.pipeline import ImportOptions, ImportResult, run_import
from importer.sources.upload import UploadSource
from importer.target import DiskTarget, usable_space

from .channel import ByteChannel, ConsumerGone
from .errors import UploadInterrupted, http_message, http_status
from .session import Uploads
from .settings import ServerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_ARCHIVE_SEGMENT = 64 << 20
READ_BACK = 1 << 20


@dataclass
class CloneResult:
    path: str
    content_type: str
    size: int
    """Bytes of the source (kubevirt) or of the tar stream (archive)."""
    disk_size: int
    preallocated: bool


class CloneJob(Protocol):
    content_type: str
    size: int
    acknowledged: int

    async def extents(self, batch: "Batch") -> None: ...

    async def segment(self, end: int, digest: bytes) -> None: ...

    async def done(self, end: int) -> CloneResult: ...

    async def rewind(self) -> None: ...

    async def abort(self, error: BaseException) -> None: ...


def _in_thread(function: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
    return asyncio.get_running_loop().run_in_executor(None, function, *args)


def _digest_mismatch(expected: bytes, actual: bytes, end: int) -> ChecksumMismatch:
    error = ChecksumMismatch("blake3", expected.hex(), actual.hex())
    error.args = (f"the clone's data before offset {end} does not verify: {error}",)
    return error


class ImageJob:
    """kubevirt content: extents written in place, each segment read back and verified."""

    content_type = "kubevirt"

    def __init__(self, settings: ServerSettings, size: int) -> None:
        self.size = size
        self.acknowledged = 0
        self.position = 0
        self.preallocate = settings.preallocation
        if settings.is_block:  # checked before opening: a refused device is left as it was
            device_size = _device_size(settings.destination)
            if size > device_size:
                raise ImageTooLarge(size, device_size, "clone source size")
        self.target = DiskTarget(settings.target(False))
        try:
            self.target.check_fits(size, "clone source size")
            self.reader = os.open(self.target.work_path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.target.abort()
            raise
        self.written: list[tuple[int, int]] = []

    async def extents(self, batch: "Batch") -> None:
        await _in_thread(self._write_all, batch)

    def _write_all(self, batch: "Batch") -> None:
        for offset, length, encoding, payload in batch:
            self._write(offset, length, encoding, payload)

    def _write(self, offset: int, length: int, encoding: int, payload: bytes) -> None:
        if offset < self.position or offset + length > self.size:
            raise ProtocolError(f"an extent at {offset} (+{length}) is out of order or past the "
                                f"source's {self.size} bytes")
        data = wire.decode_payload(length, encoding, payload)
        self.target.zero_range(self.position, offset - self.position)
        self.target.write_at(offset, data)
        self.written.append((offset, length))
        self.position = offset + length

    async def segment(self, end: int, digest: bytes) -> None:
        await _in_thread(self._verify, end, digest)

    def _verify(self, end: int, digest: bytes) -> None:
        if end < self.position or end > self.size:
            raise ProtocolError(f"a segment ends at {end}, before its data or past the source")
        self.target.zero_range(self.position, end - self.position)
        hashed = SegmentHash()
        for offset, length in self.written:
            hashed.update(offset, self._read_back(offset, length))
        if not hmac.compare_digest(hashed.digest(), digest):
            raise _digest_mismatch(digest, hashed.digest(), end)
        self.written.clear()
        self.acknowledged = self.position = end

    def _read_back(self, offset: int, length: int) -> bytes:
        data = os.pread(self.reader, length, offset)
        return data + bytes(length - len(data))  # a file shorter than written reads as a mismatch

    async def done(self, end: int) -> CloneResult:
        if end != self.size or self.acknowledged != self.size:
            raise ProtocolError(f"the clone ended at {end} with {self.acknowledged} of {self.size} bytes verified")
        disk_size = await _in_thread(self.target.commit, self.size)
        os.close(self.reader)
        return CloneResult(str(self.target.final_path), "kubevirt", self.size, disk_size, self.preallocate)

    async def rewind(self) -> None:
        await _in_thread(self._rewind)

    def _rewind(self) -> None:
        """Drop what came after the last verified segment: a new file is cut back, a device
        zeroed, so a resumed stream writes on exactly what was acknowledged."""
        self.written.clear()
        highest = self.target.highest_written
        if highest > self.acknowledged:
            if self.target.is_block:
                self.target.zero_range(self.acknowledged, highest - self.acknowledged)
            else:
                os.ftruncate(self.target.fd, self.acknowledged)
            self.target.highest_written = self.acknowledged
        self.position = self.acknowledged

    async def abort(self, error: BaseException) -> None:
        await _in_thread(self._abort)

    def _abort(self) -> None:
        if self.reader >= 0:
            os.close(self.reader)
            self.reader = -1
        self.target.abort()


class ArchiveJob:
    """archive content: verified segments feed the importer's archive extractor."""

    content_type = "archive"

    def __init__(self, settings: ServerSettings, size: int, loop: asyncio.AbstractEventLoop) -> None:
        if settings.is_block:
            raise InvalidSource("archive content cannot be cloned into a Block volume")
        spec = settings.target(archive=True)
        capacity = archive_capacity(settings)
        if capacity is not None and size > capacity:
            raise ImageTooLarge(size, capacity, "clone source size (files plus per-file overhead)")
        self.size = size
        self.settings_path = spec.path
        self.acknowledged = self.position = 0
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.hash = SegmentHash()
        self.channel = ByteChannel(loop)
        source = UploadSource(self.channel, None, name="clone")
        self.unpacked: asyncio.Future[ImportResult] = loop.run_in_executor(
            None, run_import, source, spec, ImportOptions(content_type="archive"))

    async def extents(self, batch: "Batch") -> None:
        await _in_thread(self._take_all, batch)

    def _take_all(self, batch: "Batch") -> None:
        for offset, length, encoding, payload in batch:
            self._take(offset, length, encoding, payload)

    def _take(self, offset: int, length: int, encoding: int, payload: bytes) -> None:
        if offset != self.position:
            raise ProtocolError(f"an archive extent at {offset}, expected {self.position}")
        if self.buffered + length > MAX_ARCHIVE_SEGMENT:
            raise ProtocolError(f"an archive segment longer than {MAX_ARCHIVE_SEGMENT} bytes")
        data = wire.decode_payload(length, encoding, payload)
        self.hash.update(offset, data)
        self.buffer.append(data)
        self.buffered += length
        self.position += length

    async def segment(self, end: int, digest: bytes) -> None:
        if end != self.position:
            raise ProtocolError(f"an archive segment ends at {end}, its data at {self.position}")
        actual = self.hash.digest()
        if not hmac.compare_digest(actual, digest):
            raise _digest_mismatch(digest, actual, end)
        try:
            for data in self.buffer:
                await self.channel.put(data)
        except ConsumerGone:
            await self.unpacked  # raises the extractor's error
            raise
        self._clear()
        self.acknowledged = end

    def _clear(self) -> None:
        self.buffer, self.buffered, self.hash = [], 0, SegmentHash()

    async def done(self, end: int) -> CloneResult:
        if end != self.acknowledged or self.buffered:
            raise ProtocolError(f"the archive ended at {end} with {self.acknowledged} bytes verified")
        if end == 0:  # an empty source volume: no tar at all, nothing to unpack
            await self.abort(UploadInterrupted("an empty archive clone"))
            return CloneResult(str(self.settings_path), "archive", 0, 0, False)
        self.channel.end()
        result = await self.unpacked
        return CloneResult(result.path, "archive", end, result.disk_size, False)

    async def rewind(self) -> None:
        self._clear()
        self.position = self.acknowledged

    async def abort(self, error: BaseException) -> None:
        self.channel.fail(error)
        try:
            await self.unpacked
        except Exception as failure:  # the error we just caused, or the extractor's own
            log.info("the archive clone stopped: %s", failure)


def _device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def archive_capacity(settings: ServerSettings) -> int | None:
    """The bytes an archive may take, computed as the importer's unpacking computes them."""
    spec = settings.target(archive=True)
    capacity = spec.size
    st = os.statvfs(spec.path)
    free = st.f_bavail * st.f_frsize
    capacity = free if capacity is None else min(capacity, free)
    return usable_space(capacity, spec.filesystem_overhead)


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
        job: ImageJob = await _in_thread(ImageJob, self.settings, size)
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


Batch = list[tuple[int, int, int, bytes]]
"""Extents as received: offset, length, encoding, payload."""
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
