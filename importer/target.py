"""The target disk: a raw file (in a directory volume) or a block device.

Writes are sparse: zero blocks become holes in files, and on block devices are punched
(``fallocate(PUNCH_HOLE)``, which zeroes) or written as zeros where the device cannot punch.
A file is written under a hidden temporary name (``.disk.img.partial``) and renamed over
``disk.img`` only after it was resized, preallocated and fsynced: until then a previous
``disk.img`` stays exactly as it was, so a failed import loses nothing, and never leaves a
``disk.img`` that looks complete; :meth:`DiskTarget.abort` removes the partial file. What is
not a regular file, directory volume or block device (a character device, a FIFO, a socket,
a directory named ``disk.img``) is refused before anything is written, and never unlinked. A block device cannot be
renamed, so on failure its first MiB is zeroed and the failure reported.

Capacity is enforced on every write: an image (or a decompression bomb) that would write
past the target's usable size fails with ImageTooLarge before it fills the volume.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImageTooLarge, PermanentError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
BLOCK = 4096
"""Granularity of hole detection, the filesystem block: a zero block is never written. Blocks
are aligned to the disk (offset 0), not to the chunk that carries them, so a decompressor's
odd-sized chunks find the same holes as the raw file does."""
COARSE = 64 * 1024
"""First pass: a zero 64 KiB block is skipped in one comparison; only blocks holding data are
looked at 4 KiB at a time."""
_ZEROS = bytes(4 * MiB)
_ZERO_VIEW = memoryview(_ZEROS)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
DISK_IMAGE_NAME = "disk.img"


def _zero_between(data: bytes, start: int, end: int) -> bool:
    """True if ``data[start:end]`` is all zeros (memcmp in place: no slice is copied)."""
    step = len(_ZEROS)
    return all(data.startswith(_ZERO_VIEW[:min(step, end - at)], at) for at in range(start, end, step))


def is_zero(data: bytes | memoryview) -> bool:
    """True if every byte is zero (a memcmp against a zero buffer, not a Python loop)."""
    return _zero_between(data if isinstance(data, bytes) else bytes(data), 0, len(data))


def data_runs(data: bytes, offset: int = 0) -> list[tuple[int, int]]:
    """The (start, end) runs of ``data`` that hold non-zero blocks (:data:`BLOCK`), adjacent runs
    merged. ``data`` sits at ``offset`` on the disk; blocks are aligned to the disk, so the
    first and last block of a chunk may be partial."""
    size = len(data)
    if _zero_between(data, 0, size):
        return []
    runs: list[tuple[int, int]] = []
    position = 0
    while position < size:
        coarse_end = min(size, position + COARSE - (offset + position) % COARSE)
        if not _zero_between(data, position, coarse_end):
            _add_fine_runs(data, offset, position, coarse_end, runs)
        position = coarse_end
    return runs


def _add_fine_runs(data: bytes, offset: int, start: int, end: int, runs: list[tuple[int, int]]) -> None:
    """Append the non-zero blocks of ``data[start:end]`` to ``runs``, merging neighbours."""
    while start < end:
        stop = min(end, start + BLOCK - (offset + start) % BLOCK)
        if not data.startswith(_ZERO_VIEW[:stop - start], start):
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], stop)
            else:
                runs.append((start, stop))
        start = stop


def usable_space(available: int, overhead: float) -> int:
    """Bytes of disk image that fit in ``available`` bytes of filesystem, as CDI's importer
    computes it: ceil((1 - overhead) * available), rounded down to a whole MiB."""
    usable = math.ceil((1.0 - overhead) * available)
    return usable // MiB * MiB


@dataclass
class TargetSpec:
    """What the caller asks for; :meth:`DiskTarget.open` turns it into an open target."""

    path: Path
    """A file (e.g. ``/data/disk.img``), a directory (``disk.img`` is created in it) or a block
    device (e.g. ``/dev/cdi-block-volume``)."""
    size: int | None = None
    """Requested capacity in bytes (CDI's IMPORTER_IMAGE_SIZE). For a file target the image is
    resized to the usable part of it; ``None`` keeps the image's virtual size."""
    filesystem_overhead: float = 0.0
    """Share of a filesystem volume reserved for the filesystem (CDI's FILESYSTEM_OVERHEAD)."""
    preallocate: bool = False
    check_free_space: bool = False
    """Cap the capacity at the free space of the target's filesystem (the pod does; CDI's
    availableSpace). The library leaves it off so a sparse file can be larger than the disk."""


class DiskTarget:
    """An open target being written. Use as a context manager: abort unless committed."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.final_path, kind = inspect_target(Path(spec.path))
        self.is_block = kind == "block"
        self.preallocate = spec.preallocate
        self.highest_written = 0
        self.bytes_written = 0
        self.committed = False
        self._punch_works = True
        self._replaced_bytes = 0
        if self.is_block:
            self.work_path = self.final_path
            self.fd = os.open(self.final_path, os.O_WRONLY)
            self.device_size = os.lseek(self.fd, 0, os.SEEK_END)
        else:
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            self.work_path = self.final_path.with_name(f".{self.final_path.name}.partial")
            if kind == "file":  # kept until the new image replaces it; its room is ours then
                self._replaced_bytes = self.final_path.stat().st_blocks * 512
            _remove_stale(self.work_path)
            self.fd = os.open(self.work_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
            self.device_size = 0
        self.capacity = self._capacity()

    def _capacity(self) -> int | None:
        """Usable bytes for the disk image: the device size, or the requested size less the
        filesystem overhead (capped at free space when asked)."""
        if self.is_block:
            return self.device_size
        size = self.spec.size
        if self.spec.check_free_space:
            st = os.statvfs(self.final_path.parent)
            free = st.f_bavail * st.f_frsize + self._replaced_bytes
            size = free if size is None else min(size, free)
        if size is None:
            return None
        return usable_space(size, self.spec.filesystem_overhead)

    def check_fits(self, needed: int, what: str = "virtual image size") -> None:
        """Raise ImageTooLarge if ``needed`` bytes do not fit; call before transferring."""
        if self.capacity is not None and needed > self.capacity:
            raise ImageTooLarge(needed, self.capacity, what)

    # -- writing -------------------------------------------------------------------------

    def write_at(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, skipping (or punching) zero blocks."""
        end = offset + len(data)
        if self.capacity is not None and end > self.capacity:
            raise ImageTooLarge(end, self.capacity, "image data")
        self.highest_written = max(self.highest_written, end)
        if self.preallocate and self.is_block:
            self._pwrite(offset, data)
            return
        view = memoryview(data)
        position = 0
        for start, stop in data_runs(data, offset):
            if start > position:
                self._zero(offset + position, start - position)
            self._pwrite(offset + start, view[start:stop])
            position = stop
        if position < len(data):
            self._zero(offset + position, len(data) - position)

    def zero_range(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros without sending zeros: nothing on a
        new file (holes), a punched hole on a device (written zeros when preallocating, or
        where the device cannot punch). For writers that know where the holes are (clones)."""
        if length <= 0:
            return
        end = offset + length
        if self.capacity is not None and end > self.capacity:
            raise ImageTooLarge(end, self.capacity, "image data")
        if self.is_block and self.preallocate:
            self._zero_fill(offset, end)
        else:
            self._zero(offset, length)

    def _pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as error:
                raise _write_error(error) from error
            view = view[n:]
            offset += n
            self.bytes_written += n

    def _zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros. Files: nothing to do (a new file has
        holes). Devices: punch, or write zeros where punching is not supported."""
        if not self.is_block:
            return
        if self._punch_works:
            try:
                _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as error:
                log.info("punching holes on %s failed (%s): writing zeros", self.final_path, error)
                self._punch_works = False
        while length > 0:
            n = min(length, len(_ZEROS))
            self._pwrite(offset, _ZEROS[:n])
            offset += n
            length -= n

    # -- finishing -----------------------------------------------------------------------

    def final_size(self, virtual_size: int) -> int:
        """Size of the finished file: the virtual size grown to the capacity, never shrunk."""
        if self.is_block:
            return self.device_size
        if self.spec.size is None or self.capacity is None:
            return virtual_size
        return max(virtual_size, self.capacity)

    def commit(self, virtual_size: int) -> int:
        """Resize, preallocate, fsync and move into place. Returns the final size."""
        self.check_fits(virtual_size)
        size = self.final_size(virtual_size)
        if self.is_block:
            if self.preallocate and self.highest_written < size:
                self._zero_fill(self.highest_written, size)
        else:
            os.ftruncate(self.fd, size)
            if self.preallocate:
                try:
                    os.posix_fallocate(self.fd, 0, size)
                except OSError as error:
                    raise _write_error(error) from error
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if not self.is_block:
            os.replace(self.work_path, self.final_path)
            _fsync_dir(self.final_path.parent)
        self.committed = True
        return size

    def _zero_fill(self, start: int, end: int) -> None:
        while start < end:
            n = min(end - start, len(_ZEROS))
            self._pwrite(start, _ZEROS[:n])
            start += n

    def abort(self) -> None:
        """Undo: remove the partial file, or mark a block device as not holding an image."""
        if self.committed:
            return
        if self.is_block:
            try:
                if self.fd < 0:
                    self.fd = os.open(self.final_path, os.O_WRONLY)
                os.pwrite(self.fd, _ZEROS[:MiB], 0)
                os.fsync(self.fd)
            except OSError as error:
                log.warning("could not clear the start of %s: %s", self.final_path, error)
        elif self.work_path.exists():
            self.work_path.unlink()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DiskTarget":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self.committed:
            self.abort()


def inspect_target(path: Path) -> tuple[Path, str]:
    """The disk image path for ``path`` and what is there now: ``new`` (nothing), ``file``
    (a previous image, kept until the new one replaces it) or ``block`` (a device).

    Anything else is refused before a byte is written and is never unlinked: a directory
    where the image should be, a character device, a FIFO or a socket (writing to one would
    hang or feed a device; replacing one would destroy what someone put there)."""
    if path.is_dir():
        path = path / DISK_IMAGE_NAME
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path, "new"
    except OSError as error:
        raise PermanentError(f"cannot use {path} as the target: {error.strerror}",
                             reason="InvalidTarget") from error
    if stat.S_ISBLK(mode):
        return path, "block"
    if stat.S_ISREG(mode):
        return path, "file"
    what = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise PermanentError(f"refusing to import into {path}: it is {what}; the target must be a "
                         "regular file, a directory or a block device", reason="InvalidTarget")


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket"}


def _remove_stale(path: Path) -> None:
    """Remove a leftover partial image of a killed run (our own name, never user data)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise PermanentError(f"{path}, where the partial image is written, is a directory; "
                             "remove it", reason="InvalidTarget")
    log.info("removing %s left over by an earlier, interrupted import", path)
    path.unlink()


def _write_error(error: OSError) -> Exception:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return PermanentError(
            f"no space left on device while writing the image ({error.strerror}): "
            "DataVolume too small to contain image", reason="TooSmall")
    return error


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    fallocate = _libc_fallocate()
    if fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@functools.cache
def _libc_fallocate() -> Any:
    """libc's fallocate(2), loaded once: with 4 KiB holes a device may be punched often."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    function = libc.fallocate
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return function


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
