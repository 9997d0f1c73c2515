"""ReadAhead: whole aligned blocks, few fetches, bounded memory, failures not cached."""

from __future__ import annotations

import os
import threading

import pytest

from importer.errors import SourceUnavailable
from importer.readahead import ReadAhead

DATA = os.urandom(10 * 1024 * 1024 + 123)


def test_sequential_small_reads_fetch_each_block_once() -> None:
    calls: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return DATA[offset:offset + length]

    cache = ReadAhead(read_at, len(DATA), block_size=1 << 20, blocks=2)
    out = b"".join(cache.read_at(o, 65536) for o in range(0, len(DATA), 65536))
    assert out == DATA
    assert len(calls) == 11 and all(o % (1 << 20) == 0 for o, _ in calls)


def test_reads_across_blocks_and_past_the_end() -> None:
    cache = ReadAhead(lambda o, n: DATA[o:o + n], len(DATA), block_size=1 << 20, blocks=3)
    assert cache.read_at((1 << 20) - 10, 3 << 20) == DATA[(1 << 20) - 10:(4 << 20) - 10]
    assert cache.read_at(len(DATA) - 5, 100) == DATA[-5:]


def test_concurrent_readers_share_a_fetch() -> None:
    gate = threading.Event()
    count = [0]

    def slow(offset: int, length: int) -> bytes:
        count[0] += 1
        gate.wait(2)
        return DATA[offset:offset + length]

    cache = ReadAhead(slow, len(DATA), block_size=1 << 20)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.read_at(100, 10))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert count[0] == 1 and results == [DATA[100:110]] * 4


def test_failure_is_not_cached() -> None:
    failures = [1]

    def flaky(offset: int, length: int) -> bytes:
        if failures[0]:
            failures[0] -= 1
            raise SourceUnavailable("boom")
        return DATA[offset:offset + length]

    cache = ReadAhead(flaky, len(DATA))
    with pytest.raises(SourceUnavailable):
        cache.read_at(0, 10)
    assert cache.read_at(0, 10) == DATA[:10]
