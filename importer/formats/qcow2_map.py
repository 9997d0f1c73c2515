"""The qcow2 mapping, held in memory that does not grow with what the image claims.

A streaming conversion walks the file in host order, so it needs the mapping backwards: for
the bytes passing now, which guest offsets want them. The obvious way, one event per mapped
cluster on a heap, costs about 150 bytes per cluster: a 135 KiB image whose L2 entries all
name one cluster maps 512 MiB and took 220 MiB of memory, and an image a few hundred KiB
long can map terabytes.

Here the mapping stays in the form the image stores it:

* :class:`L2Index` is the L1 table as two packed arrays sorted by L2 table offset, so an L2
  table that many L1 entries point at is read once and applied at every guest offset that
  uses it (its *bases*);
* :class:`L2Table` is one L2 table as packed entries plus the order of its allocated entries
  by host offset, and a cursor that hands out the next run of clusters in host order.

Only tables the stream has reached and not finished are in memory, at 12 bytes per entry at
most; :data:`MAX_LIVE_TABLE_BYTES` bounds them (an image that keeps more tables open at once,
all of them ahead of their data, is refused rather than allowed to eat the pod's memory).
"""

from __future__ import annotations

import heapq
import sys
from array import array
from dataclasses import dataclass

from ..errors import InvalidImage

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2_COMPRESSED = 1 << 62
L2_ZERO = 1 << 0
SECTOR = 512

MAX_LIVE_TABLE_BYTES = 64 * 1024 * 1024
"""L2 tables held at once (entries and their host order). With 64 KiB clusters this covers
4 TiB of guest space whose tables all come before their data."""


