"""Parallel ranged reads (:mod:`importer.sources.ranged`) against real servers.

Behaviours under test:

* from an nginx port with ``limit_rate`` per connection, an import finishes sooner than one
  connection could possibly deliver the file (the server's own rate bound, not a clock on
  our speed), and the disk is the image byte for byte; with ``connections=1`` it cannot;
* from SeaweedFS S3 the object arrives whole and in order through the probe stream and
  parallel ranges, from the start and from an offset;
* a server that lies in the ``Content-Range`` of a later range (not the first) fails the
  import with the classified ``BadRangeResponse`` error, leaving no disk behind;
* a server that advertises ranges but ignores them is read again as one stream;
* a server that cuts every response: the probe stream and each range resume alone;
* one stream first, then one round of ranges; whichever measured faster goes on (fakes);
* in order, bounded: never more than ``connections`` ranges in flight, and closing the
  iterator early stops the workers (a fake ``open_range``; the real sources are above).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from importer.errors import PermanentError
from importer.pipeline import run_import
from importer.sources import RetryPolicy, SourceOptions, open_source
from importer.sources.http import PART
from importer.sources.s3 import PART as S3_PART
from importer.sources.ranged import FAST_ENOUGH, PROBE_BYTES, OpenRange, StreamAt, adaptive_chunks, parallel_chunks
from importer.target import TargetSpec
from tests.servers.badserver import BadServer
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA
from tests.servers.seaweed import SeaweedS3

MiB = 1 << 20
RATE = 8 * MiB
"""nginx's ``limit_rate`` per connection on the slow port."""
SIZE = 64 * MiB
BIG = "big.raw"
"""A file on the bad server large enough to be read in parallel after the probe."""


@pytest.fixture(scope="module")
def big(bad_server: BadServer) -> bytes:
    path = bad_server.root / BIG
    if not path.exists():
        path.write_bytes(os.urandom(PROBE_BYTES + 10 * PART + 12345))
    return path.read_bytes()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[tuple[Nginx, str]]:
    root = tmp_path_factory.mktemp("ranged")
    (root / "www").mkdir()
    data = os.urandom(SIZE)
    (root / "www" / "disk.raw").write_bytes(data)
    nginx = start_nginx(root / "www", root / "nginx", test_ca, rate="8m")
    try:
        yield nginx, hashlib.sha256(data).hexdigest()
    finally:
        nginx.stop()


def _import(url: str, target: Path, connections: int) -> float:
    """Seconds an import of ``url`` took with ``connections`` connections."""
    started = time.monotonic()
    run_import(open_source(url, SourceOptions(connections=connections)), TargetSpec(target))
    return time.monotonic() - started


def test_parallel_ranges_beat_the_per_connection_limit(limited: tuple[Nginx, str], tmp_path: Path) -> None:
    nginx, digest = limited
    one_connection_at_best = SIZE / RATE  # nginx will not send one connection more than RATE/s
    seconds = _import(f"{nginx.slow}/disk.raw", tmp_path / "disk.img", connections=4)
    assert hashlib.sha256((tmp_path / "disk.img").read_bytes()).hexdigest() == digest
    assert seconds < one_connection_at_best * 0.75, seconds


def test_one_connection_is_held_to_the_limit(limited: tuple[Nginx, str], tmp_path: Path) -> None:
    """The control for the test above: the server's limit is real."""
    nginx, _ = limited
    seconds = _import(f"{nginx.slow}/disk.raw", tmp_path / "disk.img", connections=1)
    assert seconds >= SIZE / RATE * 0.75, seconds  # the bound the parallel read beats


@pytest.mark.parametrize("start", [0, 5 * MiB + 3])
def test_s3_parallel_ranges_in_order(seaweed_s3: SeaweedS3, start: int) -> None:
    seaweed = seaweed_s3
    data = os.urandom(PROBE_BYTES + 9 * S3_PART + 777)  # past the probe: at least a round of ranges
    seaweed.client().put_object(Bucket=seaweed.bucket, Key="ranged.img", Body=data)
    options = SourceOptions(access_key_id=seaweed.access_key, secret_key=seaweed.secret_key, connections=4)
    with open_source(f"{seaweed.http_endpoint}/{seaweed.bucket}/ranged.img", options, kind="s3") as source:
        source.open()
        assert b"".join(source.chunks(start)) == data[start:]


