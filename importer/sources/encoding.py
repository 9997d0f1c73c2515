"""``Content-Encoding`` a server applied although we asked for ``identity``.

Ranges and encodings do not mix (a range would address the encoded bytes), so sources ask
for ``Accept-Encoding: identity``. A server that encodes anyway (a misconfigured gzip filter,
a CDN) is still understood when it uses gzip or deflate: :class:`ContentDecoder` undoes it,
with bounded output per step, so the disk never receives encoded bytes and the checksum is
computed over the file as published. Any other encoding is refused.
"""

from __future__ import annotations

import zlib
from typing import Generator, Iterable, Iterator

from ..errors import PermanentError, SourceUnavailable

DECODABLE = ("gzip", "x-gzip", "deflate")
_STEP = 4 * 1024 * 1024
"""Most decoded bytes produced per step: a tiny encoded body cannot balloon in memory."""


def content_encoding(header: str | None, name: str) -> str | None:
    """The encoding to undo (None for identity); PermanentError for one we cannot undo."""
    value = (header or "").strip().lower()
    if value in ("", "identity"):
        return None
    if value in DECODABLE:
        return value
    raise PermanentError(f"{name} is sent with Content-Encoding: {header} although identity was "
                         "asked for; only gzip and deflate can be undone. Serve it unencoded",
                         reason="UnsupportedEncoding")


class ContentDecoder:
    """gzip (any number of members) or deflate (zlib-wrapped, or raw as some servers send it)."""

    def __init__(self, encoding: str, name: str) -> None:
        self.encoding, self.name = encoding, name
        self._inflate: zlib._Decompress | None = None

    def _new(self, first: bytes) -> zlib._Decompress:
        if self.encoding != "deflate":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        zlib_wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)

    def decode(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for data in chunks:
            while data:
                if self._inflate is None:
                    self._inflate = self._new(data)
                data = yield from self._feed(data)
        if self._inflate is not None and not self._inflate.eof:
            raise SourceUnavailable(f"{self.name}: the {self.encoding}-encoded body ended early")

    def _feed(self, data: bytes) -> Generator[bytes, None, bytes]:
        """Decode ``data``; returns what belongs to a next gzip member, if any."""
        inflate = self._inflate
        assert inflate is not None
        try:
            while data:
                out = inflate.decompress(data, _STEP)
                data = inflate.unconsumed_tail
                if out:
                    yield out
                if inflate.eof:
                    break
        except zlib.error as error:
            raise PermanentError(f"{self.name}: cannot undo its Content-Encoding {self.encoding}: "
                                 f"{error}", reason="UnsupportedEncoding") from error
        if inflate.eof and self.encoding != "deflate" and inflate.unused_data:
            self._inflate = None
            return inflate.unused_data
        return b""
