"""Decide whether a VDI can be converted in one sequential pass, and how.

A VDI (VirtualBox; ``qemu-img`` writes them too) is a header, a block map of one 32-bit entry
per block (1 MiB by default), then the blocks: entry *n* puts block *n* of the disk at
``data_offset + entry * block_size`` (:mod:`.vdi` has the header layout). The map is read first,
by range or from the stream's first bytes, and folded into runs (:mod:`.runs`); the file is
then read once. A fixed VDI is the same with every block in order.

:func:`plan_vdi` answers ``None`` (the caller keeps ``qemu-img``) for what it does not take:
blocks with extra bytes in front (``qemu-img`` refuses those too), blocks out of disk order,
a map beyond what a stream may look ahead, more runs than the cap. A map over the header,
a data area inside the map, a block inside the map or over another, or past the end of the
file is refused with a classified error.
"""

from __future__ import annotations

from ..errors import InvalidImage
from . import runs
from .runs import RunFolder, StreamPlan
from .tables import ReadAt, read_exact, require_within, table_slices
from .vdi import FREE, HEADER_BYTES, TYPE_FIXED, parse_header


def plan_vdi(read_at: ReadAt, size: int | None, lookahead: int | None = None) -> StreamPlan | None:
    """The single-pass plan for the VDI that ``read_at`` reads, or ``None`` when it needs
    ``qemu-img``; ``size`` and ``lookahead`` as for :func:`~.vmdk_plan.plan_vmdk`."""
    return runs.plan_or_none(_plan, read_at, size, lookahead)


def _plan(read_at: ReadAt, size: int | None, lookahead: int) -> StreamPlan | None:
    h = parse_header(read_exact(read_at, 0, HEADER_BYTES, "VDI header"))
    if h["extra"]:
        return None
    block, blocks = h["block"], h["blocks"]
    map_start, data = h["blocks_offset"], h["data_offset"]
    map_end = map_start + blocks * 4
    if map_start < HEADER_BYTES:
        raise InvalidImage(f"the VDI block map at {map_start:#x} overlaps the header")
    if data < map_end:
        raise InvalidImage(f"the VDI data area at {data:#x} starts inside the block map, which "
                           f"ends at {map_end:#x}")
    if size is not None:
        require_within(map_end, size, "block map")
    elif map_end > lookahead:
        return None
    plan = StreamPlan("VDI", False, h["disk_size"], block, data)
    if not _fold(plan, read_at, h):
        return None
    if size is not None and plan.hosts:
        require_within(plan.hosts[-1] + plan.lengths[-1], size, "last data block")
    return plan


def _fold(plan: StreamPlan, read_at: ReadAt, h: dict[str, int]) -> bool:
    """Fold the allocated blocks inside the disk into runs; False for blocks out of order."""
    block, data, disk_size = h["block"], h["data_offset"], h["disk_size"]
    folder = RunFolder(plan, "VDI block", "the header or the block map")
    index = 0
    for entries in table_slices(read_at, h["blocks_offset"], h["blocks"], 4, False,
                                "VDI block map"):
        for entry in entries:
            if h["kind"] == TYPE_FIXED:
                entry = index
            if entry < FREE and index * block < disk_size and \
                    not folder.add(data + entry * block, index * block):
                return False
            index += 1
    return True
