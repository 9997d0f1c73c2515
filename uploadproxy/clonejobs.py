"""The two kinds of clone target behind :mod:`uploadproxy.clone`'s receiver.

:class:`ImageJob` (kubevirt content): ``disk.img`` in the volume or the block device, written
through :class:`importer.target.DiskTarget` (capacity checks, ``.disk.img.partial`` until
commit, resize and preallocation as for uploads). Holes are never written: a file keeps them,
a device gets them punched (zero-filled with ``PREALLOCATION``). Every segment is verified by
reading back what was written and hashing it as the cloner hashed the source; a mismatch (a
corrupted write) fails the clone permanently and removes the partial image.

:class:`ArchiveJob` (archive content): unpacked by the importer's own safe extractor (the same
code as uploads of archives); segments are held in memory until verified (bounded by
:data:`MAX_ARCHIVE_SEGMENT`), then handed to it, so a cut never feeds it a byte twice.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from importer import clonewire as wire
from importer.clonewire import ProtocolError, SegmentHash
from importer.errors import ChecksumMismatch, ImageTooLarge, InvalidSource
from importer.pipeline import ImportOptions, ImportResult, run_import
from importer.sources.upload import UploadSource
from importer.target import DiskTarget, usable_space

from .channel import ByteChannel, ConsumerGone
from .errors import UploadInterrupted
from .settings import ServerSettings

log = logging.getLogger(__name__)
Batch = list[tuple[int, int, int, bytes]]
"""Extents as received: offset, length, encoding, payload."""

MAX_ARCHIVE_SEGMENT = 64 << 20


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

    async def extents(self, batch: Batch) -> None: ...

    async def segment(self, end: int, digest: bytes) -> None: ...

    async def done(self, end: int) -> CloneResult: ...

    async def rewind(self) -> None: ...

    async def abort(self, error: BaseException) -> None: ...


def in_thread(function: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
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
        self._commit: "asyncio.Future[int] | None" = None

    async def extents(self, batch: Batch) -> None:
        await in_thread(self._write_all, batch)

    def _write_all(self, batch: Batch) -> None:
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
        await in_thread(self._verify, end, digest)

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
        """Commit once. A request superseded while committing (its cloner was cut off and came
        back) must not leave a half-done commit behind: the commit runs shielded, and the
        request that supersedes it, which ends at the same offset, waits for the same commit."""
        if end != self.size or self.acknowledged != self.size:
            raise ProtocolError(f"the clone ended at {end} with {self.acknowledged} of {self.size} bytes verified")
        if self._commit is None:
            self._commit = in_thread(self._commit_and_close)
        disk_size: int = await asyncio.shield(self._commit)
        return CloneResult(str(self.target.final_path), "kubevirt", self.size, disk_size, self.preallocate)

    def _commit_and_close(self) -> int:
        disk_size = self.target.commit(self.size)
        self._close_reader()
        return disk_size

    def _close_reader(self) -> None:
        if self.reader >= 0:
            os.close(self.reader)
            self.reader = -1

    async def rewind(self) -> None:
        await in_thread(self._rewind)

    def _rewind(self) -> None:
        """Drop what came after the last verified segment: a new file is cut back, a device
        zeroed, so a resumed stream writes on exactly what was acknowledged."""
        self.written.clear()
        if self._commit is not None:
            return  # everything was verified and is being (or has been) committed
        highest = self.target.highest_written
        if highest > self.acknowledged:
            if self.target.is_block:
                self.target.zero_range(self.acknowledged, highest - self.acknowledged)
            else:
                os.ftruncate(self.target.fd, self.acknowledged)
            self.target.highest_written = self.acknowledged
        self.position = self.acknowledged

    async def abort(self, error: BaseException) -> None:
        await in_thread(self._abort)

    def _abort(self) -> None:
        self._close_reader()
        self.target.abort()  # nothing to undo once committed


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

    async def extents(self, batch: Batch) -> None:
        await in_thread(self._take_all, batch)

    def _take_all(self, batch: Batch) -> None:
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
