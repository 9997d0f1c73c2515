"""Streaming decompressors, chosen by :mod:`importer.formats.magic`.

Each turns an iterator of compressed chunks into an iterator of decompressed chunks, never
holding more than a chunk or two: gzip (multi-member files too), xz, zstd (multi-frame) and
bzip2. Output is bounded per step (``CHUNK``), so a decompression bomb cannot blow up memory;
the target's capacity check stops it from filling the disk. zlib, lzma, bz2 and zstandard all
release the GIL while they work, so decompression overlaps network and disk threads.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Iterable, Iterator, Protocol

import zstandard

from ..errors import InvalidImage
from ..stream import CHUNK


class Decoder(Protocol):
    def decompress(self, data: bytes, max_length: int) -> bytes: ...
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...


def _gzip() -> "Decoder":
    return _ZlibDecoder()


class _ZlibDecoder:
    """zlib.decompressobj with the needs_input/max_length contract of lzma/bz2."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._pending = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._obj.decompress(self._pending + data if self._pending else data, max_length)
        self._pending = self._obj.unconsumed_tail
        return out

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._pending


class _ZstdDecoder:
    """zstandard's streaming object with the same contract (one frame per object)."""

    def __init__(self) -> None:
        self._obj = zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()
        self._out = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:
            self._out += self._obj.decompress(data)
        out, self._out = self._out[:max_length], self._out[max_length:]
        return out

    @property
    def eof(self) -> bool:
        return bool(self._obj.eof) and not self._out

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data if self._obj.eof else b""

    @property
    def needs_input(self) -> bool:
        return not self._out


def _new_decoder(kind: str) -> Decoder:
    if kind == "gz":
        return _ZlibDecoder()
    if kind == "xz":
        return lzma.LZMADecompressor()
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "zst":
        return _ZstdDecoder()
    raise ValueError(f"not a compression: {kind}")


def decompress(kind: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a whole stream of ``kind``; concatenated members/frames/streams are all
    decoded (as gzip -d, xz -d and zstd -d do). Corrupt or truncated input is InvalidImage."""
    decoder = _new_decoder(kind)
    started = False
    try:
        for chunk in chunks:
            while chunk:
                if decoder.eof:
                    if not chunk.strip(b"\x00") and kind in ("xz", "gz"):
                        break  # stream padding
                    decoder, started = _new_decoder(kind), False
                started = True
                out = decoder.decompress(chunk, CHUNK)
                if out:
                    yield out
                while not decoder.eof and not decoder.needs_input:
                    out = decoder.decompress(b"", CHUNK)
                    if not out:
                        break
                    yield out
                chunk = decoder.unused_data if decoder.eof else b""
        while not decoder.eof and not decoder.needs_input:
            out = decoder.decompress(b"", CHUNK)
            if not out:
                break
            yield out
    except (zlib.error, lzma.LZMAError, OSError, EOFError, zstandard.ZstdError) as error:
        raise InvalidImage(f"the {kind} compressed data is corrupt: {error}") from error
    if started and not decoder.eof:
        raise InvalidImage(f"the {kind} compressed data is truncated: the stream ended early")
