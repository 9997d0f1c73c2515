"""Inspect a VHDX before ``qemu-img`` opens it.

Layout (little endian; MS-VHDX): the file identifier ``vhdxfile`` at 0; two headers at 64
and 128 KiB (``head``, sequence number at 8: the higher one is current); two region tables
at 192 and 256 KiB (``regi``, entry count at 8, 32-byte entries from 16: GUID, file offset
u64, length u32, required u32). Two regions matter:

* metadata (a ``metadata`` table, 32-byte entries from 32: item GUID, offset u32 from the
  region start, length u32): *file parameters* (block size u32, flags u32 with bit 1 "has
  parent"), *virtual disk size* (u64), *logical sector size* (u32);
* the block allocation table: u64 entries, state in bits 0-2 (6 fully present, 7 partially
  present), file offset in MiB from bit 20; after every *chunk ratio* payload entries comes
  one sector-bitmap entry, chunk ratio = 2^23 x logical sector size / block size.

A differencing VHDX needs its parent: refused. Every present block must lie inside the
file, or a truncated download would convert with its missing blocks silently zero.
"""

from __future__ import annotations

import struct
import uuid

from ..errors import InvalidImage
from .tables import ReadAt, read_exact, require_within, table_slices

KiB = 1024
BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VIRTUAL_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
PRESENT = (6, 7)
HAS_PARENT = 1 << 1
MAX_ENTRIES = 2047


def inspect_vhdx(read_at: ReadAt, size: int) -> None:
    if read_exact(read_at, 0, 8, "VHDX identifier") != b"vhdxfile":
        raise InvalidImage("not a VHDX image (bad identifier)")
    regions = _regions(read_at)
    if BAT not in regions or METADATA not in regions:
        raise InvalidImage("the VHDX region table lacks its block table or metadata region")
    block, flags, virtual, sector = _metadata(read_at, *regions[METADATA])
    if flags & HAS_PARENT:
        raise InvalidImage("the VHDX is a differencing disk that needs its parent image; "
                           "import a merged (standalone) image instead")
    if block < 1024 * KiB or block > 256 * 1024 * KiB or block & (block - 1):
        raise InvalidImage(f"invalid VHDX block size {block}")
    if sector not in (512, 4096):
        raise InvalidImage(f"invalid VHDX logical sector size {sector}")
    _check_blocks(read_at, size, regions[BAT], block, virtual, sector)


def _regions(read_at: ReadAt) -> dict[bytes, tuple[int, int]]:
    """The region table (the first valid copy): GUID -> (file offset, length)."""
    for offset in (192 * KiB, 256 * KiB):
        table = read_exact(read_at, offset, 64 * KiB, "VHDX region table")
        if table[:4] != b"regi":
            continue
        (count,) = struct.unpack_from("<I", table, 8)
        if count > MAX_ENTRIES:
            raise InvalidImage(f"the VHDX region table has {count} entries")
        regions = {}
        for at in range(16, 16 + 32 * count, 32):
            guid, start, length = table[at:at + 16], *struct.unpack_from("<QI", table, at + 16)
            regions[guid] = (start, length)
        return regions
    raise InvalidImage("the VHDX has no valid region table")


def _metadata(read_at: ReadAt, start: int, length: int) -> tuple[int, int, int, int]:
    """Block size, file parameter flags, virtual size and logical sector size."""
    table = read_exact(read_at, start, 64 * KiB, "VHDX metadata table")
    if table[:8] != b"metadata":
        raise InvalidImage("the VHDX metadata table is missing (bad signature)")
    (count,) = struct.unpack_from("<H", table, 10)
    items: dict[bytes, bytes] = {}
    for at in range(32, 32 + 32 * min(count, MAX_ENTRIES), 32):
        guid, offset, size = table[at:at + 16], *struct.unpack_from("<II", table, at + 16)
        if size > 64 * KiB or offset + size > length:
            raise InvalidImage("a VHDX metadata item lies outside its region")
        items[guid] = read_exact(read_at, start + offset, size, "VHDX metadata item")
    try:
        block, flags = struct.unpack_from("<II", items[FILE_PARAMETERS])
        (virtual,) = struct.unpack_from("<Q", items[VIRTUAL_SIZE])
        (sector,) = struct.unpack_from("<I", items[SECTOR_SIZE])
    except (KeyError, struct.error):
        raise InvalidImage("the VHDX metadata lacks its file parameters, size or sector "
                           "size") from None
    return block, flags, virtual, sector


def _check_blocks(read_at: ReadAt, size: int, bat: tuple[int, int], block: int,
                  virtual: int, sector: int) -> None:
    ratio = (1 << 23) * sector // block
    blocks = -(-virtual // block)
    entries = blocks + max(0, blocks - 1) // ratio
    if entries * 8 > bat[1]:
        raise InvalidImage(f"the VHDX block table ({bat[1]} bytes) is too small for "
                           f"{blocks} blocks")
    position = 0
    last = 0
    for slice_ in table_slices(read_at, bat[0], entries, 8, False, "VHDX block table"):
        for entry in slice_:
            position += 1
            if position % (ratio + 1) and entry & 7 in PRESENT:
                last = max(last, entry >> 20 << 20)
    if last:
        require_within(last + block, size, "last data block")
