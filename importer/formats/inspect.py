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
from .vhdx import DIRTY_LOG, inspect_vhdx
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


def explain_qemu_refusal(kind: str, error: InvalidImage) -> InvalidImage:
    """qemu-img's refusal in our words where its own would mislead: for a VHDX with a log to
    replay it names our NBD socket or scratch file in the command it suggests."""
    if kind == "vhdx" and DIRTY_LOG in str(error):
        return InvalidImage("the VHDX has a log that must be replayed before it can be read (the "
                            "disk was not closed cleanly); qemu-img replays a log only when it may "
                            "write the file, and an import only reads it: run `qemu-img check -r "
                            "all` on a copy of the image (or attach it once in Hyper-V) and import "
                            f"that ({error})")
    return error


def inspect_file(kind: str, path: str | Path) -> None:
    """:func:`inspect_image` for a local file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        inspect_image(kind, lambda offset, length: os.pread(fd, length, offset), size)
    finally:
        os.close(fd)
