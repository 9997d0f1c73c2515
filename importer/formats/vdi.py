"""Inspect a VirtualBox VDI before ``qemu-img`` opens it.

Header (little endian) after a 64-byte text banner:

========  ======  ==============================================
offset    size    field
========  ======  ==============================================
0x40      4       signature ``0xbeda107f``
0x4c      4       image type: 1 dynamic, 2 fixed, 3 undo, 4 diff
0x154     4       offset of the block map
0x158     4       offset of the data
0x170     8       disk size
0x178     4       block size
0x17c     4       extra bytes per block
0x180     4       blocks in the image (entries in the block map)
0x1a8     16      UUID of the parent ("link"): zero unless differencing
========  ======  ==============================================

Block map entries are block numbers in the data area (``0xffffffff`` unallocated,
``0xfffffffe`` zero). A differencing or undo image needs its parent: refused. Every block
the map points at must lie inside the file, or a truncated download would convert with its
missing blocks silently zero.
"""

from __future__ import annotations

import struct

from ..errors import InvalidImage
from .tables import ReadAt, read_exact, require_within, table_slices

SIGNATURE = 0xBEDA107F
FREE = 0xFFFFFFFE
TYPE_DYNAMIC, TYPE_FIXED = 1, 2


HEADER_BYTES = 0x1C8


def parse_header(header: bytes) -> dict[str, int]:
    """The fields of a VDI header that matter, validated alike for the inspector and the
    streaming reader (:mod:`.vdi_plan`)."""
    signature, _version = struct.unpack_from("<II", header, 0x40)
    if signature != SIGNATURE:
        raise InvalidImage("not a VDI image (bad signature)")
    (kind,) = struct.unpack_from("<I", header, 0x4C)
    blocks_offset, data_offset = struct.unpack_from("<II", header, 0x154)
    disk_size, block, extra, blocks = struct.unpack_from("<QIII", header, 0x170)
    if kind not in (TYPE_DYNAMIC, TYPE_FIXED) or any(header[0x1A8:0x1B8]):
        raise InvalidImage("the VDI is a differencing or undo image that needs its parent; "
                           "import a standalone image instead")
    if block < 512 or block & (block - 1) or block > 1 << 28:
        raise InvalidImage(f"invalid VDI block size {block}")
    if blocks * block < disk_size:
        raise InvalidImage(f"the VDI block map ({blocks} blocks of {block} bytes) does not "
                           f"cover its size of {disk_size} bytes")
    return {"kind": kind, "blocks_offset": blocks_offset, "data_offset": data_offset,
            "disk_size": disk_size, "block": block, "extra": extra, "blocks": blocks}


def inspect_vdi(read_at: ReadAt, size: int) -> None:
    h = parse_header(read_exact(read_at, 0, HEADER_BYTES, "VDI header"))
    block, extra, blocks = h["block"], h["extra"], h["blocks"]
    last = -1
    for entries in table_slices(read_at, h["blocks_offset"], blocks, 4, False, "VDI block map"):
        last = max(last, max((e for e in entries if e < FREE), default=-1))
    if h["kind"] == TYPE_FIXED:
        last = blocks - 1
    if last >= 0:
        require_within(h["data_offset"] + (last + 1) * (block + extra), size, "last data block")
