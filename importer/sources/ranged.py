"""Parallel ranged reads, delivered in order.

Many web servers and object stores cap the rate of each connection (nginx ``limit_rate``, a
CDN's per-flow shaping), and one S3 GET stream is far slower than the bucket. When a source
has random access, :func:`parallel_chunks` reads it as consecutive ranges of ``part`` bytes
on up to ``connections`` threads (each its own connection) and yields the bytes strictly in
order, so everything above (checksum, progress, decompressors, the writer) sees the same
stream a single GET would give. The oldest range is passed on as its bytes arrive, so
progress moves smoothly even on a slow link. Sources without ranges (or whose ranges failed
once) keep their single resumable stream.

Each range is one ``open_range(offset, length)`` of the source, which carries that source's
checks: the ``Content-Range`` of each 206 must be exactly the range asked for (a server that
lies about one range is a :class:`~importer.errors.PermanentError`, ``BadRangeResponse``),
each range is pinned to the object first seen (``If-Match``: a changed object starts the
import over), a server that answers a range with the whole file makes the import start over
in one stream (:class:`~importer.errors.RangesIgnored`), and a fault mid-range resumes that
range alone, at its next byte, within the retry policy.

Memory stays bounded: at most ``connections`` ranges are in flight or waiting, each at most
``part`` bytes. Closing the iterator stops the workers at their next piece and cancels the
ranges not yet started.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from ..errors import SourceUnavailable

OpenRange = Callable[[int, int], Iterator[bytes]]
"""``open_range(offset, length)``: the bytes of that range, in pieces, retried inside."""

CONNECTIONS = 4
"""Default connections per transfer: against nginx with ``limit_rate`` per connection, four
give about four times one stream; more adds little on two cores and loads the server."""

_END = object()


class _Range:
    """One range: fetched on a worker into a queue of pieces, read by the consumer."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length
        self._pieces: queue.Queue[object] = queue.Queue()

    def fetch(self, open_range: OpenRange, stop: threading.Event) -> None:
        """On a worker: queue the range's pieces, then the end (or the error)."""
        try:
            pieces = open_range(self.offset, self.length)
            try:
                for piece in pieces:
                    if stop.is_set():
                        return
                    self._pieces.put(piece)
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
            self._pieces.put(_END)
        except BaseException as error:  # handed to the consumer, in order
            self._pieces.put(error)

    def pieces(self) -> Iterator[bytes]:
        """On the consumer: the pieces as they arrive; exactly ``length`` bytes or an error."""
        got = 0
        while (item := self._pieces.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            got += len(item)
            yield item
        if got != self.length:
            raise SourceUnavailable(f"a ranged read at byte {self.offset} gave {got} bytes, "
                                    f"not {self.length}")


def parallel_chunks(open_range: OpenRange, start: int, size: int, part: int,
                    connections: int = CONNECTIONS) -> Iterator[bytes]:
    """Bytes ``[start, size)`` of a source, fetched as ``part``-sized ranges ``connections``
    at a time, yielded in order."""
    connections = max(1, connections)
    stop = threading.Event()
    pool = ThreadPoolExecutor(connections, thread_name_prefix="range")
    pending: deque[_Range] = deque()
    try:
        for offset in range(start, size, part):
            pending.append(_Range(offset, min(part, size - offset)))
            pool.submit(pending[-1].fetch, open_range, stop)
            if len(pending) == connections:
                yield from pending.popleft().pieces()
        while pending:
            yield from pending.popleft().pieces()
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
