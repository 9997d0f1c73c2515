"""The chunk-stream plumbing: :class:`importer.stream.Prefetch` stacks close cleanly.

Behaviours under test:
- chunks and producer errors reach the consumer in order;
- closing a nested stack outer-first, from the consumer's thread while the outer worker is
  inside the inner stack's ``__next__``, raises nothing and leaves no worker thread running
  (CI once saw "generator already executing" here);
- closing stops a producer that would otherwise run forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from importer.stream import ChunkReader, Prefetch


def endless(made: list[int]) -> Iterator[bytes]:
    while True:
        made.append(1)
        yield b"x" * 1024


def slow_chunks(delay: float) -> Iterator[bytes]:
    while True:
        time.sleep(delay)
        yield b"y" * 1024


def test_chunks_and_errors_arrive_in_order() -> None:
    def source() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        raise OSError("connection reset")

    stream = Prefetch(source())
    assert next(stream) == b"a" and next(stream) == b"b"
    with pytest.raises(OSError, match="connection reset"):
        next(stream)
    assert list(stream) == []


def test_nested_stack_closes_outer_first_without_race() -> None:
    before = threading.active_count()
    for _ in range(50):
        inner = ChunkReader(Prefetch(slow_chunks(0.002)))
        outer = ChunkReader(Prefetch(iter(inner)))
        assert outer.read(10) == b"y" * 10
        outer.close()   # the outer worker is likely blocked inside inner.__next__ right now
        inner.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_close_stops_an_endless_producer() -> None:
    made: list[int] = []
    stream = Prefetch(endless(made), depth=2)
    next(stream)
    stream.close()
    time.sleep(0.3)
    count = len(made)
    time.sleep(0.3)
    assert len(made) == count and count <= 6