def test_a_lie_in_a_later_range_is_a_classified_error(bad_server: BadServer, big: bytes, tmp_path: Path) -> None:
    url = bad_server.url("range-lie-late", BIG)
    options = SourceOptions(connections=4, retry=RetryPolicy(attempts=1, initial_delay=0.01, retry_time=1))
    with pytest.raises(PermanentError) as caught:
        run_import(open_source(url, options), TargetSpec(tmp_path))
    assert caught.value.reason == "BadRangeResponse"
    assert list(tmp_path.iterdir()) == []


def test_ignored_ranges_fall_back_to_one_stream(bad_server: BadServer, big: bytes, tmp_path: Path) -> None:
    key = f"ignore-ranges/{BIG}"
    before = bad_server.requests[key]
    run_import(open_source(bad_server.url("ignore-ranges", BIG), SourceOptions(connections=4)), TargetSpec(tmp_path))
    assert (tmp_path / "disk.img").read_bytes() == big
    assert bad_server.requests[key] - before <= 4  # no request per range


def test_cut_ranges_resume_alone(bad_server: BadServer, big: bytes, tmp_path: Path) -> None:
    """Every response is cut after 3 MiB: the probe stream and each range resume where they
    broke, so each byte crosses the wire once."""
    fast = RetryPolicy(attempts=4, initial_delay=0.05, max_delay=0.3, stall_timeout=10, connect_timeout=5)
    result = run_import(open_source(bad_server.url("reset", BIG), SourceOptions(connections=4, retry=fast)),
                        TargetSpec(tmp_path))
    assert (tmp_path / "disk.img").read_bytes() == big
    assert result.bytes_received == len(big)


def _fake_source(stream_rate: float, range_rate: float, size: int) -> tuple[StreamAt, OpenRange, list[int]]:
    """A stream and ranges delivering 1 MiB pieces at the given rates (MiB/s); the ranges
    opened are recorded."""
    opened: list[int] = []

    def pieces(offset: int, end: int, rate: float) -> Iterator[bytes]:
        for at in range(offset, end, MiB):
            time.sleep(1 / rate)
            yield bytes(min(MiB, end - at))

    def stream_at(offset: int) -> Iterator[bytes]:
        return pieces(offset, size, stream_rate)

    def open_range(offset: int, length: int) -> Iterator[bytes]:
        opened.append(offset)
        return pieces(offset, offset + length, range_rate)

    return stream_at, open_range, opened


def test_adaptive_keeps_what_measured_faster() -> None:
    """Ranges slower than the stream (a fast server on busy cores): one round is tried, then
    the stream goes on. Ranges faster (a per-connection limit): they are kept to the end. A
    stream already past FAST_ENOUGH: no range is tried at all."""
    size = PROBE_BYTES + 12 * PART
    stream_at, open_range, opened = _fake_source(100, 10, size)
    assert sum(map(len, adaptive_chunks(stream_at, open_range, 0, size, PART, 4))) == size
    assert len(opened) == 4  # the one round
    stream_at, open_range, opened = _fake_source(20, 200, size)
    assert sum(map(len, adaptive_chunks(stream_at, open_range, 0, size, PART, 4))) == size
    assert len(opened) == -(-(size - opened[0]) // PART)  # every range after the probe
    stream_at, open_range, opened = _fake_source(2 * FAST_ENOUGH / MiB, 10, size)
    assert sum(map(len, adaptive_chunks(stream_at, open_range, 0, size, PART, 4))) == size
    assert opened == []


def test_bounded_in_order_and_closed_early() -> None:
    in_flight, peak, lock = [0], [0], threading.Lock()
    stopped = threading.Event()

    def open_range(offset: int, length: int) -> Iterator[bytes]:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            for i in range(length):
                time.sleep(0.001 * ((offset // 10) % 3))  # later ranges may finish first
                yield bytes([(offset + i) % 251])
        finally:
            with lock:
                in_flight[0] -= 1
            if offset >= 600:
                stopped.set()

    chunks = parallel_chunks(open_range, 0, 1000, part=10, connections=3)
    received = b""
    while len(received) < 300:
        received += next(chunks)
    assert received == bytes(i % 251 for i in range(len(received)))
    assert peak[0] <= 3
    chunks.close()
    deadline = time.monotonic() + 10
    while in_flight[0] and time.monotonic() < deadline:  # the workers stop at their next piece
        time.sleep(0.01)
    assert in_flight[0] == 0 and not stopped.is_set()  # and nothing past the window was started
