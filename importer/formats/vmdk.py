"""Inspect a sparse VMDK before ``qemu-img`` opens it: refuse other files and missing grains.

Hosted sparse header (little endian, VMware's "Virtual Disk Format 1.1"):

========  ======  ==============================================================
offset    size    field
========  ======  ==============================================================
0         4       magic ``KDMV``
4         4       version (1..3)
8         4       flags (bit 16: compressed grains, bit 17: grain markers)
12        8       capacity, in sectors (0: the embedded descriptor's extents say)
20        8       grain size, in sectors
28        8       descriptor offset, in sectors (0: none)
36        8       descriptor size, in sectors
44        4       grain table entries per grain table (qemu: at most 512)
48        8       redundant grain directory offset, in sectors
56        8       grain directory offset, in sectors (``GD_AT_END``: see the footer)
64        8       overhead: sectors before the first grain (header and tables)
77        2       compression algorithm (1: deflate)
========  ======  ==============================================================

Why we parse it ourselves: the embedded descriptor may list extents in *other* files (a host
path, a FIFO, a device) and name a parent (``parentFileNameHint``); ``qemu-img info`` would
open those before we could read its answer. So the descriptor is read here, and anything
but one sparse extent in this very file is refused before qemu-img runs. Then every grain
table and grain the directory points at must lie inside the file: a truncated download
would otherwise convert with its missing grains silently zero.
"""

from __future__ import annotations

import re
import struct

from ..errors import InvalidImage, UnsafeImage
from .tables import ReadAt, read_exact, require_within, table_slices

SECTOR = 512
HEADER = struct.Struct("<4sIIQQQQIQQQ?4sH")
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
MAX_DESCRIPTOR = 1024 * 1024
MAX_GTES = 512
SAFE_TYPES = frozenset({"monolithicsparse", "streamoptimized"})
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')


def inspect_vmdk(read_at: ReadAt, size: int) -> None:
    """Raise UnsafeImage or InvalidImage unless the VMDK is one self-contained sparse file
    whose tables stay inside it."""
    header = parse_header(read_exact(read_at, 0, SECTOR, "VMDK header"))
    check_descriptor(header, read_at)
    if header["capacity"] == 0:
        raise UnsafeImage("the VMDK header leaves its size to the descriptor's extents, which "
                          "may name other files: refusing")
    if header["gd_offset"] == GD_AT_END:  # streamOptimized: the real header is in the footer
        require_within(3 * SECTOR, size, "footer")
        header = parse_header(read_exact(read_at, size - 2 * SECTOR, SECTOR, "VMDK footer"))
        if header["gd_offset"] == GD_AT_END:
            raise InvalidImage("the VMDK footer does not say where its grain directory is")
    _check_grains(header, read_at, size)


def parse_header(data: bytes) -> dict[str, int]:
    """The fields of a hosted sparse header (sizes and offsets in sectors), validated alike
    for the inspector and the streaming reader (:mod:`.vmdk_plan`)."""
    (magic, version, flags, capacity, grain, desc_offset, desc_size, gtes, _rgd, gd_offset,
     overhead, _unclean, _chars, compression) = HEADER.unpack_from(data)
    if magic != b"KDMV":
        raise InvalidImage("not a sparse VMDK (bad magic)")
    if not 1 <= version <= 3:
        raise InvalidImage(f"unsupported VMDK version {version}")
    if grain < 1 or grain & (grain - 1) or grain > 1 << 18:
        raise InvalidImage(f"invalid VMDK grain size of {grain} sectors")
    if not 1 <= gtes <= MAX_GTES:
        raise InvalidImage(f"invalid VMDK grain table size of {gtes} entries")
    return {"flags": flags, "capacity": capacity, "grain": grain, "desc_offset": desc_offset,
            "desc_size": desc_size, "gtes": gtes, "gd_offset": gd_offset,
            "compression": compression, "version": version, "overhead": overhead}


def check_descriptor(header: dict[str, int], read_at: ReadAt) -> None:
    """The embedded descriptor, if any, must describe this file alone."""
    if not header["desc_offset"]:
        return
    length = header["desc_size"] * SECTOR
    if length > MAX_DESCRIPTOR:
        raise InvalidImage(f"the VMDK descriptor claims {length} bytes (at most "
                           f"{MAX_DESCRIPTOR} are read)")
    text = read_exact(read_at, header["desc_offset"] * SECTOR, length, "VMDK descriptor")
    check_descriptor_text(text.split(b"\0", 1)[0])


def check_descriptor_text(text: bytes) -> None:
    """Refuse a descriptor that names a parent, another file or more than one extent."""
    values: dict[str, str] = {}
    extents: list[tuple[str, str]] = []
    for raw in text.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXTENT.match(line)
        if match:
            extents.append((match.group(3).upper(), match.group(4) or ""))
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip().strip('"')
    kind = values.get("createtype", "")
    if kind.lower() not in SAFE_TYPES:
        raise UnsafeImage(f"VMDK create type {kind!r} keeps its data in other files: only "
                          "monolithicSparse and streamOptimized are imported")
    if values.get("parentcid", "ffffffff").lower() != "ffffffff" or \
            "parentfilenamehint" in values:
        raise InvalidImage("the VMDK is a differencing (delta) disk that needs its parent; "
                           "import a flattened image instead")
    if len(extents) != 1 or extents[0][0] != "SPARSE":
        raise UnsafeImage(f"the VMDK descriptor lists {len(extents)} extents "
                          f"({', '.join(e[0] for e in extents) or 'none'}); only one sparse "
                          "extent in the image itself is allowed")


def _check_grains(header: dict[str, int], read_at: ReadAt, size: int) -> None:
    """Every grain table and every grain must lie inside the file."""
    grain_bytes = header["grain"] * SECTOR
    per_gt = header["gtes"]
    tables = -(-header["capacity"] // (header["grain"] * per_gt))
    compressed = bool(header["flags"] & FLAG_COMPRESSED)
    last_grain = previous = 0
    for entries in table_slices(read_at, header["gd_offset"] * SECTOR, tables, 4, False,
                                "VMDK grain directory"):
        for gt in (e for e in entries if e):
            if gt == previous:
                continue  # one table named again: checked already
            previous = gt
            require_within((gt * SECTOR) + per_gt * 4, size, "grain table")
            for grains in table_slices(read_at, gt * SECTOR, per_gt, 4, False,
                                       "VMDK grain table"):
                last_grain = max(last_grain, max(grains, default=0))
    if last_grain > 1:  # 1 marks a zeroed grain
        _check_last_grain(read_at, last_grain * SECTOR, grain_bytes, compressed, size)


def _check_last_grain(read_at: ReadAt, offset: int, grain_bytes: int, compressed: bool,
                      size: int) -> None:
    if not compressed:
        require_within(offset + grain_bytes, size, "last grain")
        return
    marker = read_exact(read_at, offset, 12, "VMDK grain marker")
    _lba, length = struct.unpack("<QI", marker)
    require_within(offset + 12 + length, size, "last compressed grain")
