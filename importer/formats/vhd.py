"""Inspect a dynamic VHD (qemu's ``vpc``) before ``qemu-img`` opens it.

Footer (512 bytes, big endian; a copy starts a dynamic image, the original ends it):

========  ======  ====================================================
offset    size    field
========  ======  ====================================================
0         8       cookie ``conectix``
16        8       data offset: the dynamic header (all ones: fixed disk)
48        8       current size, in bytes
56        4       geometry: cylinders (16 bits), heads (8), sectors per track (8)
60        4       disk type: 2 fixed, 3 dynamic, 4 differencing
64        4       checksum: ones' complement of the byte sum of the rest (qemu checks it)
========  ======  ====================================================

Dynamic header (1024 bytes at the data offset, big endian): cookie ``cxsparse`` (0), block
allocation table offset (16), entries in the table (28), block size (32), parent name (64).

A differencing disk needs its parent, which an import never has: refused. A block the table
points at must lie inside the file, before the closing footer copy, which must be there: a
truncated download would otherwise convert with its missing blocks silently zero.
"""

from __future__ import annotations

import struct

from ..errors import InvalidImage
from .tables import ReadAt, read_exact, require_within, table_slices

SECTOR = 512
FOOTER = struct.Struct(">8sIIQIIIIQQIII")
DYNAMIC = struct.Struct(">8sQQIIII")
UNALLOCATED = 0xFFFFFFFF
TYPE_FIXED, TYPE_DYNAMIC, TYPE_DIFFERENCING = 2, 3, 4


def parse_footer(footer: bytes) -> dict[str, int]:
    """The footer copy that starts a dynamic VHD, validated alike for the inspector and the
    streaming reader (:mod:`.vhd_plan`)."""
    (cookie, _features, _version, data_offset, _time, _app, _ver, _os, _orig, current,
     geometry, disk_type, checksum) = FOOTER.unpack_from(footer)
    if cookie != b"conectix":
        raise InvalidImage("not a VHD image (bad footer cookie)")
    if disk_type == TYPE_DIFFERENCING:
        raise InvalidImage("the VHD is a differencing disk that needs its parent image; "
                           "import a merged (standalone) image instead")
    if disk_type != TYPE_DYNAMIC:
        raise InvalidImage(f"unsupported VHD disk type {disk_type} at the start of the file")
    if checksum != footer_checksum(footer):
        raise InvalidImage("the VHD footer's checksum is wrong (a corrupt image?)")
    cylinders, heads, sectors = geometry >> 16, geometry >> 8 & 0xFF, geometry & 0xFF
    return {"data_offset": data_offset, "current": current,
            "chs_size": cylinders * heads * sectors * SECTOR}


def footer_checksum(footer: bytes) -> int:
    """The ones' complement of the byte sum of the footer without its checksum field."""
    return ~(sum(footer[:64]) + sum(footer[68:SECTOR])) & 0xFFFFFFFF


def parse_dynamic(dynamic: bytes, current: int) -> dict[str, int]:
    """The dynamic header: where the block table is, its entries, the block size."""
    magic, _next, table, _version, entries, block, _sum = DYNAMIC.unpack(dynamic)
    if magic != b"cxsparse":
        raise InvalidImage("the VHD dynamic header is missing (bad cookie)")
    if block < SECTOR or block & (block - 1) or block > 1 << 28:
        raise InvalidImage(f"invalid VHD block size {block}")
    if entries * block < current:
        raise InvalidImage(f"the VHD block table ({entries} blocks of {block} bytes) does not "
                           f"cover its size of {current} bytes")
    bitmap = -(-(-(-(block // SECTOR) // 8)) // SECTOR) * SECTOR  # one bit per sector
    return {"table": table, "entries": entries, "block": block, "bitmap": bitmap}


def inspect_vhd(read_at: ReadAt, size: int) -> None:
    footer = parse_footer(read_exact(read_at, 0, SECTOR, "VHD footer"))
    data_offset = footer["data_offset"]
    require_within(data_offset + 1024, size, "dynamic header")
    _check_footer_copy(read_at, size)
    h = parse_dynamic(read_exact(read_at, data_offset, DYNAMIC.size, "VHD dynamic header"),
                      footer["current"])
    last = 0
    for slice_ in table_slices(read_at, h["table"], h["entries"], 4, True, "VHD block table"):
        last = max(last, max((e for e in slice_ if e != UNALLOCATED), default=0))
    if last:
        require_within(last * SECTOR + h["bitmap"] + h["block"], size - SECTOR, "last data block")


def _check_footer_copy(read_at: ReadAt, size: int) -> None:
    """A dynamic VHD ends with its footer; without it the file was cut short."""
    require_within(2 * SECTOR, size, "footer")
    tail = read_exact(read_at, size - SECTOR, SECTOR, "VHD footer")
    if tail[:8] != b"conectix":
        raise InvalidImage("image is truncated: the VHD does not end with its footer "
                           "(an incomplete download?)")
