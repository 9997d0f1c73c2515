"""What the single-pass readers of block-mapped images share (VMDK, VDI).

Such an image keeps its block map (VMDK grain tables, the VDI block map) in front of the data.
The map is read first, by range or from what a stream holds ahead (:func:`lookahead_read_at`),
and folded into a :class:`StreamPlan`: *runs* of blocks contiguous in the file and on the disk,
in packed arrays, in file order. A disk written front to back is a handful of runs however
large it is; :data:`MAX_RUNS` bounds the rest. Then the file is read once, in order
(:mod:`.vmdk_stream`), and each run written at its disk offset.

A block behind the previous one in the file is either hostile (inside the header or the map,
or over the previous block: refused) or just out of order (a disk written at random): the plan
is abandoned and the caller keeps the ``qemu-img`` route, so nothing that converted before
stops converting.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Callable

from ..errors import InvalidImage
from .tables import ReadAt

MAX_RUNS = 512 * 1024
"""Runs held at once (24 bytes each: 12 MiB). A disk whose data is fragmented into more
pieces than this goes to ``qemu-img``."""
LOOKAHEAD = 8 * 1024 * 1024
"""Bytes of a stream (no random access) held to read an image's map: covers 128 GiB VMDKs
with 64 KiB grains, 2 PiB VDIs. Larger ones go through the scratch route."""


class Unstreamable(Exception):
    """The layout is valid but not one the single pass handles (the caller falls back)."""


class PlacementDigest:
    """Which block sits where, folded into a count and a 64-bit sum, so what a stream brings
    can be checked against a map in constant memory."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, index: int, place: int) -> None:
        """Block ``index`` of the disk is stored at ``place`` in the file."""
        self.count += 1
        self.total = (self.total + hash((index, place))) & 0xFFFF_FFFF_FFFF_FFFF

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementDigest) and \
            (self.count, self.total) == (other.count, other.total)

    __hash__ = None  # type: ignore[assignment]


@dataclass
class StreamPlan:
    """How to convert one image in a single pass."""

    name: str
    """The format, for messages (``VMDK``, ``VDI``)."""
    markers: bool
    """VMDK streamOptimized: the data is a sequence of markers, not runs."""
    capacity: int
    """Disk size in bytes."""
    grain: int
    """Block (grain) size in bytes."""
    data_start: int
    """Host offset of the first byte that may hold data (a block or a marker)."""
    hosts: "array[int]" = field(default_factory=lambda: array("Q"))
    """Host offset of each run, ascending."""
    guests: "array[int]" = field(default_factory=lambda: array("Q"))
    """Disk offset of each run."""
    lengths: "array[int]" = field(default_factory=lambda: array("Q"))
    """Bytes in each run (whole blocks)."""
    expected: PlacementDigest | None = None
    """Markers with the tables in front: what the markers must add up to. None: the stream
    must end with its end-of-stream marker."""


class RunFolder:
    """Folds blocks, given in disk order, into a plan's runs, checking each against the last
    one in the file."""

    def __init__(self, plan: StreamPlan, what: str, metadata: str) -> None:
        self.plan = plan
        self.what = what
        """What a block is called in messages (``VMDK grain``)."""
        self.metadata = metadata
        """What lies before ``data_start``, for messages."""
        self.end = plan.data_start
        """End of the last block in the file; the next must start at or after it."""
        self.last_start = -1

    def add(self, host: int, guest: int) -> bool:
        """Take the block at file offset ``host`` for disk offset ``guest``; False when it
        lies behind the last one without touching it (out of order) or the runs are full."""
        plan, grain = self.plan, self.plan.grain
        hosts, guests, lengths = plan.hosts, plan.guests, plan.lengths
        if host < self.end:
            self._refuse(host, guest)
            return False
        if hosts and host == self.end and guests[-1] + lengths[-1] == guest:
            lengths[-1] += grain
        else:
            if len(hosts) == MAX_RUNS:
                return False
            hosts.append(host)
            guests.append(guest)
            lengths.append(grain)
        self.last_start, self.end = host, host + grain
        return True

    def _refuse(self, host: int, guest: int) -> None:
        """A block behind the last one: inside the metadata or over the last block is
        hostile; anywhere else it is only out of order (qemu-img converts those)."""
        if host < self.plan.data_start:
            raise InvalidImage(f"the {self.what} for disk offset {guest:#x} at {host:#x} "
                               f"overlaps {self.metadata}")
        if host + self.plan.grain > self.last_start:
            raise InvalidImage(f"the {self.what} for disk offset {guest:#x} at {host:#x} "
                               "overlaps another one (the same data mapped twice)")


def lookahead_read_at(peek: "Callable[[int], bytes]", limit: int | None = None) -> ReadAt:
    """A ``read_at`` over the first ``limit`` bytes of a stream, read with ``peek`` (which
    buffers them without consuming them, so a fallback still sees the whole stream)."""
    bound = LOOKAHEAD if limit is None else limit

    def read_at(offset: int, length: int) -> bytes:
        end = offset + length
        if end > bound:
            raise Unstreamable(f"bytes up to {end} are beyond the {bound} a stream looks ahead")
        return peek(end)[offset:end]
    return read_at


Planner = Callable[[ReadAt, int | None, int], StreamPlan | None]
"""A format's planner: (read_at, file size or None for a stream, look-ahead bytes)."""


def plan_or_none(plan: Planner, read_at: ReadAt, size: int | None,
                 lookahead: int | None) -> StreamPlan | None:
    """``plan``'s answer, or ``None`` (qemu-img converts the image) where it raised
    :class:`Unstreamable`; ``lookahead`` defaults to :data:`LOOKAHEAD`, read at call time."""
    try:
        return plan(read_at, size, LOOKAHEAD if lookahead is None else lookahead)
    except Unstreamable:
        return None
