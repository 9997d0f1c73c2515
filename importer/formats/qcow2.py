"""qcow2 to raw in one sequential pass, with no scratch copy of the image.

CDI downloads a qcow2 to a scratch volume and then runs ``qemu-img convert``. Here the image is
read once, in host (file) order, from whatever stream carries it, and every data cluster is
written straight to its guest offset in the target:

* With random access (``read_at``), the L1 and L2 tables are fetched up front with small reads,
  so the mapping of every host byte is known before the stream starts and nothing is spilled.
* Without it, the tables are learnt as they pass: ``qemu-img convert`` puts the L1 table near the
  front and each L2 table before the clusters it maps, so normally every data byte arrives after
  its mapping. Bytes that arrive while some table is still unread (images that were resized,
  snapshotted and rewritten) are kept in a sparse spill file at their host offsets and placed
  once their table shows up.

The format reference is QEMU's ``docs/interop/qcow2.txt``; every field used here was checked
against it and against images made by ``qemu-img``.
"""

from __future__ import annotations

import errno
import heapq
import os
import struct
import tempfile
import zlib
from bisect import bisect_right
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator

from ..errors import (ImageTooLarge, InvalidImage, PermanentError, ScratchSpaceRequired,
                      UnsafeImage)
from ..stream import CHUNK, ChunkReader
from ..target import DiskTarget, data_runs, is_zero
from .qcow2_map import MAX_LIVE_TABLE_BYTES, L2Index, L2Table
from .writer import GuestWriter

ReadAt = Callable[[int, int], bytes]

MAGIC = b"QFI\xfb"
HEADER_PROBE_BYTES = 4096
"""Leading bytes that :func:`parse_header` wants: the header and its extensions. The format
allows extensions anywhere in the first cluster; :func:`convert_qcow2` passes the whole first
cluster, and ``qemu-img`` keeps them well inside the first 4 KiB."""

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # qemu's implementation limit (2 MiB clusters)
MAX_L1_BYTES = 32 * 1024 * 1024
"""qemu refuses active L1 tables larger than 32 MiB (4 Mi entries); so do we, which also bounds
the memory one table can cost."""
MAX_REFCOUNT_ORDER = 6
MAX_REFTABLE_BYTES = 8 * 1024 * 1024  # qemu's limit on the refcount table
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

# Incompatible feature bits (header bytes 72-79).
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
_KNOWN_INCOMPAT = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                   | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
_INCOMPAT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type",
                   4: "extended L2 entries"}

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

# Header extension types.
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# L1 and L2 entries.
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
"""Bits 9-55: the host offset of an L2 table (L1 entry) or of a standard cluster (L2 entry)."""
L2_COMPRESSED = 1 << 62
L2_ZERO = 1 << 0
SECTOR = 512
"""Compressed cluster sizes are counted in 512-byte sectors whatever the cluster size."""

# Header layout (big endian), from docs/interop/qcow2.txt:
#
#   bytes    field                    notes
#   0-3      magic                    "QFI\xfb"
#   4-7      version                  2 or 3
#   8-15     backing_file_offset      0 = no backing file (else refused)
#   16-19    backing_file_size
#   20-23    cluster_bits             9..21 here (qemu's limit is 2 MiB clusters)
#   24-31    size                     virtual disk size in bytes
#   32-35    crypt_method             0 none, 1 AES, 2 LUKS (anything but 0 refused)
#   36-39    l1_size                  entries in the active L1 table
#   40-47    l1_table_offset          cluster aligned
#   48-55    refcount_table_offset    cluster aligned (not needed for reading)
#   56-59    refcount_table_clusters
#   60-63    nb_snapshots             internal snapshots: only the active L1 is read
#   64-71    snapshots_offset
#   --- version 3 only ---
#   72-79    incompatible_features    bit 0 dirty, 1 corrupt, 2 data file, 3 compression type,
#                                     4 extended L2; unknown bits must make us fail
#   80-87    compatible_features
#   88-95    autoclear_features
#   96-99    refcount_order           <= 6 (v2: always 4)
#   100-103  header_length            >= 104, multiple of 8 (v2: always 72)
#   104      compression_type         0 zlib, 1 zstd; present only if header_length > 104
#   then     header extensions        (type u32, length u32, data padded to 8) until type 0
_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_HEADER_V3 = struct.Struct(">QQQII")
_EXTENSION = struct.Struct(">II")
_FEATURE_ENTRY = 48


