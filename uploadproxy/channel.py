"""A bounded byte pipe from the event loop (request handlers) to the pipeline thread.

The upload body arrives on asyncio; the import pipeline is synchronous and runs on a worker
thread. The channel joins the two without buffering the image: the producer's :meth:`put`
awaits while more than ``limit`` bytes wait to be consumed (so a fast client is slowed to the
speed of the disk, and memory stays flat), and the consumer blocks in :meth:`__iter__` until
bytes, the end, or a failure arrive.

Either side can stop the other: the producer calls :meth:`fail` when the body breaks (the
pipeline then raises that error and aborts the target); the consumer calls :meth:`close` when
the pipeline stops early (too large, corrupt), and the producer's next :meth:`put` raises
:class:`ConsumerGone`. Several requests may feed one channel in turn (resumable uploads): the
consumer simply waits between them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Iterator


class ConsumerGone(Exception):
    """The pipeline stopped reading; its own outcome says why."""


class ByteChannel:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = 16 << 20) -> None:
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._space = asyncio.Event()
        self._producer_waiting = False

    # -- producer side (event loop) -------------------------------------------------------

    async def put(self, chunk: bytes) -> None:
        """Queue ``chunk``; waits while the consumer is ``limit`` bytes behind."""
        while True:
            with self._cond:
                if self._closed:
                    raise ConsumerGone("the import stopped reading the upload")
                if self._buffered < self._limit:
                    self._chunks.append(chunk)
                    self._buffered += len(chunk)
                    self._cond.notify()
                    return
                self._space.clear()
                self._producer_waiting = True
            await self._space.wait()

    def end(self) -> None:
        """Every byte was sent: the consumer sees the end of the stream after the last chunk."""
        with self._cond:
            self._ended = True
            self._cond.notify()

    def fail(self, error: BaseException) -> None:
        """The stream broke: the consumer raises ``error`` at once (queued bytes are dropped,
        they can never become a complete image)."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- consumer side (pipeline thread) --------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self._next()
            if chunk is None:
                return
            yield chunk

    def _next(self) -> bytes | None:
        with self._cond:
            while not self._chunks and not self._ended and self._error is None and not self._closed:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not self._chunks:
                return None
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            if self._producer_waiting and self._buffered < self._limit:
                self._producer_waiting = False
                self._loop.call_soon_threadsafe(self._space.set)
            return chunk

    def close(self) -> None:
        """The consumer is done (finished or failed): wake a waiting producer."""
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()
            waiting, self._producer_waiting = self._producer_waiting, False
        if waiting and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._space.set)
