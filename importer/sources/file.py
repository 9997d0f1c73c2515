"""Local file or block device source (``/path`` or ``file:///path``), for the library and CLI.

Random access with ``os.pread``; no retries (local reads fail for good or not at all).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from ..errors import InvalidSource, SourceNotFound
from ..stream import CHUNK
from . import SourceOptions
from .base import Source, SourceInfo


class FileSource(Source):
    kind = "file"

    def __init__(self, url: str, options: SourceOptions | None = None) -> None:
        path = unquote(urlsplit(url).path) if url.startswith("file://") else url
        self.path = Path(path)
        self.fd = -1
        self.size = 0

    def open(self) -> SourceInfo:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError as error:
            raise SourceNotFound(f"source file {self.path} does not exist") from error
        except PermissionError as error:
            raise InvalidSource(f"source file {self.path} is not readable: {error}") from error
        mode = os.fstat(self.fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise InvalidSource(f"source {self.path} is not a regular file or block device")
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        return SourceInfo(size=self.size, random_access=True, name=str(self.path))

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        offset = start
        while True:
            data = os.pread(self.fd, CHUNK, offset)
            if not data:
                return
            offset += len(data)
            yield data

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def local_path(self) -> Path:
        """qemu-img can read a local file directly: no NBD needed."""
        return self.path

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
