"""Property-based fuzzing of every binary parser the importer owns (hypothesis).

Each *target* takes a valid seed input (made once by qemu-img, zstd or tarfile), applies
hypothesis-chosen edits (byte writes biased towards headers and tables, and a cut), and runs
the parser on the result. The property: every example ends in success or a
:class:`~importer.errors.CdiImportError` (a clean, classified error), within a time limit and
a memory bound (Python allocations traced per example). The suite runs a bounded number of
examples (``tests/importer/test_fuzz.py``); ``bench/fuzz.py`` runs the same targets for long.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import struct
import subprocess
import tarfile
import tempfile
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from hypothesis import strategies as st

from importer.archive import ArchiveExtractor
from importer.errors import CdiImportError
from importer.formats.decompress import ZstdFrameWalker, decompress
from importer.formats.qcow2 import convert_qcow2
from importer.formats.tarstream import TarStream, find_member
from importer.formats.vdi import inspect_vdi
from importer.formats.vhd import inspect_vhd
from importer.formats.vhdx import inspect_vhdx
from importer.formats.vmdk import check_descriptor_text, inspect_vmdk
from importer.formats.runs import StreamPlan, lookahead_read_at
from importer.formats.tables import ReadAt
from importer.formats.vdi_plan import plan_vdi
from importer.formats.vhd_plan import plan_vhd
from importer.formats.vhdx_plan import plan_vhdx
from importer.formats.vmdk_plan import plan_vmdk
from importer.formats.vmdk_stream import convert_stream
from importer.stream import ChunkReader
from importer.target import DiskTarget, TargetSpec

MiB = 1024 * 1024
MEMORY_BOUND = 96 * MiB
"""Most Python memory one example may allocate at its peak."""
SECONDS = 20
"""Wall-clock limit of one example."""


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no parser can swallow it."""


@dataclass
class Target:
    name: str
    seed: Callable[[], bytes]
    run: Callable[[bytes, Path], None]
    regions: Callable[[bytes], list[tuple[int, int]]]
    """Byte ranges of the seed worth editing (headers, tables)."""


# -- seeds ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _work() -> Path:
    return Path(tempfile.mkdtemp(prefix="cdi-fuzz-seeds-"))


@functools.lru_cache(maxsize=None)
def _raw() -> Path:
    raw = _work() / "seed.raw"
    with open(raw, "wb") as f:
        f.truncate(3 * MiB + 1536)
        for n, offset in enumerate((0, 700_000, 2 * MiB + 7, 3 * MiB + 1000)):
            f.seek(offset)
            f.write(os.urandom(60_000) if n % 2 else bytes([n + 1]) * 60_000)
    return raw


@functools.lru_cache(maxsize=None)
def qemu_seed(fmt: str, *options: str) -> bytes:
    out = _work() / f"seed-{fmt}-{'-'.join(options) or 'plain'}.img"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *options, _raw(), out],
                   check=True)
    return out.read_bytes()


@functools.lru_cache(maxsize=None)
def zstd_seed() -> bytes:
    data = os.urandom(50_000) + bytes(200_000) + b"pattern" * 10_000
    frames = [subprocess.run(["zstd", "-q", "-c", flag], input=data, capture_output=True,
                             check=True).stdout for flag in ("-1", "--no-check")]
    return b"".join(frames)


@functools.lru_cache(maxsize=None)
def tar_seed() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("disk/", None), ("disk/a.img", b"A" * 3000), ("b/" + "n" * 120, b"B"),
                           ("disk/link", "a.img")):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- runners -------------------------------------------------------------------------------


