"""Decide whether a VMDK can be converted in one sequential pass, and how.

``qemu-img`` reads a sparse VMDK one 64 KiB grain per request; through our NBD server that
costs more than the bytes themselves. The two subformats ``qemu-img`` and VMware write are
laid out for a single pass instead:

* **monolithicSparse**: header, descriptor, grain directory (GD) and every grain table (GT)
  at the front, then the grains. The tables are read first (by range, or from the first
  bytes of the stream) and folded into *runs* of grains contiguous in the file and on the
  disk, kept in packed arrays: a disk written front to back is a handful of runs, however
  large. Then the stream is read once and each run written at its disk offset.
* **streamOptimized**: after the header, a sequence of markers, each a compressed grain with
  its disk address or a metadata block. No table is needed at all.

:func:`plan_vmdk` answers ``None`` for a layout the pass does not handle (grains out of file
order, tables interleaved with data, tables beyond the bytes a stream may look ahead, more
runs than :data:`~.runs.MAX_RUNS`, grains too large to inflate in memory): the caller keeps the
``qemu-img`` route for those, so nothing that converted before stops converting. A header,
descriptor or table that is hostile (other files, a parent, grains inside the tables,
overlapping or past the end of the file, absurd sizes) raises the same classified errors as
the inspector in :mod:`.vmdk`, whose parsing this reuses.
"""

from __future__ import annotations

import sys
from array import array
from typing import Iterator

from ..errors import InvalidImage, UnsafeImage
from . import runs
from .runs import PlacementDigest, RunFolder, StreamPlan, Unstreamable
from .tables import ReadAt, read_exact, require_within, table_slices
from .vmdk import (FLAG_COMPRESSED, FLAG_MARKERS, FLAG_ZERO_GRAIN, GD_AT_END, SECTOR,
                   check_descriptor, parse_header)

MAX_GRAINS = 1 << 32
"""Grains a disk may have: capacity / grain size beyond this is not a real disk."""
MAX_STREAM_GRAIN = 1024 * 1024
"""Largest grain a streamOptimized image may use here (each is inflated in memory; qemu and
VMware write 64 KiB)."""
TABLE_READ = 4 * 1024 * 1024
"""Grain tables next to each other in the file are fetched in reads of up to this size."""
GTE_ZEROED = 1
"""A grain table entry of 1 marks a grain that reads as zeros (with the zero-grain flag)."""


def plan_vmdk(read_at: ReadAt, size: int | None, lookahead: int | None = None) -> StreamPlan | None:
    """The single-pass plan for the VMDK that ``read_at`` reads, or ``None`` when it needs
    ``qemu-img``. ``size`` is the file's length when known (random access); a stream passes
    ``None`` and a ``read_at`` over the first ``lookahead`` bytes, which raises
    :class:`Unstreamable` for anything further."""
    return runs.plan_or_none(_plan, read_at, size, lookahead)


