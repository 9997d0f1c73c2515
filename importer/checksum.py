"""Checksums in CDI's form (``md5|sha1|sha256|sha512:<hex>``), hashed off the main path.

The digest covers the bytes exactly as received from the source, before decompression (the
bottom of the reader stack). Hashing runs on its own thread: hashlib releases the GIL for
large buffers, so sha256 at ~200 MB/s does not cap a 600 MB/s transfer; the queue is bounded
so memory stays flat.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
from dataclasses import dataclass

from .errors import ChecksumMismatch, InvalidSource

ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
_FORM = re.compile(r"^(md5|sha1|sha256|sha512):([0-9a-fA-F]+)$")
_HEX_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> "Checksum":
        match = _FORM.match(text.strip())
        if not match:
            raise InvalidSource(
                f"invalid checksum {text!r}: expected <algorithm>:<hex> with algorithm one of "
                + ", ".join(ALGORITHMS))
        algorithm, digest = match.group(1), match.group(2).lower()
        if len(digest) != _HEX_LENGTH[algorithm]:
            raise InvalidSource(
                f"invalid checksum {text!r}: a {algorithm} digest has {_HEX_LENGTH[algorithm]} hex digits")
        return cls(algorithm, digest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


_STOP = object()


class BackgroundHasher:
    """Feed chunks with :meth:`update` (cheap: a queue put); :meth:`hexdigest` waits for the
    worker and returns the digest."""

    def __init__(self, algorithm: str, depth: int = 8) -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._worker = threading.Thread(target=self._run, name=f"hash-{algorithm}", daemon=True)
        self._worker.start()
        self._closed = False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, (bytes, memoryview))
            self._hash.update(item)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._worker.join()


class ChecksumVerifier(BackgroundHasher):
    """A :class:`BackgroundHasher` that knows the expected digest."""

    def __init__(self, expected: Checksum) -> None:
        super().__init__(expected.algorithm)
        self.expected = expected

    def verify(self) -> str:
        actual = self.hexdigest()
        if actual != self.expected.hexdigest:
            raise ChecksumMismatch(self.algorithm, self.expected.hexdigest, actual)
        return actual
