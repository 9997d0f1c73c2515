"""A block-mapped image to raw in one sequential pass, following a :class:`~.runs.StreamPlan`.

VMDK monolithicSparse, VDI: the plan's runs are in file order, so the stream is skipped to
each run and its bytes written at the run's disk offset as they arrive (zero blocks stay holes).

streamOptimized: the stream is a sequence of markers from the plan's ``data_start`` on
(VMware's "Virtual Disk Format 1.1", stream-optimized compressed sparse extents):

=========  ======  ==========================================================
offset     size    field
=========  ======  ==========================================================
0          8       grain marker: disk address (sectors); metadata: sectors that follow
8          4       grain marker: compressed bytes that follow; metadata marker: 0
12         4       metadata marker only: 0 end of stream, 1 grain table, 2 grain
                   directory, 3 footer (the marker fills one sector, its data follows)
=========  ======  ==========================================================

A grain marker's data is a zlib stream that must inflate to exactly one grain (or to the
part of the last grain inside the disk); it is inflated with a bound, so a small blob cannot
expand past a grain. Grains are padded to a
sector. The tables the metadata markers carry are not needed: each grain says where it goes.
A stream must end with its end-of-stream marker, except qemu-img's, which have none but keep
their tables in front: there the grains the markers brought must be exactly the ones the tables
list (a count and a digest), else the image is truncated or corrupt. A grain given twice,
outside the disk or not on a grain boundary is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

from ..errors import InvalidImage
from ..stream import CHUNK, ChunkReader
from ..target import DiskTarget
from .runs import PlacementDigest, StreamPlan
from .vmdk import SECTOR
from .writer import GuestWriter

try:
    from isal import isal_zlib as zlib  # the same API, several times faster
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps a broken wheel usable
    import zlib  # type: ignore[no-redef]

_INFLATE_ERROR = cast("type[BaseException]", zlib.error)
"""isal's stubs type its ``error`` as an instance; at run time it is the exception class."""
_MARKER = struct.Struct("<QI")
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = range(4)
_PAGE_BITS = 15
"""Grains seen are tracked in pages of 32 Ki grains (4 KiB each), made when first touched."""


@dataclass
class StreamResult:
    """What a conversion did, for logs and tests."""

    virtual_size: int
    data_bytes: int = 0
    """Guest bytes handed to the target (zero blocks among them end up as holes)."""
    grains: int = 0
    """Compressed grains inflated (streamOptimized)."""


def convert_stream(reader: ChunkReader, target: DiskTarget, plan: StreamPlan) -> StreamResult:
    """Convert the image that ``reader`` streams from its byte 0 into ``target``. The stream is
    read up to the last grain (or the end-of-stream marker); the caller drains the rest."""
    target.check_fits(plan.capacity)
    converter = _Converter(reader, target, plan)
    try:
        converter.run()
    finally:
        converter.writer.abort()
    return converter.result


