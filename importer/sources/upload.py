"""Bytes pushed to us by a client (an upload body), read once, in order.

The upload server owns the connection; it hands the pipeline an iterator of chunks that blocks
until the client has sent more. This source only adds what the pipeline needs to trust that
stream:

* it has no random access, so every route falls back to its streaming form (raw and qcow2 are
  written as they arrive; formats that ``qemu-img`` must convert are staged to scratch);
* it can be read once, from byte 0: a second read would need the client to send it again;
* when the client announced a length, a stream that ends short is an error, never a smaller
  image, so a truncated upload cannot look complete.

Transitions taken in the pipeline: probe -> stream-raw | stream-qcow2 | qemu-scratch | archive
-> verify -> resize/commit-archive.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..errors import InvalidImage, InvalidSource
from .base import Source, SourceInfo


class UploadSource(Source):
    kind = "upload"

    def __init__(self, chunks: Iterable[bytes], size: int | None, name: str = "upload") -> None:
        self._chunks = chunks
        self.size = size
        self.name = name
        self.received = 0
        self._started = False

    def open(self) -> SourceInfo:
        return SourceInfo(size=self.size, random_access=False, name=self.name)

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        if start != 0 or self._started:
            raise InvalidSource("an upload can be read only once, from its first byte")
        self._started = True
        return self._counted()

    def _counted(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.received += len(chunk)
            yield chunk
        if self.size is not None and self.received != self.size:
            raise InvalidImage(f"the upload ended after {self.received} of its {self.size} bytes")

    def close(self) -> None:
        """Tell the producer (the server's channel) that nobody reads any more."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
