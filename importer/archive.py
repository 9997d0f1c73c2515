"""CDI's ``archive`` content type: a tar (often compressed) unpacked into a filesystem volume.

Unpacked in one pass from the stream, with no scratch and no ``tar`` process. Only plain files
and directories are created; members whose path escapes the volume are refused
(:class:`UnsafeImage`), and links, devices and FIFOs are skipped with a warning, so nothing
can be written outside the directory or through a link. The total size is bounded by the
volume's capacity (a tar bomb fails with ImageTooLarge). Files are written under a staging
directory inside the volume and moved into place only after the whole archive (and the
checksum, if any) checked out; a failure removes the staging directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageTooLarge, InvalidImage, UnsafeImage
from .formats.tarstream import TarStream, escapes, normalize
from .stream import ChunkReader

log = logging.getLogger(__name__)
STAGING = ".cdi-archive.partial"


@dataclass
class ArchiveResult:
    files: int
    directories: int
    bytes: int
    skipped: list[str]


class ArchiveExtractor:
    """Extracts into ``directory``; call :meth:`commit` after verification, else :meth:`abort`."""

    def __init__(self, directory: Path, capacity: int | None) -> None:
        self.directory = directory
        self.capacity = capacity
        self.staging = directory / STAGING
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        self.result = ArchiveResult(0, 0, 0, [])

    def extract(self, reader: ChunkReader, describe: str) -> ArchiveResult:
        tar = TarStream(reader, describe)
        while (entry := tar.next()) is not None:
            name = normalize(entry.name)
            if escapes(entry.name) or not name:
                raise UnsafeImage(f"refusing archive member {entry.name!r}: its path escapes the volume")
            if entry.is_dir:
                (self.staging / name).mkdir(parents=True, exist_ok=True)
                self.result.directories += 1
            elif entry.is_regular:
                self._write_file(self.staging / name, tar, entry.mode)
            else:
                log.warning("skipping archive member %s: only files and directories are unpacked", name)
                self.result.skipped.append(name)
        if not tar.ended:
            raise InvalidImage(f"{describe} is not a complete tar archive")
        return self.result

    def _write_file(self, path: Path, tar: TarStream, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(path, flags, (mode & 0o777) or 0o644)
        try:
            for chunk in tar.data():
                self.result.bytes += len(chunk)
                if self.capacity is not None and self.result.bytes > self.capacity:
                    raise ImageTooLarge(self.result.bytes, self.capacity, "unpacked archive size")
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.result.files += 1

    def commit(self) -> None:
        """Move the unpacked tree into the volume (replacing same-named entries)."""
        for item in sorted(self.staging.iterdir()):
            destination = self.directory / item.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            elif destination.exists() or destination.is_symlink():
                destination.unlink()
            os.replace(item, destination)
        self.staging.rmdir()

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
