"""Aligned read-ahead for random access over the network.

qemu-img reads a VMDK or VHD through our NBD server in small requests (often 64 KiB), and a
ranged HTTP or S3 GET per request costs a round trip each. :class:`ReadAhead` fetches whole
aligned blocks (4 MiB by default) and keeps the most recent few, so the mostly sequential
reads of a conversion cost one request per block. Memory is bounded by ``blocks`` x
``block_size``; concurrent readers of the same block wait for one fetch, not one each.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

ReadAt = Callable[[int, int], bytes]


class ReadAhead:
    def __init__(self, read_at: ReadAt, size: int, block_size: int = 4 << 20, blocks: int = 8) -> None:
        self._read_at = read_at
        self.size = size
        self.block_size = block_size
        self._capacity = blocks
        self._lock = threading.Lock()
        self._blocks: OrderedDict[int, Future[bytes]] = OrderedDict()
        self.fetches = 0
        """Ranged reads made on the source (for tests and benchmarks)."""

    def read_at(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        parts = []
        position = offset
        while position < end:
            index = position // self.block_size
            block = self._block(index)
            start = position - index * self.block_size
            piece = block[start:start + end - position]
            if not piece:
                break
            parts.append(piece)
            position += len(piece)
        return b"".join(parts)

    def _block(self, index: int) -> bytes:
        with self._lock:
            future = self._blocks.get(index)
            owner = future is None
            if future is None:
                future = Future()
                self._blocks[index] = future
                while len(self._blocks) > self._capacity:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(index)
        if owner:
            try:
                start = index * self.block_size
                self.fetches += 1
                future.set_result(self._read_at(start, min(self.block_size, self.size - start)))
            except BaseException as error:
                with self._lock:
                    self._blocks.pop(index, None)  # a failed block is fetched again next time
                future.set_exception(error)
        return future.result()