def _plan(read_at: ReadAt, size: int | None, lookahead: int) -> StreamPlan | None:
    header = parse_header(read_exact(read_at, 0, SECTOR, "VMDK header"))
    check_descriptor(header, read_at)
    if header["capacity"] == 0:
        raise UnsafeImage("the VMDK header leaves its size to the descriptor's extents, which "
                          "may name other files: refusing")
    grain = header["grain"] * SECTOR
    capacity = header["capacity"] * SECTOR
    if -(-capacity // grain) > MAX_GRAINS:
        raise InvalidImage(f"the VMDK claims {capacity} bytes in grains of {grain} bytes: more "
                           f"than {MAX_GRAINS} grains is not a real disk")
    flags = header["flags"]
    if flags & FLAG_COMPRESSED or flags & FLAG_MARKERS:
        return _plan_stream(header, read_at, size, lookahead)
    if header["gd_offset"] == GD_AT_END:
        return None
    return _plan_sparse(header, read_at, size, lookahead)


def _plan_stream(header: dict[str, int], read_at: ReadAt, size: int | None,
                 lookahead: int) -> StreamPlan | None:
    """streamOptimized: compressed grains behind markers, from the overhead on. qemu-img
    writes no end-of-stream marker but keeps the tables at the front: then the markers are
    checked against them (a digest of every grain's place), which also catches a stream cut
    at a grain boundary. VMware's tables follow the grains; then the marker must be there."""
    flags = header["flags"]
    if not (flags & FLAG_COMPRESSED and flags & FLAG_MARKERS) or header["compression"] != 1:
        return None  # compressed without markers (or another algorithm): qemu-img decides
    grain = header["grain"] * SECTOR
    if grain > MAX_STREAM_GRAIN:
        return None
    start = header["overhead"] * SECTOR
    descriptor_end = (header["desc_offset"] + header["desc_size"]) * SECTOR
    if start < max(SECTOR, descriptor_end):
        raise InvalidImage(f"the VMDK's grains would start at {start:#x}, inside its header or "
                           "descriptor")
    if size is not None:
        require_within(start + SECTOR, size, "first grain marker")
    plan = StreamPlan("VMDK", True, header["capacity"] * SECTOR, grain, start)
    if header["gd_offset"] == GD_AT_END:
        return plan
    tables = _front_tables(header, read_at, size, lookahead)
    if tables is None:
        return None
    gts, metadata_end = tables
    if metadata_end > start:
        raise InvalidImage(f"the VMDK's grain tables run to {metadata_end:#x}, past the start "
                           f"of its grains at {start:#x}")
    plan.expected = PlacementDigest()
    zero_grain = bool(flags & FLAG_ZERO_GRAIN)
    for index, entries in _grain_tables(read_at, gts, header["gtes"], _grains(header)):
        for n, entry in enumerate(entries):
            if entry and not (entry == GTE_ZEROED and zero_grain):
                plan.expected.add(index + n, entry)
    return plan


def _grains(header: dict[str, int]) -> int:
    return -(-header["capacity"] // header["grain"])


def _front_tables(header: dict[str, int], read_at: ReadAt, size: int | None,
                  lookahead: int) -> tuple["array[int]", int] | None:
    """The allocated grain tables (see :func:`_table_offsets`) and the end of the metadata
    (header, descriptor, GD and tables), or None for tables out of file order."""
    per_gt = header["gtes"]
    gd_offset = header["gd_offset"] * SECTOR
    tables = -(-_grains(header) // per_gt)
    gt_bytes = per_gt * 4
    descriptor = (header["desc_offset"] * SECTOR,
                  (header["desc_offset"] + header["desc_size"]) * SECTOR)
    reserved = [(0, SECTOR), descriptor, (gd_offset, gd_offset + tables * 4)]
    limit = size if size is not None else lookahead
    gts = _table_offsets(read_at, gd_offset, tables, gt_bytes, reserved, size, limit)
    if gts is None:
        return None
    metadata_end = max(end for _, end in reserved)
    if gts:
        metadata_end = max(metadata_end, (gts[-1] & _SECTOR_MASK) * SECTOR + gt_bytes)
    if size is not None:
        require_within(metadata_end, size, "grain tables")
    return gts, metadata_end


def _plan_sparse(header: dict[str, int], read_at: ReadAt, size: int | None,
                 lookahead: int) -> StreamPlan | None:
    """monolithicSparse: the tables folded into runs, after checking they keep clear of
    each other and of the grains."""
    tables = _front_tables(header, read_at, size, lookahead)
    if tables is None:
        return None
    gts, metadata_end = tables
    plan = StreamPlan("VMDK", False, header["capacity"] * SECTOR, header["grain"] * SECTOR, metadata_end)
    folder = _Grains(plan, bool(header["flags"] & FLAG_ZERO_GRAIN))
    for index, entries in _grain_tables(read_at, gts, header["gtes"], _grains(header)):
        if not folder.add(index, entries):
            return None
    if size is not None and plan.hosts:
        require_within(plan.hosts[-1] + plan.lengths[-1], size, "last grain")
    return plan


def _table_offsets(read_at: ReadAt, gd_offset: int, tables: int, gt_bytes: int,
                   reserved: list[tuple[int, int]], size: int | None, limit: int,
                   ) -> "array[int] | None":
    """The allocated GD entries as ``GD index << 32 | GT sector`` words; None unless the
    tables lie one after another in the file. A table over the header, the descriptor or
    the GD itself (``reserved``) is refused."""
    words = array("Q")
    previous_end = 0
    index = 0
    for entries in table_slices(read_at, gd_offset, tables, 4, False, "VMDK grain directory"):
        for entry in entries:
            if entry:
                offset = entry * SECTOR
                if any(offset < end and offset + gt_bytes > start for start, end in reserved):
                    raise InvalidImage(f"the VMDK grain table at {offset:#x} overlaps the "
                                       "header, the descriptor or the grain directory")
                if offset < previous_end:
                    return None  # tables out of order or shared: qemu-img decides
                if offset + gt_bytes > limit:
                    if size is None:
                        raise Unstreamable("grain table beyond the look-ahead")
                    require_within(offset + gt_bytes, size, "grain table")
                previous_end = offset + gt_bytes
                words.append(index << 32 | entry)
            index += 1
    return words


def _grain_tables(read_at: ReadAt, words: "array[int]", per_gt: int, grains: int,
                  ) -> Iterator[tuple[int, "array[int]"]]:
    """(first grain index, entries) of each allocated grain table, in file order, with
    tables next to each other fetched together."""
    gt_bytes = per_gt * 4
    empty = bytes(gt_bytes)
    position = 0
    while position < len(words):
        first = (words[position] & _SECTOR_MASK) * SECTOR
        stop = position + 1
        while stop < len(words) and (words[stop] & _SECTOR_MASK) * SECTOR == \
                first + (stop - position) * gt_bytes and (stop - position + 1) * gt_bytes <= TABLE_READ:
            stop += 1
        blob = read_exact(read_at, first, (stop - position) * gt_bytes, "VMDK grain table")
        for n in range(position, stop):
            index = (words[n] >> 32) * per_gt
            count = min(per_gt, grains - index)
            at = (n - position) * gt_bytes
            if not blob.startswith(empty[:count * 4], at):  # empty tables: one memcmp
                entries = array("I", blob[at:at + count * 4])
                if sys.byteorder == "big":
                    entries.byteswap()  # VMDK is little endian
                yield index, entries
        position = stop


_SECTOR_MASK = (1 << 32) - 1
"""GT sectors are 32 bits; GD indexes stay below 2**26 (the table cap), so both fit a word."""


class _Grains:
    """Folds grain table entries into runs (:class:`~.runs.RunFolder`), skipping holes."""

    def __init__(self, plan: StreamPlan, zero_grain: bool) -> None:
        self.folder = RunFolder(plan, "VMDK grain", "the image header or its grain tables")
        self.zero_grain = zero_grain
        self.grain = plan.grain

    def add(self, first: int, entries: "array[int]") -> bool:
        """Take one grain table; False if its grains go backwards in the file."""
        for n, entry in enumerate(entries):
            if not entry or (entry == GTE_ZEROED and self.zero_grain):
                continue
            if not self.folder.add(entry * SECTOR, (first + n) * self.grain):
                return False
        return True
