"""CDI's ``archive`` content type: a tar (often compressed) unpacked into a filesystem volume.

Unpacked in one pass from the stream, with no scratch and no ``tar`` process. Only plain files
and directories are created; members whose path escapes the volume are refused
(:class:`UnsafeImage`), and links, devices and FIFOs are skipped with a warning, so nothing
can be written outside the directory or through a link. Files are written under a staging
directory inside the volume and moved into place only after the whole archive (and the
checksum, if any) checked out; a failure removes the staging directory.

Bounds, so a hostile archive costs a clear error and nothing else:

* the content plus :data:`ENTRY_OVERHEAD` per member (an inode and a directory entry are not
  free) must fit the volume's capacity (a tar bomb fails with ImageTooLarge);
* at most :data:`MAX_ENTRIES` members;
* names must be usable: no NUL, components of at most 255 bytes, paths of at most
  :data:`MAX_PATH` bytes, and not our staging directory's name;
* members that conflict (a file where a directory was, a child of a file) are InvalidImage,
  and a full volume is a TooSmall error, never a traceback;
* data is synced once, for the whole filesystem, before the tree is moved into place (not
  once per file, which made archives of many small files crawl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageTooLarge, InvalidImage, PermanentError, UnsafeImage
from .formats.tarstream import TarEntry, TarStream, escapes, normalize
from .stream import ChunkReader

log = logging.getLogger(__name__)
STAGING = ".cdi-archive.partial"
MAX_ENTRIES = 1_000_000
"""Members an archive may have (files, directories and skipped ones together)."""
ENTRY_OVERHEAD = 4096
"""Bytes counted against the capacity for every member, besides its content."""
MAX_NAME = 255
MAX_PATH = 4095


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
        self.entries = 0
        self.charged = 0

    def extract(self, reader: ChunkReader, describe: str) -> ArchiveResult:
        tar = TarStream(reader, describe)
        while (entry := tar.next()) is not None:
            name = _checked_name(entry)
            self._count(entry)
            try:
                self._unpack(tar, entry, name)
            except OSError as error:
                raise _unpack_error(error, entry.name) from error
        if not tar.ended:
            raise InvalidImage(f"{describe} is not a complete tar archive")
        return self.result

    def _count(self, entry: TarEntry) -> None:
        """Charge a member against the entry limit and the capacity before writing it."""
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise InvalidImage(f"the archive has more than {MAX_ENTRIES} members")
        self._charge(ENTRY_OVERHEAD + (entry.size if entry.is_regular else 0))

    def _charge(self, nbytes: int) -> None:
        self.charged += nbytes
        if self.capacity is not None and self.charged > self.capacity:
            raise ImageTooLarge(self.charged, self.capacity,
                                "unpacked archive size (content plus per-member overhead)")

    def _unpack(self, tar: TarStream, entry: TarEntry, name: str) -> None:
        if entry.is_dir:
            path = self.staging / name
            if path.exists() and not path.is_dir():
                raise InvalidImage(f"archive member {entry.name!r} is a directory where an "
                                   "earlier member is a file")
            path.mkdir(parents=True, exist_ok=True)
            self.result.directories += 1
        elif entry.is_regular:
            self._write_file(self.staging / name, tar, entry)
        else:
            log.warning("skipping archive member %s: only files and directories are unpacked", name)
            self.result.skipped.append(name)

    def _write_file(self, path: Path, tar: TarStream, entry: TarEntry) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise InvalidImage(f"archive member {entry.name!r} is a file where an earlier "
                               "member is a directory")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(path, flags, (entry.mode & 0o777) or 0o644)
        try:
            for chunk in tar.data():
                self.result.bytes += len(chunk)  # at most entry.size: charged already
                os.write(fd, chunk)
        finally:
            os.close(fd)
        self.result.files += 1

    def commit(self) -> None:
        """Sync once, then move the unpacked tree into the volume (replacing same-named
        entries)."""
        try:
            _syncfs(self.staging)
            for item in sorted(self.staging.iterdir()):
                destination = self.directory / item.name
                if destination.is_dir() and not destination.is_symlink():
                    shutil.rmtree(destination)
                elif destination.exists() or destination.is_symlink():
                    destination.unlink()
                os.replace(item, destination)
            self.staging.rmdir()
            _syncfs(self.directory)
        except OSError as error:
            raise _unpack_error(error, str(self.directory)) from error

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _checked_name(entry: TarEntry) -> str:
    """The member's normalized path, or a clear refusal of a name we will not create."""
    if "\0" in entry.name:
        raise InvalidImage(f"archive member {entry.name!r} has a NUL byte in its name")
    name = normalize(entry.name)
    if escapes(entry.name) or not name:
        raise UnsafeImage(f"refusing archive member {entry.name!r}: its path escapes the volume")
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH or any(len(part) > MAX_NAME for part in encoded.split(b"/")):
        raise InvalidImage(f"archive member {name[:80]!r}... has a name longer than a "
                           f"filesystem allows ({MAX_NAME} bytes a component, {MAX_PATH} a path)")
    if name.split("/", 1)[0] == STAGING:
        raise InvalidImage(f"archive member {entry.name!r} uses the name {STAGING!r}, which the "
                           "importer reserves for unpacking")
    return name


def _unpack_error(error: OSError, name: str) -> Exception:
    """An OSError while unpacking, as the import error it means."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return PermanentError(f"no space left on the volume while unpacking the archive "
                              f"({error.strerror}): DataVolume too small to contain image",
                              reason="TooSmall")
    if error.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                       errno.EINVAL, errno.ELOOP):
        return InvalidImage(f"archive member {name!r} cannot be created: {error.strerror} "
                            "(it conflicts with an earlier member or its name is unusable)")
    return error


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (one syncfs, not one fsync per file)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
