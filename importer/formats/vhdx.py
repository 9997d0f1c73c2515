"""Inspect a VHDX before ``qemu-img`` opens it, and parse the layout its streaming reader uses.

Layout (little endian; MS-VHDX): the file identifier ``vhdxfile`` at 0; two headers at 64
and 128 KiB (``head``, CRC-32C at 4 over 4 KiB, sequence number at 8: the valid one with the
higher number is current; log GUID at 48, version u16 at 66, log length u32 at 68, log offset
u64 at 72); the region table at 192 KiB (``regi``, CRC-32C over 64 KiB, entry count at 8,
32-byte entries from 16: GUID, file offset u64, length u32, flags u32 with bit 0 "required").
Two regions matter:

* metadata (a ``metadata`` table, 32-byte entries from 32: item GUID, offset u32 from the
  region start, length u32): *file parameters* (block size u32, flags u32 with bit 1 "has
  parent"), *virtual disk size* (u64), *logical sector size* (u32);
* the block allocation table: u64 entries, state in bits 0-2, file offset in MiB from bit
  20; after every *chunk ratio* payload entries comes one sector-bitmap entry, chunk ratio =
  2^23 x logical sector size / block size. Payload states: 6 fully present (data), 0, 1, 2,
  3 and 5 read as zeros (not present, undefined, zero, unmapped), 7 partially present
  (differencing disks only), 4 is not a state.

A differencing VHDX needs its parent: refused. Every present block must lie inside the
file, or a truncated download would convert with its missing blocks silently zero. Regions
must not overlap each other, the header section (the first MiB) or the log, as qemu checks.

A header with a log GUID and a log length has a log that may have to be replayed before
the tables can be trusted; :attr:`Layout.log_active` says so (the streaming reader leaves
such files to qemu-img, which replays a log only when it may write, and refuses otherwise).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Iterator

from ..errors import InvalidImage
from .crc32c import with_checksum_zeroed
from .tables import ReadAt, read_exact, require_within, table_slices

KiB = 1024
MiB = 1024 * KiB
BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VIRTUAL_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
FULLY_PRESENT, PARTIALLY_PRESENT = 6, 7
PRESENT = (FULLY_PRESENT, PARTIALLY_PRESENT)
ZERO_STATES = (0, 1, 2, 3, 5)
"""Payload states qemu reads as zeros (5 is the 0.95 draft's "unmapped")."""
HAS_PARENT = 1 << 1
MAX_ENTRIES = 2047
MAX_VIRTUAL = 64 * 1024 ** 4
"""The largest virtual disk the format allows (64 TiB)."""
HEADER_SECTION = MiB
"""Identifier, both headers and both region tables live in the first MiB."""
DIRTY_LOG = "contains a log that needs to be replayed"
"""What qemu-img says when it opens a VHDX read-only whose log has valid entries."""


@dataclass(frozen=True)
class Layout:
    """What the headers, region table and metadata say about the file."""

    block: int
    sector: int
    virtual: int
    bat: int
    """File offset of the block allocation table."""
    blocks: int
    """Payload blocks the disk needs."""
    ratio: int
    """Payload entries between two sector-bitmap entries in the table."""
    log_active: bool
    """The current header names a log that may need replaying."""
    structures: tuple[tuple[int, int, str], ...]
    """(start, end, name) of the header section, log, table and metadata, by start."""

    @property
    def entries(self) -> int:
        """Table entries the disk needs: its payload entries and the sector-bitmap entries
        between them."""
        return self.blocks + max(0, self.blocks - 1) // self.ratio


def parse_layout(read_at: ReadAt) -> Layout:
    """The VHDX's layout, checked as qemu checks it; InvalidImage for what qemu refuses or a
    disk it could only read wrong (a parent it needs, sizes the format does not allow)."""
    if read_exact(read_at, 0, 8, "VHDX identifier") != b"vhdxfile":
        raise InvalidImage("not a VHDX image (bad identifier)")
    log_active, log_offset, log_length = _current_header(read_at)
    regions = _regions(read_at)
    if BAT not in regions or METADATA not in regions:
        raise InvalidImage("the VHDX region table lacks its block table or metadata region")
    structures = [(0, HEADER_SECTION, "header section"),
                  (regions[BAT][0], sum(regions[BAT]), "block table region"),
                  (regions[METADATA][0], sum(regions[METADATA]), "metadata region")]
    if log_length:
        structures.append((log_offset, log_offset + log_length, "log"))
    structures.sort()
    for (_, end, first), (start, _, second) in zip(structures, structures[1:]):
        if start < end:
            raise InvalidImage(f"the VHDX {second} at {start:#x} overlaps its {first}")
    block, flags, virtual, sector = _metadata(read_at, *regions[METADATA])
    _check_parameters(block, flags, virtual, sector)
    layout = Layout(block, sector, virtual, regions[BAT][0], -(-virtual // block),
                    (1 << 23) * sector // block, log_active, tuple(structures))
    if layout.entries * 8 > regions[BAT][1]:
        raise InvalidImage(f"the VHDX block table ({regions[BAT][1]} bytes) is too small for "
                           f"{layout.blocks} blocks")
    return layout


def inspect_vhdx(read_at: ReadAt, size: int) -> None:
    layout = parse_layout(read_at)
    _check_blocks(read_at, size, layout)


def _current_header(read_at: ReadAt) -> tuple[bool, int, int]:
    """(log to replay?, log offset, log length) of the valid header with the higher
    sequence number."""
    best: tuple[int, bytes] | None = None
    for offset in (64 * KiB, 128 * KiB):
        header = read_exact(read_at, offset, 4 * KiB, "VHDX header")
        if header[:4] != b"head" or \
                with_checksum_zeroed(header, 4) != struct.unpack_from("<I", header, 4)[0]:
            continue
        (sequence,) = struct.unpack_from("<Q", header, 8)
        if best is None or sequence > best[0]:
            best = (sequence, header)
    if best is None:
        raise InvalidImage("the VHDX has no valid header (both copies are damaged)")
    header = best[1]
    version, log_length, log_offset = struct.unpack_from("<HIQ", header, 66)
    if version != 1:
        raise InvalidImage(f"unsupported VHDX version {version}")
    if log_length % MiB or log_offset % MiB:
        raise InvalidImage(f"the VHDX log ({log_length} bytes at {log_offset:#x}) is not "
                           "aligned to 1 MiB")
    return any(header[48:64]) and log_length > 0, log_offset, log_length


def _regions(read_at: ReadAt) -> dict[bytes, tuple[int, int]]:
    """The region table (qemu reads the first copy only): GUID -> (file offset, length)."""
    table = read_exact(read_at, 192 * KiB, 64 * KiB, "VHDX region table")
    if table[:4] != b"regi":
        raise InvalidImage("the VHDX has no valid region table (bad signature)")
    if with_checksum_zeroed(table, 4) != struct.unpack_from("<I", table, 4)[0]:
        raise InvalidImage("the VHDX region table's checksum is wrong (a corrupt image?)")
    (count,) = struct.unpack_from("<I", table, 8)
    if count > MAX_ENTRIES:
        raise InvalidImage(f"the VHDX region table has {count} entries")
    regions = {}
    for at in range(16, 16 + 32 * count, 32):
        guid, start, length, flags = table[at:at + 16], *struct.unpack_from("<QII", table, at + 16)
        if guid not in (BAT, METADATA) and flags & 1:
            raise InvalidImage(f"the VHDX requires a region this importer does not know "
                               f"({uuid.UUID(bytes_le=guid)})")
        if start % MiB or length % MiB or start < HEADER_SECTION:
            raise InvalidImage(f"the VHDX region at {start:#x} ({length} bytes) is not aligned "
                               "to 1 MiB or lies inside the header section")
        regions[guid] = (start, length)
    return regions


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


def _check_parameters(block: int, flags: int, virtual: int, sector: int) -> None:
    if flags & HAS_PARENT:
        raise InvalidImage("the VHDX is a differencing disk that needs its parent image; "
                           "import a merged (standalone) image instead")
    if block < MiB or block > 256 * MiB or block & (block - 1):
        raise InvalidImage(f"invalid VHDX block size {block} (the format allows powers of two "
                           "from 1 to 256 MiB)")
    if sector not in (512, 4096):
        raise InvalidImage(f"invalid VHDX logical sector size {sector}")
    if virtual % sector or virtual > MAX_VIRTUAL:
        raise InvalidImage(f"invalid VHDX virtual size {virtual}: it must be a multiple of the "
                           f"{sector}-byte sector and at most 64 TiB")


def allocated(read_at: ReadAt, layout: Layout) -> Iterator[tuple[int, int]]:
    """(block index, table entry) of every payload block not read as zeros, in disk order;
    the sector-bitmap entries are skipped. The table is read in bounded slices."""
    period = layout.ratio + 1
    position = index = 0
    for entries in table_slices(read_at, layout.bat, layout.entries, 8, False,
                                "VHDX block table"):
        for entry in entries:
            position += 1
            if position % period == 0:
                continue
            if entry & 7 not in ZERO_STATES:
                yield index, entry
            index += 1


def _check_blocks(read_at: ReadAt, size: int, layout: Layout) -> None:
    last = max((entry >> 20 << 20 for _, entry in allocated(read_at, layout)
                if entry & 7 in PRESENT), default=0)
    if last:
        require_within(last + layout.block, size, "last data block")