@dataclass(frozen=True)
class Qcow2Header:
    """The fields of a qcow2 header that matter for reading, already validated."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    cluster_size: int
    virtual_size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    refcount_order: int
    header_length: int
    compression_type: int
    extensions: tuple[int, ...] = ()
    """Types of the header extensions present, in file order."""
    feature_names: tuple[tuple[int, int, str], ...] = ()
    """(feature type, bit, name) from the feature name table, used for error messages."""

    @property
    def l2_entries(self) -> int:
        """Entries in one L2 table (one cluster of 8-byte entries)."""
        return self.cluster_size // 8

    @property
    def l2_span(self) -> int:
        """Guest bytes mapped by one L2 table."""
        return self.cluster_size * self.l2_entries

    @property
    def l1_needed(self) -> int:
        """L1 entries that cover the virtual size; entries past these map nothing we read."""
        return -(-self.virtual_size // self.l2_span)

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DIRTY)


@dataclass
class Qcow2Result:
    """What a conversion did, for logs, progress and tests."""

    virtual_size: int
    data_bytes: int = 0
    """Guest bytes handed to the target (zero blocks among them end up as holes)."""
    spilled_bytes: int = 0
    """Image bytes that had to be kept in the spill file before their table arrived."""
    compressed_clusters: int = 0


# -- header ------------------------------------------------------------------------------


def parse_header(data: bytes) -> Qcow2Header:
    """Parse and validate the header at the start of ``data`` (the first bytes of the file).

    Raises InvalidImage for anything corrupt or unsupported and UnsafeImage for features that
    would make us read other files or need secrets (backing file, data file, encryption).
    """
    if len(data) < _HEADER_V2.size or data[:4] != MAGIC:
        if data[:4] == MAGIC:
            raise InvalidImage("image is truncated: the qcow2 header is incomplete")
        raise InvalidImage("not a qcow2 image (bad magic)")
    (_, version, backing_offset, backing_size, cluster_bits, size, crypt_method, l1_size,
     l1_offset, refcount_offset, refcount_clusters, nb_snapshots,
     snapshots_offset) = _HEADER_V2.unpack_from(data)
    if version not in (2, 3):
        raise InvalidImage(f"unsupported qcow2 version {version} (only 2 and 3 exist)")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise InvalidImage(f"unsupported qcow2 cluster size: cluster_bits {cluster_bits} "
                           f"is outside {MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
    cluster_size = 1 << cluster_bits
    incompatible = compatible = autoclear = 0
    refcount_order, header_length, compression_type = 4, _HEADER_V2.size, COMPRESSION_ZLIB
    if version == 3:
        if len(data) < _HEADER_V2.size + _HEADER_V3.size:
            raise InvalidImage("image is truncated: the qcow2 header is incomplete")
        (incompatible, compatible, autoclear, refcount_order,
         header_length) = _HEADER_V3.unpack_from(data, _HEADER_V2.size)
        if header_length < 104 or header_length % 8 or header_length > cluster_size:
            raise InvalidImage(f"invalid qcow2 header length {header_length}")
        if len(data) < header_length:
            raise InvalidImage("image is truncated: the qcow2 header is incomplete")
        if header_length > 104:
            compression_type = data[104]
    # Refuse what would make us read another file or need a secret before anything else.
    if backing_offset:
        raise UnsafeImage("the qcow2 image has a backing file, which is not allowed: "
                          "convert it to a standalone image (qemu-img convert) first")
    if incompatible & INCOMPAT_DATA_FILE:
        raise UnsafeImage("the qcow2 image keeps its data in an external data file, "
                          "which is not allowed")
    if crypt_method:
        method = {1: "AES", 2: "LUKS"}.get(crypt_method, str(crypt_method))
        raise UnsafeImage(f"the qcow2 image is encrypted ({method}), which is not supported")
    extensions, names = _parse_extensions(data, header_length, cluster_size)
    if EXT_DATA_FILE in extensions:
        raise UnsafeImage("the qcow2 image names an external data file, which is not allowed")
    if EXT_CRYPTO in extensions:
        raise UnsafeImage("the qcow2 image carries an encryption header, "
                          "which is not supported")
    _check_features(incompatible, names)
    if refcount_order > MAX_REFCOUNT_ORDER:
        raise InvalidImage(f"invalid qcow2 refcount order {refcount_order}")
    if compression_type not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
        raise InvalidImage(f"unknown qcow2 compression type {compression_type}")
    if bool(incompatible & INCOMPAT_COMPRESSION) != (compression_type != COMPRESSION_ZLIB):
        raise InvalidImage("qcow2 compression type field and feature bit disagree")
    header = Qcow2Header(
        version=version, backing_file_offset=backing_offset, backing_file_size=backing_size,
        cluster_bits=cluster_bits, cluster_size=cluster_size, virtual_size=size,
        crypt_method=crypt_method, l1_size=l1_size, l1_table_offset=l1_offset,
        refcount_table_offset=refcount_offset, refcount_table_clusters=refcount_clusters,
        nb_snapshots=nb_snapshots, snapshots_offset=snapshots_offset,
        incompatible_features=incompatible, compatible_features=compatible,
        autoclear_features=autoclear, refcount_order=refcount_order,
        header_length=header_length, compression_type=compression_type,
        extensions=extensions, feature_names=names)
    _check_tables(header)
    _check_l1(header)
    return header


def _parse_extensions(data: bytes, start: int, cluster_size: int,
                      ) -> tuple[tuple[int, ...], tuple[tuple[int, int, str], ...]]:
    """Walk the header extensions, which must end inside the first cluster."""
    limit = min(len(data), cluster_size)
    types: list[int] = []
    names: list[tuple[int, int, str]] = []
    offset = start
    while True:
        if offset + _EXTENSION.size > limit:
            raise _extension_overrun(limit, cluster_size)
        kind, length = _EXTENSION.unpack_from(data, offset)
        offset += _EXTENSION.size
        if kind == EXT_END:
            return tuple(types), tuple(names)
        if offset + length > limit:
            raise _extension_overrun(limit, cluster_size)
        if kind == EXT_FEATURE_TABLE:
            names.extend(_feature_names(data[offset:offset + length]))
        types.append(kind)
        offset += (length + 7) & ~7


def _extension_overrun(limit: int, cluster_size: int) -> InvalidImage:
    if limit < cluster_size:
        return InvalidImage(f"image is truncated: the qcow2 header extensions run past the "
                            f"{limit} bytes available")
    return InvalidImage("qcow2 header extensions run past the first cluster")


def _feature_names(table: bytes) -> Iterator[tuple[int, int, str]]:
    for at in range(0, len(table) - _FEATURE_ENTRY + 1, _FEATURE_ENTRY):
        name = table[at + 2:at + _FEATURE_ENTRY].split(b"\0", 1)[0]
        yield table[at], table[at + 1], name.decode("utf-8", "replace")


def _check_features(incompatible: int, names: tuple[tuple[int, int, str], ...]) -> None:
    """Fail on unknown incompatible features, on the corrupt bit and on extended L2."""
    unknown = incompatible & ~_KNOWN_INCOMPAT
    if unknown:
        table = {bit: name for kind, bit, name in names if kind == 0}
        listed = ", ".join(table.get(bit, f"bit {bit}") for bit in range(64) if unknown >> bit & 1)
        raise InvalidImage(f"the qcow2 image uses unsupported incompatible features: {listed}")
    if incompatible & INCOMPAT_CORRUPT:
        raise InvalidImage("the qcow2 image is marked corrupt; repair it with "
                           "'qemu-img check -r all' first")
    if incompatible & INCOMPAT_EXTL2:
        raise InvalidImage("qcow2 images with extended L2 entries (subclusters) "
                           "are not supported")


def _check_tables(h: Qcow2Header) -> None:
    """Header facts qemu checks on open. Reading needs neither table, but an image that
    breaks these is corrupt, and refusing it keeps us in step with qemu-img."""
    if h.autoclear_features & AUTOCLEAR_DATA_FILE_RAW:
        raise UnsafeImage("the qcow2 image is marked as having a raw external data file, "
                          "which is not allowed")
    if not h.refcount_table_clusters:
        raise InvalidImage("the qcow2 image does not contain a reference count table")
    if h.refcount_table_clusters * h.cluster_size > MAX_REFTABLE_BYTES:
        raise InvalidImage(f"qcow2 reference count table too large: "
                           f"{h.refcount_table_clusters} clusters")
    for what, offset in (("reference count table", h.refcount_table_offset),
                         ("snapshot table", h.snapshots_offset if h.nb_snapshots else 0)):
        if offset % h.cluster_size or offset > OFFSET_MASK:
            raise InvalidImage(f"qcow2 {what} offset {offset:#x} is invalid")


def _check_l1(h: Qcow2Header) -> None:
    """The active L1 table must be sane before we read it: bounded, large enough for the
    virtual size, cluster aligned and clear of the header."""
    if h.l1_size > MAX_L1_BYTES // 8:
        raise InvalidImage(f"L1 size too big: {h.l1_size} entries (at most "
                           f"{MAX_L1_BYTES // 8} are allowed)")
    needed = h.l1_needed
    if needed > h.l1_size:
        raise InvalidImage(f"qcow2 L1 table is too small: {h.l1_size} entries for a virtual "
                           f"size of {h.virtual_size} bytes, which needs {needed}")
    if not needed:
        return
    if h.l1_table_offset % h.cluster_size:
        raise InvalidImage(f"qcow2 L1 table offset {h.l1_table_offset:#x} is not aligned "
                           "to a cluster")
    if h.l1_table_offset < h.cluster_size:
        raise InvalidImage("qcow2 L1 table overlaps the image header")
    if h.l1_table_offset + h.l1_size * 8 > OFFSET_MASK:
        raise InvalidImage(f"qcow2 L1 table offset {h.l1_table_offset:#x} is out of range")


# -- conversion --------------------------------------------------------------------------


def _check_file_can_hold(target: DiskTarget, size: int) -> None:
    """A file target must be able to grow to the virtual size (ext4 stops at 16 TiB): try
    it on the still empty work file before any byte moves."""
    if target.is_block:
        return
    try:
        os.ftruncate(target.fd, size)
        os.ftruncate(target.fd, 0)
    except (OSError, OverflowError) as error:
        raise PermanentError(
            f"the qcow2 image's virtual size of {size} bytes is larger than the target "
            f"filesystem can hold in one file ({error}): DataVolume too small to contain image",
            reason="TooSmall") from error


@dataclass(frozen=True)
class _SpillPlan:
    directory: Path | None
    limit: int | None
    """Most bytes (not counting zero blocks) the spill file may take; None: free space only."""


def spill_limit(capacity: int | None) -> int | None:
    """What a spill may hold for a target of ``capacity`` bytes: the guest data it stands for
    plus room for metadata (L2 tables and refcounts are at most 1/32 of a disk)."""
    return None if capacity is None else capacity + capacity // 32 + 4 * 1024 * 1024


def convert_qcow2(reader: ChunkReader, target: DiskTarget, *, read_at: ReadAt | None = None,
                  spill_dir: Path | None = None) -> Qcow2Result:
    """Convert the qcow2 image that ``reader`` streams (from its byte 0) into ``target``.

    The stream is read once, in order, to its very end (the caller hashes and counts it).
    ``read_at(offset, length)`` is optional random access to the same file, used only for
    the tables and for the rare byte range needed again; without it, bytes that arrive before
    their mapping is known go to a spill file in ``spill_dir``, bounded by the target's
    capacity (:func:`spill_limit`) and the free space there.
    """
    probe = reader.peek(HEADER_PROBE_BYTES)
    if len(probe) >= _HEADER_V2.size and probe[:4] == MAGIC:
        cluster_bits = struct.unpack_from(">I", probe, 20)[0]
        if MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS and \
                (1 << cluster_bits) > len(probe):
            probe = reader.peek(1 << cluster_bits)
    header = parse_header(probe)
    target.check_fits(header.virtual_size)
    _check_file_can_hold(target, header.virtual_size)
    if target.is_block:  # clusters the image leaves unallocated must not show a device's old data
        target.zero_range(0, header.virtual_size)
    plan = _SpillPlan(spill_dir, spill_limit(target.capacity))
    converter = _Converter(header, reader, target, read_at, plan)
    try:
        return converter.run()
    finally:
        converter.close()


# Events: (host start, host end, kind, arg, table), processed in host order from a heap that
# holds one event per source: the L1 table, the next L2 table to load, and the next run of
# every loaded L2 table. Its size is the number of tables in use, not of clusters.
_L1, _L2, _DATA, _COMPRESSED = range(4)
_WHAT = ("L1 table", "L2 table", "data cluster", "compressed cluster")
Event = tuple[int, int, int, int, int]
_GROUP_GAP = 16384
_GROUP_LIMIT = 8 * 1024 * 1024


class _Converter:
    """One conversion: walks the stream in host order and dispatches each mapped byte range.

    An event that starts behind the stream position (its table came late, compressed
    clusters sharing a sector, clusters mapped more than once) takes the bytes already passed
    from the last piece read, the spill file or ``read_at``. Data for an L2 table that several
    L1 entries share is read once and written at each of their guest offsets.
    """

    def __init__(self, header: Qcow2Header, reader: ChunkReader, target: DiskTarget,
                 read_at: ReadAt | None, spill: "_SpillPlan") -> None:
        self.h = header
        self.cs = header.cluster_size
        self.reader = reader
        self.base = reader.position
        self.read_at = read_at
        self.spill_plan = spill
        self.spill: _Spill | None = None
        self.events: list[Event] = []
        self.index: L2Index | None = None
        self.l1_pending = False
        self.tables: dict[int, L2Table] = {}
        self.serial = 0
        self.live_bytes = 0
        self.queued_table = -1
        self.skip_zero = not target.is_block
        """A new file reads as zeros where nothing is written; a device must be written."""
        self.last_start = 0
        self.last_data = b""
        """The last piece read from the stream, for ranges that reach back into it."""
        self.result = Qcow2Result(header.virtual_size)
        self.out = GuestWriter(target)
        self.inflate = _decompressor(header)

    @property
    def pos(self) -> int:
        return self.reader.position - self.base

    @property
    def pending(self) -> int:
        """Tables announced but not read yet: while any is, passing bytes may be data."""
        return int(self.l1_pending) + (self.index.pending if self.index is not None else 0)

    def close(self) -> None:
        """Release the writer thread and the spill file, on success or failure."""
        self.out.abort()
        if self.spill is not None:
            self.spill.close()

    def run(self) -> Qcow2Result:
        needed = self.h.l1_needed
        start = self.h.l1_table_offset
        if needed and self.read_at is not None:
            self.index = L2Index(self._read_at_exact(start, needed * 8, _L1), self.cs)
            self._indexed()
        elif needed:
            self.events = [(start, start + needed * 8, _L1, 0, -1)]
            self.l1_pending = True
        self.reader.skip(self.cs)  # the header cluster: nothing maps there
        while self.events:
            self._handle(*heapq.heappop(self.events))
        self.out.close()
        self.result.data_bytes = self.out.data_bytes
        while self.reader.read(CHUNK):  # drain: the caller hashes the whole stream
            pass
        return self.result

    # -- tables ----------------------------------------------------------------------------

    def _indexed(self) -> None:
        """The L1 table is known (the bytes it came in are gone): start loading tables."""
        self._prefetch()
        self._queue_table()

    def _read_at_exact(self, offset: int, length: int, kind: int) -> bytes:
        assert self.read_at is not None
        data = self.read_at(offset, length)
        if len(data) != length:
            raise self._truncated(kind, offset)
        return data

    def _prefetch(self) -> None:
        """With random access, load tables ahead of the stream (in ranged reads of nearby
        tables) while they take less than half the budget, so their data needs no re-read."""
        index = self.index
        if self.read_at is None or index is None:
            return
        while (first := index.peek()) is not None and \
                self.live_bytes < MAX_LIVE_TABLE_BYTES // 2:
            end = first + self.cs
            while (nxt := index.peek_after(end)) is not None and \
                    nxt <= end + _GROUP_GAP and nxt + self.cs - first <= _GROUP_LIMIT:
                end = nxt + self.cs
            blob = self._read_at_exact(first, end - first, _L2)
            while (offset := index.peek()) is not None and offset < end:
                _, bases = index.take()
                self._load(blob[offset - first:offset - first + self.cs], bases)

    def _queue_table(self) -> None:
        """Put the next table to load on the heap, once."""
        offset = self.index.peek() if self.index is not None else None
        if offset is not None and offset != self.queued_table:
            self.queued_table = offset
            heapq.heappush(self.events, (offset, offset + self.cs, _L2, 0, -1))

    def _load(self, data: bytes, bases: "array[int]") -> None:
        guest = bases[0] * self.h.l2_span
        count = min(self.h.l2_entries, -(-(self.h.virtual_size - guest) // self.cs))
        table = L2Table(data, count, self.h.cluster_bits, bases)
        self.live_bytes += table.nbytes
        if self.live_bytes > MAX_LIVE_TABLE_BYTES:
            raise InvalidImage(
                f"the qcow2 image keeps more than {MAX_LIVE_TABLE_BYTES >> 20} MiB of L2 tables "
                "ahead of the data they map, more than a streaming import holds; convert it "
                "with 'qemu-img convert -O qcow2' first")
        self.serial += 1
        self.tables[self.serial] = table
        self._advance(self.serial)

    def _advance(self, key: int) -> None:
        """Queue a table's next run, or drop the table when it has none left."""
        table = self.tables[key]
        if table.peek() is None:
            del self.tables[key]
            self.live_bytes -= table.nbytes
            self._prefetch()
            self._queue_table()
            return
        run = table.current = table.take()
        kind = _COMPRESSED if run.compressed else _DATA
        heapq.heappush(self.events, (run.start, run.end, kind, 0, key))

    # -- events ----------------------------------------------------------------------------

    def _handle(self, start: int, end: int, kind: int, arg: int, key: int) -> None:
        if kind == _DATA:
            self._copy(start, end, self.tables[key])
            self._advance(key)
        elif kind == _COMPRESSED:
            self._decompress(start, end, self.tables[key])
            self._advance(key)
        elif kind == _L2:
            assert self.index is not None
            if self.index.peek() != start:
                return  # loaded ahead by _prefetch meanwhile
            data = self._fetch(start, end, kind)
            _, bases = self.index.take()
            self._load(data, bases)
            self._queue_table()
        else:
            self.index = L2Index(self._fetch(start, end, kind), self.cs)
            self.l1_pending = False
            self._indexed()

    def _place(self, table: L2Table, delta: int, piece: bytes) -> None:
        """Write ``piece``, ``delta`` bytes into the table's current run, at every guest
        offset that maps it: each of the run's guests under each L1 entry using the table."""
        if self.skip_zero and is_zero(piece):
            return
        span, size = self.h.l2_span, self.h.virtual_size
        guests = table.current.guests
        write = self.out.write
        for base in table.bases:
            for relative in guests:
                guest = base * span + relative + delta
                if guest >= size:
                    continue
                write(guest, piece if guest + len(piece) <= size else piece[:size - guest])

    def _copy(self, start: int, end: int, table: L2Table) -> None:
        """Copy a data run to the target as its pieces arrive."""
        done = start
        for offset, piece, spilled in self._pieces(start, end, _DATA):
            self._place(table, offset - start, piece)
            if spilled:
                self.result.spilled_bytes += len(piece)
            done = offset + len(piece)
        if done < end:
            # The file may end inside its last cluster (qemu reads the rest as zeros); it
            # must not end before a cluster starts.
            last_cluster = start + (end - start - 1) // self.cs * self.cs
            if done <= last_cluster:
                guest = table.bases[0] * self.h.l2_span + table.current.guests[0] + done - start
                raise InvalidImage(
                    f"image is truncated: the data cluster at {done:#x} (guest offset "
                    f"{guest:#x}) lies beyond the end of the file")

    def _decompress(self, start: int, end: int, table: L2Table) -> None:
        """Inflate one compressed cluster. Its last sector may hold the start of the next
        compressed cluster and may run past the end of the file; the stream inside stops by
        itself once a cluster is produced."""
        parts = []
        for _, piece, spilled in self._pieces(start, end, _COMPRESSED):
            parts.append(piece)
            if spilled:
                self.result.spilled_bytes += len(piece)
        data = b"".join(parts)
        if start + len(data) == self.pos:  # the next cluster may share its last sector
            self.last_start, self.last_data = start, data
        if not data:
            raise self._truncated(_COMPRESSED, start)
        if start + len(data) == self.pos < end and not self.reader.peek(1):
            # Cut by the end of the file: qemu reads zeros there. (A cluster cut short by
            # bytes we no longer have gets no padding: raw deflate has no checksum.)
            data += bytes(end - start - len(data))
        guest = table.bases[0] * self.h.l2_span + table.current.guests[0]
        self._place(table, 0, self.inflate(data, self.cs, guest))
        self.result.compressed_clusters += 1

    def _fetch(self, start: int, end: int, kind: int) -> bytes:
        """A whole table, which must be in the file."""
        data = b"".join(piece for _, piece, _ in self._pieces(start, end, kind))
        if len(data) != end - start:
            raise self._truncated(kind, start)
        if end == self.pos:
            self.last_start, self.last_data = start, data
        return data

    # -- bytes -----------------------------------------------------------------------------

    def _pieces(self, start: int, end: int, kind: int) -> Iterator[tuple[int, bytes, bool]]:
        """The bytes of [start, end) as (host offset, piece, came from the spill file);
        stops early at the end of the stream, or where a compressed cluster's bytes are
        only partly available (its deflate or zstd stream may end before that point)."""
        if start > self.pos:
            self._pass(start - self.pos)
            if start > self.pos:
                return
        if start < self.pos:
            stop = min(end, self.pos)
            complete = yield from self._behind(start, stop, kind)
            if not complete:
                return
            start = stop
        # While a table is unread, a compressed cluster it maps may start inside the last
        # sector of this one (qemu packs them): keep that sector.
        keep_from = end
        if kind == _COMPRESSED and self.pending and self.read_at is None:
            keep_from = max(start, (end - 1) // SECTOR * SECTOR)
        while start < end:
            piece = self.reader.read(min(CHUNK, end - start))
            if not piece:
                return
            if start + len(piece) > keep_from:
                cut = max(0, keep_from - start)
                self._spill().add(start + cut, piece[cut:])
            self.last_start, self.last_data = start, piece
            yield start, piece, False
            start += len(piece)

    def _pass(self, length: int) -> None:
        """Move over bytes no known event wants; keep them in the spill file while some
        table is still unread, since they may turn out to be data."""
        keep = self.pending > 0 and self.read_at is None
        while length > 0:
            start = self.pos
            piece = self.reader.read(min(CHUNK, length))
            if not piece:
                return
            if keep:
                self._spill().add(start, piece)
            self.last_start, self.last_data = start, piece
            length -= len(piece)

    def _behind(self, start: int, end: int, kind: int,
                ) -> Generator[tuple[int, bytes, bool], None, bool]:
        """Bytes the stream has already passed, from the last piece read, the spill file or
        ``read_at``. Returns False if a compressed cluster could only be given a prefix;
        anything else that is not available overlaps metadata or another cluster."""
        recent = self.last_start
        if recent + len(self.last_data) != self.pos:
            recent, self.last_data = self.pos, b""
        if start < recent:
            stop = min(end, recent)
            spill = self.spill
            have = spill.covered_until(start) if spill is not None else start
            if spill is not None and have >= stop:
                for offset, piece in spill.read(start, stop):
                    yield offset, piece, True
            elif self.read_at is not None:
                for offset in range(start, stop, CHUNK):
                    length = min(CHUNK, stop - offset)
                    data = self.read_at(offset, length)
                    if len(data) != length and kind != _COMPRESSED:
                        raise self._truncated(kind, offset)
                    yield offset, data, False
                    if len(data) != length:
                        return False
            elif kind == _COMPRESSED:
                if spill is not None:
                    for offset, piece in spill.read(start, have):
                        yield offset, piece, True
                return False
            else:
                raise self._overlap(kind, start)
            start = stop
        if start < end:
            if end > recent + len(self.last_data):
                raise self._overlap(kind, start)
            yield start, self.last_data[start - recent:end - recent], False
        return True

    @staticmethod
    def _overlap(kind: int, offset: int) -> InvalidImage:
        return InvalidImage(f"qcow2 {_WHAT[kind]} at {offset:#x} overlaps the image header, "
                            "its metadata or another cluster")

    @staticmethod
    def _truncated(kind: int, offset: int) -> InvalidImage:
        return InvalidImage(f"image is truncated: the {_WHAT[kind]} at {offset:#x} lies beyond "
                            "the end of the file")

    def _spill(self) -> "_Spill":
        if self.spill is None:
            self.spill = _Spill(self.spill_plan)
        return self.spill


class _Spill:
    """Stream bytes of unknown meaning, kept at their host offsets in an unnamed sparse file.
    Zero blocks are not written: a hole reads back as the zeros it stands for."""

    def __init__(self, plan: _SpillPlan) -> None:
        try:
            self.file = tempfile.TemporaryFile(dir=plan.directory, prefix="qcow2-spill-")
            st = os.fstatvfs(self.file.fileno())
        except OSError as error:
            raise ScratchSpaceRequired(f"cannot create the qcow2 spill file: {error}") from error
        self.fd = self.file.fileno()
        self.free = st.f_bavail * st.f_frsize
        self.limit = plan.limit
        self.used = 0
        self.starts: list[int] = []
        self.ends: list[int] = []

    def _charge(self, nbytes: int) -> None:
        """Count bytes about to be written; refuse past the plan's limit or the free space
        the spill directory had when the spill began."""
        self.used += nbytes
        if self.limit is not None and self.used > self.limit:
            raise ImageTooLarge(self.used, self.limit,
                                "qcow2 data stored ahead of its tables (spilled)")
        if self.used > self.free:
            raise ScratchSpaceRequired(
                f"the qcow2 spill needs more than the {self.free} bytes free in its directory: "
                "this image stores data before its tables; give it more scratch space")

    def add(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        for start, stop in data_runs(data, offset):
            self._charge(stop - start)
            self._pwrite(view[start:stop], offset + start)
        if self.ends and self.ends[-1] == offset:
            self.ends[-1] = offset + len(data)
        else:
            self.starts.append(offset)
            self.ends.append(offset + len(data))

    def _pwrite(self, view: memoryview, offset: int) -> None:
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ScratchSpaceRequired(
                    "no space left for the qcow2 spill file: this image stores data before "
                    "its tables; give it more scratch space") from error
            raise

    def covered_until(self, start: int) -> int:
        """End of the spilled range holding ``start`` (``start`` itself if none does)."""
        i = bisect_right(self.starts, start) - 1
        return max(start, self.ends[i]) if i >= 0 else start

    def read(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        while start < end:
            length = min(CHUNK, end - start)
            data = os.pread(self.fd, length, start)
            if len(data) < length:  # a hole at the end of the spill file
                data += bytes(length - len(data))
            yield start, data
            start += length

    def close(self) -> None:
        self.file.close()


def _decompressor(header: Qcow2Header) -> Callable[[bytes, int, int], bytes]:
    """The inflate function for the image's compression type; each returns exactly one
    cluster or raises InvalidImage."""
    if header.compression_type == COMPRESSION_ZSTD:
        import zstandard

        context = zstandard.ZstdDecompressor(max_window_size=1 << 25)

        def zstd(data: bytes, size: int, guest: int) -> bytes:
            # A bounded read: a frame may claim far more output than one cluster.
            try:
                reader = context.stream_reader(data, read_across_frames=False)
                out = reader.read(size)
                while 0 < len(out) < size:
                    more = reader.read(size - len(out))
                    if not more:
                        break
                    out += more
            except zstandard.ZstdError as error:
                raise _bad_cluster(guest, str(error)) from error
            if len(out) != size:
                raise _bad_cluster(guest, f"{len(out)} bytes instead of {size}")
            return out

        return zstd

    def deflate(data: bytes, size: int, guest: int) -> bytes:
        # Raw deflate. qemu writes 4 KiB windows (wbits -12); the format does not fix the
        # window, and a 32 KiB window decodes those streams and any larger-window ones.
        try:
            out = zlib.decompressobj(-15).decompress(data, size)
        except zlib.error as error:
            raise _bad_cluster(guest, str(error)) from error
        if len(out) != size:
            raise _bad_cluster(guest, f"{len(out)} bytes instead of {size}")
        return out

    return deflate


def _bad_cluster(guest: int, why: str) -> InvalidImage:
    return InvalidImage(f"qcow2 compressed cluster at guest offset {guest:#x} does not "
                        f"decompress: {why}")
