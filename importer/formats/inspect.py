"""Our own look at the images ``qemu-img`` converts (VMDK, VHD, VHDX, VDI), before it does.

qemu-img opens every file an image names (VMDK extents, parents) the moment it reads the
header, and reads a table entry past the end of a truncated file as zeros. So each format's
header and tables are checked here first, by small parsers of our own: anything that names
another file, needs a parent, or points past the end of the file is refused.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Callable

from ..errors import InvalidImage
from .tables import ReadAt
from .vdi import inspect_vdi
from .vhd import inspect_vhd
from .vhdx import inspect_vhdx
from .vmdk import inspect_vmdk

INSPECTORS: dict[str, Callable[[ReadAt, int], None]] = {
    "vmdk": inspect_vmdk, "vhd": inspect_vhd, "vhdx": inspect_vhdx, "vdi": inspect_vdi,
}


def inspect_image(kind: str, read_at: ReadAt, size: int) -> None:
    """Raise InvalidImage or UnsafeImage unless the ``kind`` image of ``size`` bytes that
    ``read_at`` reads is self-contained and complete; formats without an inspector pass."""
    inspector = INSPECTORS.get(kind)
    if inspector is None:
        return
    try:
        inspector(read_at, size)
    except (struct.error, ValueError, OverflowError) as error:
        raise InvalidImage(f"the {kind} image's header or tables are malformed: {error}") from error


def inspect_file(kind: str, path: str | Path) -> None:
    """:func:`inspect_image` for a local file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        inspect_image(kind, lambda offset, length: os.pread(fd, length, offset), size)
    finally:
        os.close(fd)
