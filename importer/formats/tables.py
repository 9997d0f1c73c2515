"""Shared helpers of the format inspectors: bounded reads of headers and allocation tables.

An inspector never trusts a size from the image: every table it reads is capped
(:data:`MAX_TABLE_BYTES`) and read in slices, so a header that claims a huge table costs a
clear error, not memory.
"""

from __future__ import annotations

import struct
from array import array
from typing import Callable, Iterator

from ..errors import InvalidImage

ReadAt = Callable[[int, int], bytes]

MAX_TABLE_BYTES = 256 * 1024 * 1024
"""The largest allocation table we walk (a 2 TiB VHD with 2 MiB blocks has 4 MiB of BAT;
qemu's own limits are lower for every format)."""
SLICE = 4 * 1024 * 1024
"""Tables are read and checked this many bytes at a time."""


def read_exact(read_at: ReadAt, offset: int, length: int, what: str) -> bytes:
    """``length`` bytes at ``offset``, or InvalidImage saying the file is truncated there."""
    data = read_at(offset, length) if length else b""
    if len(data) != length:
        raise InvalidImage(f"image is truncated: the {what} at {offset:#x} lies beyond the end "
                           "of the file (an incomplete download?)")
    return data


def table_slices(read_at: ReadAt, offset: int, count: int, width: int, big_endian: bool,
                 what: str) -> Iterator["array[int]"]:
    """The ``count`` unsigned ``width``-byte entries at ``offset``, as arrays of at most
    :data:`SLICE` bytes each."""
    total = count * width
    if total > MAX_TABLE_BYTES:
        raise InvalidImage(f"the {what} has {count} entries, more than this importer reads "
                           f"({MAX_TABLE_BYTES // width})")
    code = {4: "I", 8: "Q"}[width]
    assert array(code).itemsize == width
    for start in range(0, total, SLICE):
        data = read_exact(read_at, offset + start, min(SLICE, total - start), what)
        entries = array(code, data)
        if big_endian == (struct.pack("=H", 1) == b"\x01\x00"):
            entries.byteswap()
        yield entries


def require_within(end: int, size: int, what: str) -> None:
    """InvalidImage unless byte ``end`` (exclusive) lies within a file of ``size`` bytes."""
    if end > size:
        raise InvalidImage(f"image is truncated: its {what} reaches byte {end}, but the file "
                           f"has only {size} bytes (an incomplete download?)")
