"""The body of one ``PUT``: a source's extents from the resume point on, as clone frames.

Frames are made on a thread of their own (read, detect zeros, hash, compress: the heavy
parts release the GIL) while the caller sends the previous ones, with at most
:data:`QUEUE_DEPTH` frames in between, so memory stays flat. A segment closes after
``segment_data`` bytes of data or ``segment_span`` bytes of the source, whichever comes first;
the server acknowledges only whole segments, so a cut costs at most one segment again.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from importer.clonewire import RAW, SegmentHash, WireCompressor, encode_done, encode_extent, encode_segment

from .source import CloneSource

QUEUE_DEPTH = 8
Framed = tuple[bytes, int]
"""Frame bytes and the source offset they reach."""
BATCH = 1 << 20
"""Frames are handed to the sender in pieces of about this size."""


@dataclass
class Counters:
    """What one cloner run sent, for the log, the termination message and the benchmark."""

    wire_bytes: int = 0
    data_bytes: int = 0
    extents: int = 0
    compressed: int = 0
    position: int = 0
    """The source offset sent up to (handed to the connection): the progress."""
    listeners: list[Callable[[int], None]] = field(default_factory=list)

    def sent(self, position: int) -> None:
        self.position = position
        for listener in self.listeners:
            listener(position)


@dataclass
class Segmenter:
    source: CloneSource
    start: int
    segment_data: int = 16 << 20
    segment_span: int = 256 << 20
    compress: bool = True
    counters: Counters = field(default_factory=Counters)

    def frames(self) -> Iterator[Framed]:
        """Every frame from ``start`` to the end of the source, in order, each with the source
        offset it reaches."""
        compressor = WireCompressor() if self.compress else None
        segment, segment_start, segment_bytes = SegmentHash(), self.start, 0
        end = self.start
        for offset, data in self.source.extents(self.start):
            segment.update(offset, data)
            end = offset + len(data)
            yield self._extent(offset, data, compressor), end
            segment_bytes += len(data)
            if segment_bytes >= self.segment_data or end - segment_start >= self.segment_span:
                yield encode_segment(end, segment.digest()), end
                segment, segment_start, segment_bytes = SegmentHash(), end, 0
        final = max(end, self.source.size) if self.source.content_type == "kubevirt" else end
        yield encode_segment(final, segment.digest()), final
        yield encode_done(final), final

    def _extent(self, offset: int, data: bytes, compressor: WireCompressor | None) -> bytes:
        payload, encoding = compressor.encode(data) if compressor is not None else (data, RAW)
        frame = encode_extent(offset, data, payload, encoding)
        counters = self.counters
        counters.extents += 1
        counters.data_bytes += len(data)
        counters.compressed += encoding != RAW
        return frame


class Prefetch:
    """Runs a frame iterator on a thread; iterate to receive, :meth:`stop` to abandon."""

    def __init__(self, frames: Iterator[Framed]) -> None:
        self._frames = frames
        self._queue: queue.Queue[Framed | BaseException | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frames", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            batch: list[bytes] = []
            size = position = 0
            for frame, position in self._frames:  # small extents go out together: fewer writes, records
                batch.append(frame)
                size += len(frame)
                if size >= BATCH:
                    if not self._put((b"".join(batch), position)):
                        return
                    batch, size = [], 0
            if batch and not self._put((b"".join(batch), position)):
                return
            self._put(None)
        except BaseException as error:  # raised again on the sending side
            self._put(error)
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()

    def _put(self, item: Framed | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Framed]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
