"""The clone stream's pieces on their own (the processes are tested in test_clone.py).

Behaviours under test:
- zero detection keeps exactly the non-zero 4 KiB blocks of a chunk, merged into runs;
- the wire compressor keeps zstd only when it saves enough, stops trying on incompressible
  data but still probes now and then, and starts again when data compresses;
- a segment digest covers offsets: the same bytes at another offset do not verify;
- extent headers that would cost unbounded memory or mean nothing are refused.
"""

from __future__ import annotations

import os

import pytest

from cloner.source import BLOCK, data_runs
from importer import clonewire as wire


def test_data_runs() -> None:
    chunk = bytearray(16 * BLOCK)
    chunk[0] = 1
    chunk[BLOCK * 3 + 5] = 2
    chunk[BLOCK * 4] = 3
    chunk[-1] = 4
    runs = list(data_runs(1 << 20, bytes(chunk)))
    assert [(offset - (1 << 20), len(data)) for offset, data in runs] == \
        [(0, BLOCK), (3 * BLOCK, 2 * BLOCK), (15 * BLOCK, BLOCK)]
    assert list(data_runs(0, bytes(8 * BLOCK))) == []
    assert [len(d) for _, d in data_runs(0, b"\x01" * 100)] == [100]


def test_compressor_only_when_it_pays() -> None:
    compressor = wire.WireCompressor(give_up_after=4, probe_every=8)
    text = b"compressible " * 10000
    payload, encoding = compressor.encode(text)
    assert encoding == wire.ZSTD and wire.decode_payload(len(text), encoding, payload) == text
    random = os.urandom(64 << 10)
    assert all(compressor.encode(random)[1] == wire.RAW for _ in range(40))
    assert compressor.tried < 4 + 40 // 8 + 2  # gave up, then only probes
    for _ in range(8):
        compressor.encode(text)
    assert compressor.encode(text)[1] == wire.ZSTD  # a probe found compressible data again


def test_digest_covers_offsets() -> None:
    a, b = wire.SegmentHash(), wire.SegmentHash()
    a.update(0, b"x" * 4096)
    b.update(4096, b"x" * 4096)
    assert a.digest() != b.digest()


@pytest.mark.parametrize("length,encoding,size", [
    (0, wire.RAW, 0), (wire.MAX_EXTENT + 1, wire.RAW, wire.MAX_EXTENT + 1), (4096, 9, 4096),
    (4096, wire.RAW, 100), (4096, wire.ZSTD, 5000)])
def test_bad_extent_heads(length: int, encoding: int, size: int) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.check_extent_head(length, encoding, size)