class _Converter:
    """One pass over the stream: the plan's runs, or VMDK markers, to guest writes."""

    def __init__(self, reader: ChunkReader, target: DiskTarget, plan: StreamPlan) -> None:
        self.reader = reader
        self.base = reader.position
        self.plan = plan
        self.writer = GuestWriter(target)
        self.zero_gaps = target.is_block
        """A device keeps old data where nothing is written; a new file reads as zeros."""
        self.zeroed = 0
        """Guest bytes below which every byte was written or zeroed (devices)."""
        self.seen: dict[int, bytearray] = {}
        self.found = PlacementDigest()
        self.result = StreamResult(plan.capacity)

    @property
    def pos(self) -> int:
        return self.reader.position - self.base

    def run(self) -> None:
        if self.plan.markers:
            self._markers()
        else:
            self._runs()
        self._cover(self.plan.capacity, 0)
        self.writer.close()
        self.result.data_bytes = self.writer.data_bytes

    # -- runs (VMDK monolithicSparse, VDI) ----------------------------------------------------

    def _runs(self) -> None:
        plan = self.plan
        for host, guest, length in zip(plan.hosts, plan.guests, plan.lengths):
            self._skip_to(host, "data")
            self._cover(guest, length)
            while length > 0:
                piece = self.reader.read(min(CHUNK, length))
                if not piece:
                    raise self._truncated(f"the data for disk offset {guest:#x}")
                self._write(guest, piece)
                guest += len(piece)
                length -= len(piece)

    # -- markers (VMDK streamOptimized) --------------------------------------------------------

    def _markers(self) -> None:
        self._skip_to(self.plan.data_start, "first grain marker")
        while True:
            head = self.reader.read_upto(_MARKER.size)
            if not head and self.plan.expected is not None:
                break  # qemu-img ends its streams here, without a marker
            if len(head) < _MARKER.size:
                raise self._truncated("the end-of-stream marker")
            value, size = _MARKER.unpack(head)
            if size:
                self._grain(value, size)
                continue
            rest = self.reader.read_upto(SECTOR - _MARKER.size)
            if len(rest) < SECTOR - _MARKER.size:
                raise self._truncated("a metadata marker")
            (kind,) = struct.unpack_from("<I", rest)
            if kind == MARKER_EOS:
                break
            if kind not in (MARKER_GT, MARKER_GD, MARKER_FOOTER):
                raise InvalidImage(f"unknown VMDK marker type {kind} at {self.pos - SECTOR:#x}")
            self._skip(value * SECTOR, "the metadata after a marker")
        expected = self.plan.expected
        if expected is not None and expected != self.found:
            raise InvalidImage(
                f"the VMDK's grain markers ({self.found.count} grains) do not match its grain "
                f"tables ({expected.count} grains): truncated (an incomplete download?) or "
                "corrupt")

    def _grain(self, lba: int, size: int) -> None:
        grain, at = self.plan.grain, self.pos - _MARKER.size
        if size > 2 * grain + 4096:
            raise InvalidImage(f"the VMDK grain marker at {at:#x} claims {size} compressed "
                               f"bytes, more than a grain of {grain} bytes can take")
        guest = lba * SECTOR
        if guest % grain or guest >= self.plan.capacity:
            raise InvalidImage(f"the VMDK grain marker at {at:#x} names disk offset {guest:#x}, "
                               f"{'not on a grain boundary' if guest % grain else 'past the end of the disk'}")
        self._mark(guest // grain, at)
        self.found.add(guest // grain, at // SECTOR)
        data = self.reader.read_upto(size)
        if len(data) < size:
            raise self._truncated(f"the compressed grain at {at:#x}")
        self._skip(-(_MARKER.size + size) % SECTOR, "the padding of a grain")
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, grain)
        except _INFLATE_ERROR as error:
            raise _bad_grain(guest, str(error)) from error
        # qemu compresses only the part of the last grain inside the disk; VMware all of it
        if len(out) not in (grain, min(grain, self.plan.capacity - guest)) or \
                inflater.unconsumed_tail or not inflater.eof:
            raise _bad_grain(guest, "it does not inflate to exactly one grain")
        self.result.grains += 1
        self._cover(guest, grain)
        self._write(guest, out)

    def _mark(self, index: int, at: int) -> None:
        """Refuse a grain given twice (it would silently replace the first)."""
        page = self.seen.setdefault(index >> _PAGE_BITS, bytearray(1 << (_PAGE_BITS - 3)))
        bit = index & ((1 << _PAGE_BITS) - 1)
        if page[bit >> 3] & (1 << (bit & 7)):
            raise InvalidImage(f"the VMDK grain marker at {at:#x} repeats the grain for disk "
                               f"offset {index * self.plan.grain:#x}")
        page[bit >> 3] |= 1 << (bit & 7)

    # -- bytes -----------------------------------------------------------------------------

    def _write(self, guest: int, data: bytes) -> None:
        end = self.plan.capacity
        if guest >= end:
            return
        if guest + len(data) > end:
            data = data[:end - guest]
        self.writer.write(guest, data)

    def _cover(self, guest: int, length: int) -> None:
        """On a device, zero what lies between the last grain and this one."""
        if self.zero_gaps and guest > self.zeroed:
            self.writer.zero(self.zeroed, guest - self.zeroed)
        self.zeroed = max(self.zeroed, min(guest + length, self.plan.capacity))

    def _skip_to(self, offset: int, what: str) -> None:
        if offset < self.pos:
            raise InvalidImage(f"the {self.plan.name} {what} at {offset:#x} lies behind data "
                               "already read")
        self._skip(offset - self.pos, f"the {what} at {offset:#x}")

    def _skip(self, length: int, what: str) -> None:
        if self.reader.skip(length) < length:
            raise self._truncated(what)

    def _truncated(self, what: str) -> InvalidImage:
        return InvalidImage(f"image is truncated: the {self.plan.name} stream ended before "
                            f"{what} (an incomplete download?)")


def _bad_grain(guest: int, why: str) -> InvalidImage:
    return InvalidImage(f"the VMDK compressed grain for disk offset {guest:#x} is corrupt: {why}")
