"""Decide whether a dynamic VHD can be converted in one sequential pass, and how.

A dynamic VHD (qemu's ``vpc``) is a footer copy, a dynamic header, the block allocation table
(BAT: one big-endian sector number per block, 2 MiB by default), then the blocks, each a
sector bitmap followed by the block's data, and the footer again (:mod:`.vhd` has the
layouts). qemu reads an allocated block whole (the bitmap only matters for differencing
disks), so the data of block *n* is the ``block`` bytes after its bitmap. The BAT is read
first, by range or from the stream's first bytes, and folded into runs (:mod:`.runs`); the
file is then read once.

:func:`plan_vhd` answers ``None`` (the caller keeps ``qemu-img``) for what it does not take:
a geometry that disagrees with the size field (qemu picks one or the other by the creating
application), blocks out of disk order, a BAT beyond what a stream may look ahead, more runs
than the cap. A BAT over the header, a block inside the tables or over another, or past the
end of the file is refused with a classified error.
"""

from __future__ import annotations

from ..errors import InvalidImage
from . import runs
from .runs import RunFolder, StreamPlan
from .tables import ReadAt, read_exact, require_within, table_slices
from .vhd import DYNAMIC, SECTOR, UNALLOCATED, parse_dynamic, parse_footer


def plan_vhd(read_at: ReadAt, size: int | None, lookahead: int | None = None) -> StreamPlan | None:
    """The single-pass plan for the dynamic VHD that ``read_at`` reads, or ``None`` when it
    needs ``qemu-img``; ``size`` and ``lookahead`` as for :func:`~.vmdk_plan.plan_vmdk`."""
    return runs.plan_or_none(_plan, read_at, size, lookahead)


def _plan(read_at: ReadAt, size: int | None, lookahead: int) -> StreamPlan | None:
    footer = parse_footer(read_exact(read_at, 0, SECTOR, "VHD footer"))
    if footer["chs_size"] != footer["current"]:
        return None
    dynamic_at = footer["data_offset"]
    if dynamic_at < SECTOR:
        raise InvalidImage(f"the VHD dynamic header at {dynamic_at:#x} overlaps the footer copy")
    h = parse_dynamic(read_exact(read_at, dynamic_at, DYNAMIC.size, "VHD dynamic header"),
                      footer["current"])
    table, table_end = h["table"], h["table"] + h["entries"] * 4
    if table < SECTOR or (table < dynamic_at + 1024 and table_end > dynamic_at):
        raise InvalidImage(f"the VHD block table at {table:#x} overlaps the footer copy or the "
                           "dynamic header")
    if size is not None:
        require_within(table_end, size, "block table")
    elif table_end > lookahead:
        return None
    plan = StreamPlan("VHD", False, footer["current"], h["block"],
                      max(table_end, dynamic_at + 1024))
    if not _fold(plan, read_at, h):
        return None
    if size is not None and plan.hosts:
        require_within(plan.hosts[-1] + plan.lengths[-1], size - SECTOR, "last data block")
    return plan


def _fold(plan: StreamPlan, read_at: ReadAt, h: dict[str, int]) -> bool:
    """Fold the allocated blocks inside the disk into runs; False for blocks out of order."""
    block, bitmap = h["block"], h["bitmap"]
    folder = RunFolder(plan, "VHD block", "the header or the block table")
    index = 0
    for entries in table_slices(read_at, h["table"], h["entries"], 4, True, "VHD block table"):
        for entry in entries:
            if entry != UNALLOCATED and index * block < plan.capacity and \
                    not folder.add(entry * SECTOR + bitmap, index * block):
                return False
            index += 1
    return True
