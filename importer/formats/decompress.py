"""Streaming decompressors, chosen by :mod:`importer.formats.magic`.

Each turns an iterator of compressed chunks into an iterator of decompressed chunks, never
holding more than a chunk or two: gzip (multi-member files too), xz, zstd (multi-frame) and
bzip2. Output is bounded per step (``CHUNK``), so a decompression bomb cannot blow up memory;
the target's capacity check stops it from filling the disk. zlib, lzma, bz2 and zstandard all
release the GIL while they work, so decompression overlaps network and disk threads.

gzip (the usual registry layer and ``.gz`` image) is inflated by ISA-L (``isal``) when it is
installed: the same ``decompressobj`` contract as zlib, about twice zlib's speed on disk
images here, and several times on text-like data. Without it, the stdlib's zlib does the work.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Any, Iterable, Iterator, Protocol

import zstandard

try:
    from isal import isal_zlib as _inflate_module
except ImportError:  # isal is a dependency; zlib is the fallback where its wheel is missing
    _inflate_module = zlib  # type: ignore[no-redef, misc]

_inflate: Any = _inflate_module
"""The gzip inflater's module: ISA-L's ``isal_zlib``, or ``zlib`` (the same contract)."""
_CORRUPT: tuple[type[Exception], ...] = (
    zlib.error, _inflate.error, lzma.LZMAError, OSError, EOFError, zstandard.ZstdError)
"""What a decoder raises on corrupt or truncated input."""

from ..errors import InvalidImage
from ..stream import CHUNK, ChunkReader, tap

MAX_DECODER_MEMORY = 128 * 1024 * 1024
"""Memory one decompressor may ask for: xz's dictionary (xz -9 needs 65 MiB) and zstd's
window (``zstd --long`` uses 128 MiB). A stream that needs more is refused, not obeyed."""


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
    """A gzip decompressobj (ISA-L's, else zlib's) with the needs_input/max_length contract
    of lzma/bz2."""

    def __init__(self) -> None:
        self._obj: zlib._Decompress = _inflate.decompressobj(wbits=16 + zlib.MAX_WBITS)
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


def _new_decoder(kind: str) -> Decoder:
    if kind == "gz":
        return _ZlibDecoder()
    if kind == "xz":
        return lzma.LZMADecompressor(memlimit=MAX_DECODER_MEMORY)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    raise ValueError(f"not a compression: {kind}")


def decompress(kind: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a whole stream of ``kind``; concatenated members/frames/streams are all
    decoded (as gzip -d, xz -d and zstd -d do). Corrupt or truncated input is InvalidImage."""
    if kind == "zst":
        yield from _zstd(chunks)
        return
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
    except _CORRUPT as error:
        raise _corrupt(kind, error) from error
    if started and not decoder.eof:
        raise InvalidImage(f"the {kind} compressed data is truncated: the stream ended early")


def _zstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """zstd through zstandard's stream reader (output bounded per read, frames concatenated),
    with :class:`ZstdFrameWalker` watching the compressed bytes, because the reader treats a
    stream cut inside a frame as a clean end."""
    walker = ZstdFrameWalker()
    source = ChunkReader(tap(chunks, walker.feed))
    reader = zstandard.ZstdDecompressor(max_window_size=MAX_DECODER_MEMORY).stream_reader(
        source, read_size=1 << 20, read_across_frames=True)  # type: ignore[arg-type]  # duck-typed read()
    try:
        while data := reader.read(CHUNK):
            yield data
    except zstandard.ZstdError as error:
        raise _corrupt("zst", error) from error
    walker.finish()


def _corrupt(kind: str, error: Exception) -> InvalidImage:
    text = str(error)
    if any(word in text.lower() for word in ("limit", "window", "memory")):
        return InvalidImage(f"the {kind} compressed data needs more memory to decompress than "
                            f"the {MAX_DECODER_MEMORY >> 20} MiB allowed ({text})")
    return InvalidImage(f"the {kind} compressed data is corrupt: {text}")


class ZstdFrameWalker:
    """Follows the frame and block structure of a zstd stream (RFC 8878) without decoding it,
    to tell a complete stream from one cut short.

    | part                 | size                                                       |
    |----------------------|------------------------------------------------------------|
    | magic 28 b5 2f fd    | 4                                                          |
    | frame header         | 1 descriptor + 0/1 window + 0/1/2/4 dict id + 0/1/2/4/8 FCS |
    | block header         | 3, little-endian: bit 0 last, bits 1-2 type, bits 3+ size  |
    | block content        | raw: size; RLE: 1; compressed: size                        |
    | content checksum     | 4 if the descriptor's bit 2 is set                         |
    | skippable frame      | magic 5?2a4d18 (LE 0x184D2A5?) + 4-byte size + size bytes  |
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._skip = 0
        self._state = "magic"
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            need = self._needed()
            take = min(need - len(self._buffer), len(view))
            self._buffer += bytes(view[:take])
            view = view[take:]
            if len(self._buffer) == need:
                header, self._buffer = self._buffer, b""
                self._advance(header)

    def _needed(self) -> int:
        if self._state == "descriptor-rest":
            return self._header_rest
        return {"magic": 4, "descriptor": 1, "block": 3, "skippable-size": 4}[self._state]

    def _advance(self, header: bytes) -> None:
        if self._state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == 0xFD2FB528:
                self._state = "descriptor"
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state = "skippable-size"
            else:
                raise InvalidImage("the zst compressed data is corrupt: bad frame magic")
        elif self._state == "skippable-size":
            self._skip = int.from_bytes(header, "little")
            self._frame_done()
        elif self._state == "descriptor":
            descriptor = header[0]
            single = bool(descriptor & 0x20)
            fcs = (0 if not single else 1, 2, 4, 8)[descriptor >> 6] if descriptor >> 6 else (1 if single else 0)
            self._checksum = bool(descriptor & 0x04)
            self._header_rest = (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + fcs
            self._state = "descriptor-rest" if self._header_rest else "block"
        elif self._state == "descriptor-rest":
            self._state = "block"
        elif self._state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise InvalidImage("the zst compressed data is corrupt: reserved block type")
            self._skip = 1 if kind == 1 else size
            if last:
                self._skip += 4 if self._checksum else 0
                self._frame_done()

    def _frame_done(self) -> None:
        self.frames += 1
        self._state = "magic"

    def finish(self) -> None:
        """InvalidImage unless the stream ended exactly at the end of a frame."""
        if self._state != "magic" or self._buffer or self._skip or not self.frames:
            raise InvalidImage("the zst compressed data is truncated: the stream ended inside a frame")