def _read_at(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: data[offset:offset + length]


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def run_qcow2(data: bytes, work: Path) -> None:
    for random_access in (False, True):
        target = DiskTarget(TargetSpec(path=work / "out.img", size=8 * MiB))
        with target:
            convert_qcow2(ChunkReader(_chunks(data, 65_536)), target, spill_dir=work,
                          read_at=_read_at(data) if random_access else None)
        assert target.highest_written <= 8 * MiB


def run_vmdk_reader(data: bytes, work: Path) -> None:
    _run_stream_reader(data, work, plan_vmdk)


def run_vdi_reader(data: bytes, work: Path) -> None:
    _run_stream_reader(data, work, plan_vdi)


def run_vhd_reader(data: bytes, work: Path) -> None:
    _run_stream_reader(data, work, plan_vhd)


def run_vhdx_reader(data: bytes, work: Path) -> None:
    _run_stream_reader(data, work, plan_vhdx)


def _run_stream_reader(data: bytes, work: Path,
                       planner: Callable[[ReadAt, int | None], StreamPlan | None]) -> None:
    """A single-pass reader (VMDK, VDI), with the tables read by range and from a stream."""
    for random_access in (False, True):
        reader = ChunkReader(_chunks(data, 65_536))
        read_at = _read_at(data) if random_access else lookahead_read_at(reader.peek)
        plan = planner(read_at, len(data) if random_access else None)
        if plan is None:
            continue
        target = DiskTarget(TargetSpec(path=work / "out.img", size=8 * MiB))
        with target:
            convert_stream(reader, target, plan)
        assert target.highest_written <= 8 * MiB


def run_zstd(data: bytes, work: Path) -> None:
    walker = ZstdFrameWalker()
    for chunk in _chunks(data, 4099):
        walker.feed(chunk)
    walker.finish()
    for _ in decompress("zst", _chunks(data, 65_536)):
        pass


def run_tar(data: bytes, work: Path) -> None:
    TarStream(ChunkReader(_chunks(data, 777)))
    find_member(TarStream(ChunkReader(_chunks(data, 777))), "disk")
    volume = work / "volume"
    volume.mkdir(exist_ok=True)
    extractor = ArchiveExtractor(volume, 4 * MiB)
    try:
        extractor.extract(ChunkReader(_chunks(data, 1000)), "fuzz.tar")
    finally:
        extractor.abort()


def _inspector(check: Callable[[Callable[[int, int], bytes], int], None],
               ) -> Callable[[bytes, Path], None]:
    return lambda data, work: check(_read_at(data), len(data))


def run_vmdk_descriptor(data: bytes, work: Path) -> None:
    check_descriptor_text(data)


# -- regions -------------------------------------------------------------------------------


def _head(size: int) -> Callable[[bytes], list[tuple[int, int]]]:
    return lambda data: [(0, min(size, len(data)))]


def _qcow2_regions(data: bytes) -> list[tuple[int, int]]:
    cluster = 1 << struct.unpack_from(">I", data, 20)[0]
    l1_size, l1 = struct.unpack_from(">IQ", data, 36)
    regions = [(0, 112), (l1, l1 + 8 * l1_size)]
    for (entry,) in struct.iter_unpack(">Q", data[l1:l1 + 8 * l1_size]):
        offset = entry & 0x00FF_FFFF_FFFF_FE00
        if offset and offset < len(data):
            regions.append((offset, min(len(data), offset + cluster)))
    return regions


def _vhd_regions(data: bytes) -> list[tuple[int, int]]:
    (dynamic,) = struct.unpack_from(">Q", data, 16)
    (table,) = struct.unpack_from(">Q", data, dynamic + 16)
    return [(0, 512), (dynamic, dynamic + 1024), (table, table + 512), (len(data) - 512, len(data))]


def _vdi_regions(data: bytes) -> list[tuple[int, int]]:
    (blocks,) = struct.unpack_from("<I", data, 0x154)
    return [(0x40, 0x1C8), (blocks, blocks + 256)]


def _vmdk_regions(data: bytes) -> list[tuple[int, int]]:
    (gd,) = struct.unpack_from("<Q", data, 56)
    return [(0, 80), (512, 1536), (gd * 512, gd * 512 + 2048)]


def _vmdk_reader_regions(data: bytes) -> list[tuple[int, int]]:
    """The header and tables, plus the first grain or grain markers."""
    (overhead,) = struct.unpack_from("<Q", data, 64)
    (gd,) = struct.unpack_from("<Q", data, 56)
    (gt,) = struct.unpack_from("<I", data, gd * 512)
    return _vmdk_regions(data) + [(gt * 512, gt * 512 + 2048),
                                  (overhead * 512, min(len(data), overhead * 512 + 4096))]


def _vhdx_regions(data: bytes) -> list[tuple[int, int]]:
    return [(0, 16), (192 * 1024, 192 * 1024 + 256), (256 * 1024, 256 * 1024 + 256),
            (1024 * 1024, 1024 * 1024 + 512), (2 * 1024 * 1024, 2 * 1024 * 1024 + 512)]


def _vhdx_reader_regions(data: bytes) -> list[tuple[int, int]]:
    """The headers' log fields, the block table, the metadata items and the first block
    (the region table and headers are checksummed: edits there end at the checksum)."""
    first = struct.unpack_from("<Q", data, 2 * MiB)[0] >> 20 << 20
    return [(64 * 1024 + 48, 64 * 1024 + 80), (128 * 1024 + 48, 128 * 1024 + 80),
            (2 * MiB, 2 * MiB + 256), (3 * MiB, 3 * MiB + 256), (3 * MiB + 64 * 1024, 3 * MiB + 64 * 1024 + 64),
            (first, min(len(data), first + 4096))]


TARGETS = {
    "qcow2": Target("qcow2", lambda: qemu_seed("qcow2", "-o", "cluster_size=4096"), run_qcow2,
                    _qcow2_regions),
    "qcow2-zstd": Target("qcow2-zstd", lambda: qemu_seed("qcow2", "-c", "-o",
                                                         "cluster_size=512,compression_type=zstd"),
                         run_qcow2, _qcow2_regions),
    "vmdk": Target("vmdk", lambda: qemu_seed("vmdk"), _inspector(inspect_vmdk), _vmdk_regions),
    "vmdk-stream": Target("vmdk-stream", lambda: qemu_seed("vmdk", "-o", "subformat=streamOptimized"),
                          _inspector(inspect_vmdk), _vmdk_regions),
    "vmdk-reader": Target("vmdk-reader", lambda: qemu_seed("vmdk"), run_vmdk_reader,
                          _vmdk_reader_regions),
    "vmdk-stream-reader": Target("vmdk-stream-reader",
                                 lambda: qemu_seed("vmdk", "-o", "subformat=streamOptimized"),
                                 run_vmdk_reader, _vmdk_reader_regions),
    "vmdk-descriptor": Target("vmdk-descriptor", lambda: qemu_seed("vmdk")[512:1536],
                              run_vmdk_descriptor, _head(1024)),
    "vhd": Target("vhd", lambda: qemu_seed("vpc"), _inspector(inspect_vhd), _vhd_regions),
    "vhd-reader": Target("vhd-reader", lambda: qemu_seed("vpc"), run_vhd_reader, _vhd_regions),
    "vhdx": Target("vhdx", lambda: qemu_seed("vhdx"), _inspector(inspect_vhdx), _vhdx_regions),
    "vhdx-reader": Target("vhdx-reader", lambda: qemu_seed("vhdx", "-o", "block_size=1M"), run_vhdx_reader,
                          _vhdx_reader_regions),
    "vdi": Target("vdi", lambda: qemu_seed("vdi"), _inspector(inspect_vdi), _vdi_regions),
    "vdi-reader": Target("vdi-reader", lambda: qemu_seed("vdi"), run_vdi_reader,
                         lambda data: _vdi_regions(data) + [(1024, 4096)]),
    "zstd": Target("zstd", zstd_seed, run_zstd, _head(64)),
    "tar": Target("tar", tar_seed, run_tar, lambda data: [(0, min(len(data), 4096))]),
}


# -- edits and the property -----------------------------------------------------------------

INTERESTING = [b"\0" * 8, b"\xff" * 8, struct.pack(">Q", 1 << 63), struct.pack("<Q", 1 << 40),
               struct.pack(">I", 0xFFFFFFFF), struct.pack("<I", 7), b"\x80\0\0\0\0\0\0\0"]


@st.composite
def edits(draw: st.DrawFn, seed: bytes, regions: list[tuple[int, int]]) -> bytes:
    """The seed with a few writes (mostly inside ``regions``) and maybe a cut."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(regions)) if draw(st.integers(0, 4)) else (0, len(data))
        at = draw(st.integers(start, max(start, end - 1)))
        value = draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(INTERESTING)))
        data[at:at + len(value)] = value
    if draw(st.integers(0, 5)) == 0:
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def check_example(target: Target, data: bytes) -> str:
    """Run one example; the outcome's name ('ok' or the error class). Raises AssertionError
    for anything else: a non-classified exception, a hang or too much memory."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    signal.alarm(SECONDS)
    try:
        with tempfile.TemporaryDirectory(prefix="cdi-fuzz-") as work:
            try:
                target.run(data, Path(work))
                outcome = "ok"
            except CdiImportError as error:
                outcome = type(error).__name__
        peak = tracemalloc.get_traced_memory()[1]
    except Hang:
        raise AssertionError(f"{target.name}: example did not finish within {SECONDS} s") from None
    finally:
        signal.alarm(0)
        tracemalloc.stop()
        signal.signal(signal.SIGALRM, previous)
    assert peak < MEMORY_BOUND, f"{target.name}: example allocated {peak} bytes at its peak"
    return outcome
