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

Parallel reads are not always faster: on a fast, unthrottled server (loopback nginx, a local
object store) one stream already outruns the disk writer, and four threads only add work on
the same cores (measured: 0.6-0.7x of one stream). :func:`adaptive_chunks` therefore measures
instead of guessing: it reads the first ``PROBE_BYTES`` (or ``PROBE_SECONDS``) as one stream,
then (unless that stream is already ``FAST_ENOUGH``) one round of ranges in parallel, and goes
on with whichever delivered faster (parallel must win by ``GAIN``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generator, Iterator

from ..errors import SourceUnavailable
from ..stream import CHUNK

log = logging.getLogger(__name__)

OpenRange = Callable[[int, int], Iterator[bytes]]
"""``open_range(offset, length)``: the bytes of that range, in pieces, retried inside."""
StreamAt = Callable[[int], Iterator[bytes]]
"""``stream_at(offset)``: the source from ``offset`` to its end as one resumable stream."""

PROBE_BYTES = 16 * 1024 * 1024
PROBE_SECONDS = 1.0
"""The single stream is timed over this many bytes or seconds, whichever comes first."""
GAIN = 1.5
"""Parallel ranges must beat the single stream by this factor to be kept."""
FAST_ENOUGH = 128 * 1024 * 1024
"""Bytes/s of one stream past which ranges are not even tried: per-connection caps are below
it (an S3 GET stream gives ~90 MB/s), and past it the writer, decompressor or hasher bounds
the import on two cores. With 256 MiB/s a loopback nginx import tried a round, kept the
ranges and ran at 0.55x of one stream (bench/ranged.py); the trial round alone cost 0.7x on
loopback S3."""

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
        """On the consumer: what has arrived, joined up to CHUNK (the workers queue the small
        pieces they receive, so the copy happens here, one chunk at a time); exactly
        ``length`` bytes or an error."""
        got, done = 0, False
        while not done:
            parts, size, done = self._take()
            if parts:
                got += size
                yield parts[0] if len(parts) == 1 else b"".join(parts)
        if got != self.length:
            raise SourceUnavailable(f"a ranged read at byte {self.offset} gave {got} bytes, "
                                    f"not {self.length}")

    def _take(self) -> tuple[list[bytes], int, bool]:
        """Wait for one item, then take what else is queued, up to CHUNK bytes; True at the end."""
        parts: list[bytes] = []
        size = 0
        item = self._pieces.get()
        while True:
            if item is _END:
                return parts, size, True
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            parts.append(item)
            size += len(item)
            if size >= CHUNK:
                return parts, size, False
            try:
                item = self._pieces.get_nowait()
            except queue.Empty:
                return parts, size, False


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


def adaptive_chunks(stream_at: StreamAt, open_range: OpenRange, start: int, size: int, part: int,
                    connections: int = CONNECTIONS) -> Iterator[bytes]:
    """Bytes ``[start, size)``: one stream, or parallel ranges where they measured faster."""
    if connections < 2 or size - start < PROBE_BYTES + 2 * connections * part:
        yield from stream_at(start)
        return
    began = time.monotonic()
    position = yield from _probe_stream(stream_at(start), start, began)
    if position >= size:
        return
    single = (position - start) / max(time.monotonic() - began, 1e-6)
    if single >= FAST_ENOUGH:
        yield from stream_at(position)
        return
    round_end = min(size, position + connections * part)
    began = time.monotonic()
    yield from parallel_chunks(open_range, position, round_end, part, connections)
    parallel = (round_end - position) / max(time.monotonic() - began, 1e-6)
    if round_end >= size:
        return  # (a stream opened at the very end would be asked for an empty range: a 416)
    keep = parallel >= GAIN * single
    log.info("one stream %.0f MB/s, %d ranges at once %.0f MB/s: going on with %s", single / 1e6,
             connections, parallel / 1e6, "parallel ranges" if keep else "one stream")
    if keep:
        yield from parallel_chunks(open_range, round_end, size, part, connections)
    else:
        yield from stream_at(round_end)


def _probe_stream(stream: Iterator[bytes], position: int, began: float) -> Generator[bytes, None, int]:
    """Pass ``stream`` on until the probe's bytes or seconds are spent; close it; the position."""
    probe_end = position + PROBE_BYTES
    try:
        for chunk in stream:
            yield chunk
            position += len(chunk)
            if position >= probe_end or time.monotonic() - began >= PROBE_SECONDS:
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return position