def be_u64(data: bytes) -> "array[int]":
    """Big-endian 64-bit words as a packed array (8 bytes each, not a tuple of ints)."""
    words = array("Q", data[:len(data) // 8 * 8])
    if sys.byteorder == "little":
        words.byteswap()
    return words


def _sorted_by(keys: "array[int]", members: "array[int]") -> "array[int]":
    """``members`` ordered by ``keys[member]`` (stable); no copy when already in order."""
    if all(keys[a] <= keys[b] for a, b in zip(members, members[1:])):
        return members
    return array("I", sorted(members, key=keys.__getitem__))


_INDEX_BITS = 22
"""L1 indexes fit in 22 bits: qemu's 32 MiB L1 limit is 4 Mi entries."""
_MAX_TABLE_OFFSET = 1 << 51
"""L2 tables past 2 PiB lie beyond any file; below it, offset >> 9 and the index pack into
one 64-bit word."""
_SORT_SLICE = 65536


class L2Index:
    """The allocated L1 entries sorted by the L2 table they point at, as packed words
    ``(offset >> 9) << 22 | index``. They are sorted in slices of 64 Ki entries and merged
    lazily, so even a 4 Mi-entry L1 never becomes millions of Python objects at once."""

    def __init__(self, l1: bytes, cluster_size: int) -> None:
        self.slices: list["array[int]"] = []
        count = 0
        for first in range(0, len(l1) // 8, _SORT_SLICE):
            words = _packed(be_u64(l1[first * 8:(first + _SORT_SLICE) * 8]), first,
                            cluster_size)
            count += len(words)
            if words:
                self.slices.append(words)
        self.heap = [(words[0], n, 0) for n, words in enumerate(self.slices)]
        heapq.heapify(self.heap)
        self.unique = _distinct_offsets(self.slices) if count else 0
        self.loaded = 0

    @property
    def pending(self) -> int:
        """Tables not loaded yet (distinct offsets)."""
        return self.unique - self.loaded

    def peek(self) -> int | None:
        """Host offset of the next table to load, or None when all are loaded."""
        return (self.heap[0][0] >> _INDEX_BITS) << 9 if self.heap else None

    def peek_after(self, end: int) -> int | None:
        """The first table still to load that starts at or after ``end`` (for grouping
        nearby tables into one read; only looks at the slices' next words)."""
        found = [off for word, _, _ in self.heap if (off := (word >> _INDEX_BITS) << 9) >= end]
        return min(found) if found else None

    def take(self) -> tuple[int, "array[int]"]:
        """The next table's offset and the L1 indexes (ascending) that point at it."""
        offset = self.peek()
        assert offset is not None
        bases = array("I")
        mask = (1 << _INDEX_BITS) - 1
        while self.heap and (self.heap[0][0] >> _INDEX_BITS) << 9 == offset:
            word, n, position = heapq.heappop(self.heap)
            bases.append(word & mask)
            if position + 1 < len(self.slices[n]):
                heapq.heappush(self.heap, (self.slices[n][position + 1], n, position + 1))
        self.loaded += 1
        if any(a > b for a, b in zip(bases, bases[1:])):
            bases = array("I", sorted(bases))
        return offset, bases


def _packed(entries: "array[int]", first: int, cluster_size: int) -> "array[int]":
    """The allocated entries of one slice of L1 as sorted packed words."""
    words = array("Q")
    for index, entry in enumerate(entries, first):
        offset = entry & OFFSET_MASK
        if not offset:
            continue
        if offset % cluster_size:
            raise InvalidImage(f"qcow2 L2 table offset {offset:#x} is not aligned to a "
                               f"cluster (L1 index {index})")
        if offset >= _MAX_TABLE_OFFSET:
            raise InvalidImage(f"qcow2 L2 table offset {offset:#x} is out of range "
                               f"(L1 index {index})")
        words.append((offset >> 9) << _INDEX_BITS | index)
    if any(a > b for a, b in zip(words, words[1:])):
        words = array("Q", sorted(words))
    return words


def _distinct_offsets(slices: list["array[int]"]) -> int:
    """How many distinct tables the L1 names (a merge over the sorted slices)."""
    count, last = 0, -1
    for word in heapq.merge(*slices):
        offset = word >> _INDEX_BITS
        if offset != last:
            count, last = count + 1, offset
    return count


@dataclass(frozen=True)
class Run:
    """Host bytes [start, end) and the table-relative guest offsets that want all of them
    (more than one when the image maps the same cluster several times)."""

    start: int
    end: int
    compressed: bool
    guests: "array[int]"
    """Guest offsets relative to the table's first byte; add ``base * l2_span``."""


class L2Table:
    """One loaded L2 table and a cursor over its allocated entries in host order."""

    def __init__(self, table: bytes, count: int, cluster_bits: int, bases: "array[int]") -> None:
        self.cs = 1 << cluster_bits
        self.entries = be_u64(table[:count * 8])
        self.bases = bases
        bits = cluster_bits - 8
        self.c_shift = 62 - bits
        self.c_offset_mask = (1 << self.c_shift) - 1
        self.c_sectors_mask = (1 << bits) - 1
        keys = array("Q", bytes(8 * len(self.entries)))
        members = array("I")
        for index, entry in enumerate(self.entries):
            key = self._host(entry, index)
            if key:
                keys[index] = key
                members.append(index)
        self.order = _sorted_by(keys, members)
        self.position = 0
        self.current = Run(0, 0, False, array("Q"))
        """The run being copied (set by the converter from :meth:`take`)."""

    @property
    def nbytes(self) -> int:
        """Memory this table holds (its entries, host order and bases)."""
        return 8 * len(self.entries) + 4 * len(self.order) + 4 * len(self.bases)

    def _host(self, entry: int, index: int) -> int:
        """Host start of an entry, 0 for a hole; validates what it can on its own."""
        if not entry:
            return 0
        if entry & L2_COMPRESSED:
            offset = entry & self.c_offset_mask
            if offset >> 56:
                raise InvalidImage(f"qcow2 compressed cluster offset {offset:#x} is out of range")
            if offset < self.cs:
                raise InvalidImage("qcow2 compressed cluster overlaps the image header")
            return offset
        offset = entry & OFFSET_MASK
        if offset % self.cs:
            raise InvalidImage(f"qcow2 cluster offset {offset:#x} is not aligned to a cluster "
                               f"(L2 entry {index})")
        if entry & L2_ZERO:
            return 0  # a zero cluster (preallocated or not) reads as zeros
        return offset

    def peek(self) -> int | None:
        """Host start of the next run, or None when the table is done."""
        if self.position >= len(self.order):
            return None
        entry = self.entries[self.order[self.position]]
        if entry & L2_COMPRESSED:
            return entry & self.c_offset_mask
        return entry & OFFSET_MASK

    def take(self) -> Run:
        """The next run: one compressed cluster, or standard clusters contiguous in host and
        guest space alike; entries mapping the very same bytes join it as extra guests."""
        index = self.order[self.position]
        entry = self.entries[index]
        self.position += 1
        guests = array("Q", [index * self.cs])
        if entry & L2_COMPRESSED:
            offset = entry & self.c_offset_mask
            sectors = ((entry >> self.c_shift) & self.c_sectors_mask) + 1
            self._aliases(entry & _DESCRIPTOR, _DESCRIPTOR, guests)
            return Run(offset, offset + sectors * SECTOR - offset % SECTOR, True, guests)
        start = entry & OFFSET_MASK
        end = start + self.cs
        order, entries = self.order, self.entries
        while self.position < len(order) and order[self.position] == index + 1 \
                and entries[index + 1] & _STANDARD == end:
            index += 1
            end += self.cs
            self.position += 1
        if end - start == self.cs:
            self._aliases(start, _STANDARD, guests)
        return Run(start, end, False, guests)

    def _aliases(self, value: int, mask: int, guests: "array[int]") -> None:
        """Take the following entries (in host order) that map exactly ``value``."""
        order, entries = self.order, self.entries
        while self.position < len(order) and entries[order[self.position]] & mask == value:
            guests.append(order[self.position] * self.cs)
            self.position += 1


_STANDARD = OFFSET_MASK | L2_COMPRESSED | L2_ZERO
"""The bits that tell a standard cluster's host offset (compressed or zero ones never match)."""
_DESCRIPTOR = (1 << 63) - 1
"""A compressed entry without the copied flag: offset and sector count."""
