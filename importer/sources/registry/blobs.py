"""Layer blobs: resumed over broken connections, hashed off-thread, verified at the end, and
decompressed by magic."""

from __future__ import annotations

import logging
from typing import Generator, Iterator

from ...checksum import BackgroundHasher
from ...errors import (
    InvalidImage,
    SourceUnavailable,
)
from ...formats import magic
from ...formats.decompress import decompress
from ...stream import ChunkReader
from ..base import resuming_chunks
from ..guards import check_content_range
from .client import RegistryClient, raw_chunks
from .manifest import Descriptor

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Decompression of layer blobs


def decompressed(chunks: Iterator[bytes], describe: str) -> Generator[bytes, None, None]:
    """The layer's tar bytes: ``chunks`` decompressed as their magic says (the media type can
    be wrong), through the same bounded decompressors as every other stream."""
    reader = ChunkReader(chunks)
    kind = magic.detect(reader.peek(16))
    log.debug("%s: %s", describe, kind)
    if not magic.is_compression(kind):
        yield from reader
        return
    try:
        yield from decompress(kind, reader)
    except InvalidImage as error:
        raise InvalidImage(f"{describe}: cannot decompress ({kind}): {error}") from error


def is_layer(descriptor: Descriptor) -> bool:
    """Layers we read: tar layers of any compression; foreign (Windows) and artifact blobs not."""
    media = descriptor.media_type
    if "foreign" in media or (descriptor.urls and "nondistributable" in media):
        return False
    return not media or "tar" in media or "rootfs" in media


# ---------------------------------------------------------------------------------------------
# Blobs: resumable and verified


class BlobIntegrityError(InvalidImage):
    """A blob's bytes do not match its descriptor: never skipped, always fatal."""


class BlobStream:
    """The bytes of one blob: resumed over broken connections, hashed, verified at the end."""

    def __init__(self, client: RegistryClient, descriptor: Descriptor, describe: str) -> None:
        self._client = client
        self._descriptor = descriptor
        self._describe = describe
        self._chunks = self._verified(resuming_chunks(self._open_at, 0, client.policy, describe))

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def __next__(self) -> bytes:
        return next(self._chunks)

    def drain(self) -> None:
        """Read the rest (and so verify the digest) without using it."""
        for _ in self._chunks:
            pass

    def close(self) -> None:
        self._chunks.close()

    def _open_at(self, offset: int) -> Iterator[bytes]:
        """The blob from ``offset``: a Range request; a server that ignores it is skipped ahead."""
        response = self._client.open_blob(self._descriptor.digest, offset, self._describe)
        with response:
            if response.status_code == 206:
                check_content_range(response.headers.get("Content-Range"), offset, None,
                                    self._descriptor.size, self._describe)
            pieces = raw_chunks(response, f"blob from byte {offset}")
            if offset and response.status_code == 200:
                pieces = skip_bytes(pieces, offset)
            expected = self._descriptor.size - offset
            received = 0
            for piece in pieces:
                received += len(piece)
                yield piece
            if received < expected:
                raise SourceUnavailable(f"{self._describe}: the connection ended after {offset + received} "
                                        f"of {self._descriptor.size} bytes")

    def _verified(self, chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
        """Pass the bytes through, then insist on the descriptor's size and digest."""
        algorithm, _, expected = self._descriptor.digest.partition(":")
        hasher = BackgroundHasher(algorithm)  # off this thread: sha256 would cap the transfer
        total = 0
        try:
            for piece in chunks:
                total += len(piece)
                if total > self._descriptor.size:
                    raise BlobIntegrityError(
                        f"{self._describe} is larger than its descriptor's {self._descriptor.size} bytes")
                hasher.update(piece)
                yield piece
        finally:
            hasher.close()  # also when the reader stops early: no thread left waiting
        actual = hasher.hexdigest()
        if total != self._descriptor.size or actual != expected:
            raise BlobIntegrityError(
                f"{self._describe}: digest mismatch: expected {self._descriptor.digest}, got "
                f"{algorithm}:{actual} ({total} bytes)")


def raise_integrity_first(blob: BlobStream, error: InvalidImage) -> None:
    """When a layer fails to decompress or parse, read the rest of the blob: if its digest is
    wrong, that is the real problem (corrupted in transit or in the registry) and is raised
    instead; otherwise the layer really is unreadable and the caller handles ``error``."""
    try:
        blob.drain()
    except BlobIntegrityError as integrity:
        raise integrity from error


def skip_bytes(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` without their first ``count`` bytes."""
    for piece in chunks:
        if count >= len(piece):
            count -= len(piece)
            continue
        yield piece[count:]
        count = 0
