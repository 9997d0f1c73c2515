"""Decide whether a VHDX can be converted in one sequential pass, and how.

A VHDX (:mod:`.vhdx` has the layout) keeps its headers in the first MiB, then its log,
block allocation table (BAT) and metadata regions, then the payload blocks (1 to 256 MiB;
qemu-img picks by disk size, 16 MiB for 2 GiB), each whole in the file wherever its BAT entry
says. qemu-img and Hyper-V put the regions first, so the BAT is read first, by range or from
the stream's first bytes, and folded into runs (:mod:`.runs`); the file is then read once.
Dynamic and fixed VHDX differ only in which blocks the BAT maps.

:func:`plan_vhdx` answers ``None`` (the caller keeps ``qemu-img``) for what it does not take:

* a header whose log GUID and length say a log may need replaying: qemu-img replays one only
  when it may write the file and refuses it read-only (as our import opens it), so the qemu
  route gives qemu's own verdict: it converts a log without valid entries and refuses a
  dirty one with a classified error;
* blocks between the regions, a BAT beyond what a stream may look ahead, more runs than the
  cap, more than :data:`MAX_SORTED` blocks out of disk order.

Blocks out of disk order (Hyper-V allocates them as the guest writes) are sorted by file
offset first, within that bound; the target is written out of order, the stream still once.

A block over the header section, log, BAT or metadata, over another block or past the end
of the file, a partially present block (differencing disks only) or a state the format does
not define is refused with a classified error, as is everything :func:`~.vhdx.parse_layout`
refuses.
"""

from __future__ import annotations

from array import array

from ..errors import InvalidImage
from . import runs
from .runs import RunFolder, StreamPlan
from .tables import ReadAt, require_within
from .vhdx import FULLY_PRESENT, PARTIALLY_PRESENT, Layout, allocated, parse_layout

MAX_SORTED = 256 * 1024
"""Present blocks a VHDX out of disk order may have and still take the single pass: sorting
their keys costs about 40 bytes each for a moment (10 MiB). 8 TiB of 32 MiB blocks; larger
ones keep qemu-img."""
INDEX_BITS = 27
"""Bits of a sort key for the block index (64 TiB / 1 MiB blocks = 2^26 blocks)."""
INDEX_MASK = (1 << INDEX_BITS) - 1
METADATA = "the headers, log, block table or metadata"


def plan_vhdx(read_at: ReadAt, size: int | None,
              lookahead: int | None = None) -> StreamPlan | None:
    """The single-pass plan for the VHDX that ``read_at`` reads, or ``None`` when it needs
    ``qemu-img``; ``size`` and ``lookahead`` as for :func:`~.vmdk_plan.plan_vmdk`."""
    return runs.plan_or_none(_plan, read_at, size, lookahead)


def _plan(read_at: ReadAt, size: int | None, lookahead: int) -> StreamPlan | None:
    layout = parse_layout(read_at)
    if layout.log_active:
        return None
    data_start = max(end for _, end, _ in layout.structures)
    table_end = layout.bat + layout.entries * 8
    if size is not None:
        require_within(table_end, size, "block table")
    elif table_end > lookahead:
        return None
    plan = StreamPlan("VHDX", False, layout.virtual, layout.block, data_start)
    if not _fold(plan, read_at, layout):
        return None
    if size is not None and plan.hosts:
        require_within(plan.hosts[-1] + plan.lengths[-1], size, "last data block")
    return plan


def _fold(plan: StreamPlan, read_at: ReadAt, layout: Layout) -> bool:
    """Fold the present blocks into runs, in disk order when the file has them so (no memory
    beyond the runs); else sorted by file offset. False for blocks between the regions or
    more runs than the cap."""
    folder = RunFolder(plan, "VHDX block", METADATA)
    for index, entry in allocated(read_at, layout):
        host = _host(layout, plan, index, entry)
        if host is None:
            return False
        if not folder.add(host, index * layout.block):
            if len(plan.hosts) == runs.MAX_RUNS:
                return False
            return _fold_sorted(plan, read_at, layout)
    return True


def _fold_sorted(plan: StreamPlan, read_at: ReadAt, layout: Layout) -> bool:
    """Blocks out of disk order (Hyper-V allocates them as the guest writes): one key per
    present block (file MiB, block index), sorted, then folded in file order. The stream is
    still read once; the writes land where they belong."""
    plan.hosts, plan.guests, plan.lengths = array("Q"), array("Q"), array("Q")
    keys = array("Q")
    for index, entry in allocated(read_at, layout):
        host = _host(layout, plan, index, entry)
        if host is None or len(keys) == MAX_SORTED:
            return False
        if host >> 20 >= 1 << (64 - INDEX_BITS):
            raise InvalidImage(f"the VHDX block for disk offset {index * layout.block:#x} lies "
                               f"at {host:#x}, beyond any file")
        keys.append(host >> 20 << INDEX_BITS | index)
    folder = RunFolder(plan, "VHDX block", METADATA)
    for key in sorted(keys):
        if not folder.add(key >> INDEX_BITS << 20, (key & INDEX_MASK) * layout.block):
            return False
    return True


def _host(layout: Layout, plan: StreamPlan, index: int, entry: int) -> int | None:
    """The file offset of a present block; None for one in a gap between the regions
    (valid, but not for one pass)."""
    state, host = entry & 7, entry >> 20 << 20
    if state != FULLY_PRESENT:
        raise _bad_state(state, index * layout.block)
    if host < plan.data_start and _between_regions(layout, host, index * layout.block):
        return None
    return host


def _between_regions(layout: Layout, host: int, guest: int) -> bool:
    """A block before the end of the last region: True if it lies in a gap between them
    (valid, but not for one pass); InvalidImage if it overlaps one."""
    for start, end, name in layout.structures:
        if host < end and host + layout.block > start:
            raise InvalidImage(f"the VHDX block for disk offset {guest:#x} at {host:#x} "
                               f"overlaps the {name}")
    return True


def _bad_state(state: int, guest: int) -> InvalidImage:
    if state == PARTIALLY_PRESENT:
        return InvalidImage(f"the VHDX block for disk offset {guest:#x} is partially present, "
                            "which only a differencing disk may be; refusing")
    return InvalidImage(f"the VHDX block for disk offset {guest:#x} has state {state}, which "
                        "the format does not define")
