"""What the cloner reads: the source volume, as data extents in increasing order.

Three shapes, one interface (:class:`CloneSource`): ``extents(start)`` yields ``(offset,
bytes)`` for every piece of data at or after ``start``, skipping holes:

* :class:`FileSource` (kubevirt content on a Filesystem volume, ``disk.img``): the file's data
  ranges from ``SEEK_DATA``/``SEEK_HOLE``, so a 1 TiB sparse image with 1 GiB of data reads
  1 GiB; zero blocks inside allocated ranges (a preallocated image) are dropped too;
* :class:`DeviceSource` (kubevirt content on a Block volume): a device has no holes to ask
  about, so every block is read and 4 KiB blocks of zeros are dropped;
* :class:`TreeSource` (archive content): a tar of every file in the volume but ``lost+found``
  (CDI's ``tar`` does the same), made in a thread and read as one contiguous stream. The tar is
  deterministic (sorted names, the read-only source's own metadata), so a restarted cloner
  regenerates the same bytes and skips what the server already acknowledged.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import tarfile
import threading
from pathlib import Path
from typing import IO, Iterator, Protocol, cast

from importer.archive import ENTRY_OVERHEAD
from importer.errors import InvalidSource, PermanentError

CHUNK = 1 << 20
"""Bytes read at a time, and the largest extent sent."""
BLOCK = 4096
"""Granularity of zero detection."""
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_BLOCK = bytes(BLOCK)
Piece = tuple[int, bytes]


class CloneSource(Protocol):
    content_type: str
    size: int
    """kubevirt: bytes of the source image; archive: what unpacking it will charge the volume."""

    def extents(self, start: int) -> Iterator[Piece]: ...

    def close(self) -> None: ...


def data_runs(offset: int, chunk: bytes) -> Iterator[Piece]:
    """The non-zero runs of ``chunk`` (read at ``offset``) at :data:`BLOCK` granularity."""
    if chunk == _ZERO_CHUNK[:len(chunk)]:
        return
    view = memoryview(chunk)
    run_start = -1
    for start in range(0, len(chunk), BLOCK):
        piece = view[start:start + BLOCK]
        if piece == _ZERO_BLOCK[:len(piece)]:
            if run_start >= 0:
                yield offset + run_start, chunk[run_start:start]
                run_start = -1
        elif run_start < 0:
            run_start = start
    if run_start >= 0:
        yield offset + run_start, chunk[run_start:]


class _Reader:
    """Reads ``[start, end)`` of an open fd in chunks aligned to :data:`CHUNK`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as error:
            raise InvalidSource(f"the source volume has no {path.name} ({path})") from error
        except PermissionError as error:
            raise PermanentError(f"cannot read the source {path}: {error.strerror}",
                                 reason="Unauthorized") from error

    def runs(self, start: int, end: int) -> Iterator[Piece]:
        position = start
        while position < end:
            stop = min(end, (position // CHUNK + 1) * CHUNK)
            chunk = os.pread(self.fd, stop - position, position)
            if len(chunk) != stop - position:
                raise InvalidSource(f"the source {self.path} ended at {position + len(chunk)} "
                                    f"while {end} bytes were expected (it changed during the clone)")
            yield from data_runs(position, chunk)
            position = stop

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileSource(_Reader):
    content_type = "kubevirt"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        mode = os.fstat(self.fd).st_mode
        if not stat.S_ISREG(mode):
            self.close()
            raise InvalidSource(f"the source {path} is not a regular file")
        self.size = os.fstat(self.fd).st_size

    def extents(self, start: int) -> Iterator[Piece]:
        for data, hole in self._ranges(start):
            yield from self.runs(data, hole)

    def _ranges(self, position: int) -> Iterator[tuple[int, int]]:
        """``(data, hole)`` ranges from ``position`` on, from the filesystem's own map."""
        while position < self.size:
            try:
                data = os.lseek(self.fd, position, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:
                    return  # only a hole up to the end
                raise
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), self.size)
            yield data, hole
            position = hole


class DeviceSource(_Reader):
    content_type = "kubevirt"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def extents(self, start: int) -> Iterator[Piece]:
        return self.runs(start, self.size)


class TreeSource:
    """Every file of ``directory`` (not ``lost+found``) as one tar stream."""

    content_type = "archive"

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise InvalidSource(f"the source volume {directory} is not a directory")
        self.directory = directory
        self.names = sorted(self._walk())
        self.size = ENTRY_OVERHEAD + sum(ENTRY_OVERHEAD + self._file_size(name) for name in self.names)
        """What the importer's extractor charges (plus one entry, so an empty volume is not 0)."""
        self._stops: list[threading.Event] = []

    def _walk(self) -> Iterator[str]:
        for root, dirs, files in os.walk(self.directory):
            relative = os.path.relpath(root, self.directory)
            if relative == ".":
                dirs[:] = [d for d in dirs if d != "lost+found"]
            for name in dirs + files:
                yield os.path.normpath(os.path.join(relative, name))

    def _file_size(self, name: str) -> int:
        info = os.lstat(self.directory / name)
        return info.st_size if stat.S_ISREG(info.st_mode) else 0

    def extents(self, start: int) -> Iterator[Piece]:
        if not self.names:
            return  # nothing to send: an empty stream (tar would be only its zero end blocks)
        pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        stop = threading.Event()  # one per stream: a resumed clone makes the tar again
        self._stops.append(stop)
        thread = threading.Thread(target=self._tar, args=(pieces, stop), name="tar", daemon=True)
        thread.start()
        position = 0
        try:
            while (piece := pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                end = position + len(piece)
                if end > start:
                    skip = max(0, start - position)
                    yield position + skip, piece[skip:]
                position = end
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    pieces.get(timeout=0.1)
                except queue.Empty:
                    pass

    def _tar(self, pieces: "queue.Queue[bytes | BaseException | None]", stop: threading.Event) -> None:
        sink = _QueueWriter(pieces, stop)
        try:
            with tarfile.open(fileobj=cast("IO[bytes]", sink), mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
                for name in self.names:
                    self._add(tar, name)
            sink.flush()
            pieces.put(None)
        except _Stopped:
            pass
        except BaseException as error:  # handed to the reader, which raises it
            pieces.put(error)

    def _add(self, tar: tarfile.TarFile, name: str) -> None:
        path = self.directory / name
        info = tar.gettarinfo(str(path), arcname=name)
        if info is None:
            return  # a socket: tar skips those too
        if info.isreg():
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
        else:
            tar.addfile(info)

    def close(self) -> None:
        for stop in self._stops:
            stop.set()


class _Stopped(Exception):
    pass


class _QueueWriter:
    """A write-only file whose writes go to the reader in pieces of about :data:`CHUNK`."""

    def __init__(self, pieces: "queue.Queue[bytes | BaseException | None]", stop: threading.Event) -> None:
        self._pieces = pieces
        self._stop = stop
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if not self._buffer:
            return
        piece, self._buffer = bytes(self._buffer), bytearray()
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._pieces.put(piece, timeout=0.2)
                return
            except queue.Full:
                continue


def open_source(volume_mode: str, content_type: str, directory: Path, device: Path) -> CloneSource:
    """The source for CDI's pod contract: ``SOURCE_VOLUME_MODE`` and ``CONTENT_TYPE``."""
    if content_type not in ("kubevirt", "archive"):
        raise InvalidSource(f"CONTENT_TYPE must be kubevirt or archive, not {content_type!r}")
    if volume_mode == "Block":
        if content_type == "archive":
            raise InvalidSource("archive content is cloned only from a Filesystem volume")
        return DeviceSource(device)
    if volume_mode != "Filesystem":
        raise InvalidSource(f"SOURCE_VOLUME_MODE must be Filesystem or Block, not {volume_mode!r}")
    if content_type == "archive":
        return TreeSource(directory)
    return FileSource(directory / "disk.img")
