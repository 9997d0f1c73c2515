"""The import pipeline: probe -> transfer/convert -> resize -> complete, as an explicit phase
machine.

One sequential pass over the source does almost everything. The bytes, as received, are
hashed (checksum) and counted (progress) at the bottom of the stack; compression layers are
peeled off by magic; then the disk format decides the route:

=============================  ===========================================================
route                          when
=============================  ===========================================================
``stream-raw``                 raw, ISO and anything unrecognised: written as it arrives,
                               sparse, never through ``qemu-img``
``stream-qcow2``               qcow2 from any source: our own reader places clusters as
                               they pass; with random access its tables are read first
``stream-vmdk``                VMDK monolithicSparse whose tables come first and whose
                               grains are in disk order, and VMDK streamOptimized, from any
                               source: our own reader (:mod:`.formats.vmdk_plan`) writes
                               grains as they pass; the tables are read by range, or from
                               the stream's first 8 MiB when it has no ranges
``stream-vdi``                 VDI (dynamic or fixed, blocks in disk order), from any
                               source: the block map is read first, the same way
                               (:mod:`.formats.vdi_plan`), then the blocks as they pass
``stream-vhd``                 dynamic VHD whose geometry and size field agree, blocks in
                               disk order: likewise, from its BAT (:mod:`.formats.vhd_plan`)
``stream-vhdx``                VHDX (dynamic or fixed) with no log to replay, blocks after its
                               regions (sorted by file offset when out of disk order):
                               likewise (:mod:`.formats.vhdx_plan`)
``qemu-local``                 VMDK/VDI/VHD/VHDX the readers do not take, in a local
                               uncompressed file
``qemu-nbd``                   VMDK/VHD/VHDX/VDI from a source with random access: qemu-img
                               reads our source through a loopback NBD socket
``qemu-scratch``               VMDK/VHD/VHDX/VDI that arrive compressed or from a source
                               without ranges (or with a checksum to verify first): staged
                               to a scratch file, then converted
=============================  ===========================================================

Every phase that changes the target can be undone: any failure aborts the
:class:`~importer.target.DiskTarget` (the partial file is removed) and removes scratch files.
A source that changes while it is read (:class:`SourceChanged`), or whose advertised ranges
turn out not to work (:class:`RangesIgnored`), starts the import over.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import struct
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import progress as phases
from .archive import ArchiveExtractor
from .checksum import Checksum, ChecksumVerifier
from .errors import (CdiImportError, ImageTooLarge, InvalidImage, InvalidSource, PermanentError,
                     RangesIgnored, ScratchSpaceRequired, SourceChanged)
from .formats import magic
from .formats.decompress import decompress
from .formats.runs import StreamPlan
from .memory import limit_arenas
from .progress import Progress, ProgressListener
from .readahead import ReadAhead
from .sources import Source, SourceInfo
from .stream import CHUNK, ChunkReader, Prefetch, tap
from .target import DiskTarget, TargetSpec, inspect_target, usable_space

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
"""How often an import starts over because the source changed under it."""
MAX_COMPRESSION_LAYERS = 4
"""Compression layers peeled off one image (``.gz`` inside ``.xz`` ...); more is a bomb."""
MAX_DISK_SIZE = (1 << 63) - 1
"""The largest size a file or device offset can express."""
STAGE_DEPTH = 1
"""Chunks queued between two stages (network, each decompressor, the writer). Each stage
also holds the chunk it works on, so one queued chunk is enough to keep them all busy; deeper
queues measured no faster (bench, 512 MiB, 2 cores) and cost 4 MiB of peak RSS per slot:
depth 4 peaked at 103-123 MiB on the compressed routes, depth 1 at 79-87 MiB."""
READ_AHEAD_BLOCK = 2 * 1024 * 1024
READ_AHEAD_BLOCKS = 4
"""What qemu-img's reads through the NBD server are served from: 8 MiB of aligned blocks.
8 blocks of 4 MiB peaked at 117-123 MiB on a VMDK, 4 of 2 MiB at 69-74 MiB, equally fast."""


def check_spec(spec: TargetSpec) -> None:
    """Refuse option values no import can honour, before anything is touched."""
    overhead = spec.filesystem_overhead
    if not math.isfinite(overhead) or not 0.0 <= overhead < 1.0:
        raise InvalidSource(f"the filesystem overhead must be a fraction from 0 up to (not "
                            f"including) 1; got {overhead!r}")
    if spec.size is not None and not 0 < spec.size <= MAX_DISK_SIZE:
        raise InvalidSource(f"the requested size {spec.size} is not a usable disk size "
                            f"(1 byte to {MAX_DISK_SIZE} bytes)")


def _too_big(size: int, error: BaseException) -> PermanentError:
    return PermanentError(f"a disk of {size} bytes is larger than the target filesystem can "
                          f"hold in one file ({error}): DataVolume too small to contain image",
                          reason="TooSmall")


@dataclass
class ImportOptions:
    checksum: Checksum | None = None
    content_type: str = "kubevirt"
    """``kubevirt`` (a disk image) or ``archive`` (a tar unpacked into a filesystem volume)."""
    scratch_dir: Path | None = None
    """Where a scratch file may go when one is truly needed; ``None`` means none is allowed
    (:class:`ScratchSpaceRequired` is raised instead)."""
    progress: Progress = field(default_factory=Progress)


@dataclass
class ImportResult:
    """What an import found and did."""

    path: str
    """The target written: the disk image file or the block device."""
    format: str
    """The disk format found inside any compression (raw, qcow2, vmdk, vhd, vhdx, vdi, iso)."""
    compression: list[str]
    """Compression layers removed, outermost first (e.g. ``["xz"]``)."""
    route: str
    virtual_size: int
    """Size of the disk the image describes."""
    disk_size: int
    """Size of the raw result after resizing to the target."""
    bytes_received: int
    """Bytes read from the source (as served, before decompression)."""
    bytes_written: int
    """Data bytes written to the target (holes not counted)."""
    checksum: str | None
    """``algorithm:hex`` of the bytes received, when a checksum was asked for."""
    labels: dict[str, str]
    scratch_bytes: int = 0
    """Bytes staged to a scratch file (0 on every streaming route)."""
    preallocated: bool = False
    seconds: float = 0.0


class _Run:
    """The state of one attempt, threaded through the phase steps."""

    def __init__(self, source: Source, options: ImportOptions, disk: DiskTarget | None = None,
                 archive: ArchiveExtractor | None = None) -> None:
        self.source = source
        self._disk = disk
        self.archive = archive
        self.options = options
        self.progress = options.progress
        self.info: SourceInfo | None = None
        self.verifier: ChecksumVerifier | None = None
        self._verified = False
        self.received = 0
        self.reader: ChunkReader | None = None
        self.compression: list[str] = []
        self.format = "raw"
        self.route = ""
        self.virtual_size = 0
        self.scratch_bytes = 0
        self.disk_size = 0
        self.plan: StreamPlan | None = None
        self.planned = False
        """Whether a reader's planner already looked at this source (its answer, a plan or
        ``None``, stands: the route is chosen twice for a source with random access)."""
        self.cleanup = ExitStack()

    @property
    def target(self) -> DiskTarget:
        """The disk being written (every route but ``archive``)."""
        assert self._disk is not None
        return self._disk

    # -- the phase machine -----------------------------------------------------------------

    def run(self) -> ImportResult:
        steps: dict[str, Callable[[], str]] = {
            "probe": self.probe,
            "stream-raw": self.stream_raw,
            "stream-qcow2": self.stream_qcow2,
            "stream-vmdk": self.stream_blocks,
            "stream-vdi": self.stream_blocks,
            "stream-vhd": self.stream_blocks,
            "stream-vhdx": self.stream_blocks,
            "qemu-local": self.qemu_local,
            "qemu-nbd": self.qemu_nbd,
            "qemu-scratch": self.qemu_scratch,
            "archive": self.unpack_archive,
            "commit-archive": self.commit_archive,
            "verify": self.verify,
            "resize": self.resize,
        }
        phase, seen = "probe", set()
        with self.cleanup:
            while phase != "complete":
                if phase in seen:
                    raise RuntimeError(f"import phase loop: {phase} visited twice")
                seen.add(phase)
                log.debug("phase %s", phase)
                phase = steps[phase]()
        return self.result

    def probe(self) -> str:
        self.progress.phase(phases.PROBE)
        self.info = self.source.open()
        if self.options.checksum:
            self.verifier = ChecksumVerifier(self.options.checksum)
            self.cleanup.callback(self.verifier.close)
        direct = self._direct_route()
        if direct:
            return direct
        reader = ChunkReader(Prefetch(tap(self.source.chunks(0), self._received), depth=STAGE_DEPTH))
        self.cleanup.callback(reader.close)
        kind = self._detect(reader)
        while magic.is_compression(kind):
            if len(self.compression) == MAX_COMPRESSION_LAYERS:
                raise InvalidImage(f"{self.info.name} is compressed more than "
                                   f"{MAX_COMPRESSION_LAYERS} times over "
                                   f"({'+'.join(self.compression + [kind])}...): refusing")
            self.compression.append(kind)
            reader = ChunkReader(Prefetch(decompress(kind, reader), depth=STAGE_DEPTH))
            self.cleanup.callback(reader.close)
            kind = self._detect(reader)
        self.reader = reader
        self.format = kind
        if self.archive is not None and kind != "tar":
            raise InvalidImage(f"archive content must be a tar archive (optionally compressed); "
                               f"{self.info.name} is {kind}")
        self.route = "archive" if self.archive is not None else self._choose_route(kind)
        log.info("%s: %s%s via %s", self.info.name, kind,
                 "".join(f" in {c}" for c in reversed(self.compression)), self.route)
        return self.route

    def _detect(self, reader: ChunkReader) -> str:
        """The kind of what ``reader`` holds; an empty stream is an error, never a blank disk
        (a 0-byte file, upload or decompressed layer is almost always a failed export)."""
        head = reader.peek(magic.HEADER_BYTES)
        if not head:
            assert self.info is not None
            inside = f" inside {'+'.join(self.compression)}" if self.compression else ""
            raise InvalidImage(f"{self.info.name} is empty (0 bytes{inside}): refusing to make "
                               "a blank disk of it", reason="EmptyImage")
        return magic.detect(head)

    def _served(self, nbytes: int) -> None:
        """Bytes qemu-img read from the source through the NBD socket."""
        self.received += nbytes

    def _direct_route(self) -> str | None:
        """With random access, a header read by range may show that qemu-img will read the
        source itself (VMDK, VHD, ... not compressed): then no stream is started at all."""
        assert self.info is not None
        if not self.info.random_access or self.archive is not None:
            return None
        kind = magic.detect(self.source.read_at(0, magic.HEADER_BYTES))
        if not magic.needs_conversion(kind) or kind == "qcow2" or self._streams(kind):
            return None
        route = self._choose_route(kind)
        if route not in ("qemu-local", "qemu-nbd"):
            return None
        self.format, self.route = kind, route
        log.info("%s: %s via %s", self.info.name, kind, route)
        return route

    def _received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.verifier:
            self.verifier.update(chunk)
        self.progress.advance(len(chunk))

    def _choose_route(self, kind: str) -> str:
        assert self.info is not None
        if kind == "qcow2":
            return "stream-qcow2"
        if self._streams(kind):
            return f"stream-{kind}"
        if not magic.needs_conversion(kind):
            return "stream-raw"
        plain = not self.compression
        if plain and hasattr(self.source, "local_path"):
            return "qemu-local"
        if plain and self.info.random_access and not self.options.checksum:
            return "qemu-nbd"
        return "qemu-scratch"

    def _streams(self, kind: str) -> bool:
        """Whether our single-pass reader takes this VMDK, VDI, VHD or VHDX (its plan is kept); else
        qemu-img converts it. With random access to the file itself the tables are read by
        range; otherwise from what the stream holds ahead without consuming it, so a fallback
        loses nothing."""
        from .formats.runs import lookahead_read_at
        from .formats.vdi_plan import plan_vdi
        from .formats.vhd_plan import plan_vhd
        from .formats.vhdx_plan import plan_vhdx
        from .formats.vmdk_plan import plan_vmdk

        assert self.info is not None
        planner = {"vmdk": plan_vmdk, "vdi": plan_vdi, "vhd": plan_vhd, "vhdx": plan_vhdx}.get(kind)
        if planner is None:
            return False
        if not self.planned:
            try:
                if self.info.random_access and not self.compression:
                    self.plan = planner(self.source.read_at, self.info.size)
                    self.planned = True
                elif self.reader is not None:
                    self.plan = planner(lookahead_read_at(self.reader.peek), None)
                    self.planned = True
            except (struct.error, ValueError, OverflowError) as error:  # as inspect_image does
                raise InvalidImage(f"the {kind} image's header or tables are malformed: "
                                   f"{error}") from error
        return self.plan is not None

    # -- streaming routes ---------------------------------------------------------------------

    def _start_transfer(self) -> None:
        assert self.info is not None
        self.progress.plan([(phases.TRANSFER, 1.0)])
        self.progress.phase(phases.TRANSFER, self.info.size)
        self.progress.update(self.received)

    def stream_raw(self) -> str:
        assert self.reader is not None and self.info is not None
        if not self.compression and self.info.size is not None:
            self.target.check_fits(self.info.size, "image size")
        self._start_transfer()
        offset = 0
        for chunk in self.reader:
            self.target.write_at(offset, chunk)
            offset += len(chunk)
        self.virtual_size = offset
        return "verify"

    def stream_qcow2(self) -> str:
        from .formats.qcow2 import convert_qcow2

        assert self.reader is not None and self.info is not None
        self._start_transfer()
        read_at = self.source.read_at if self.info.random_access and not self.compression else None
        result = convert_qcow2(self.reader, self.target, read_at=read_at,
                               spill_dir=self.options.scratch_dir or self.target.final_path.parent)
        self.scratch_bytes = result.spilled_bytes
        self.virtual_size = result.virtual_size
        self._drain()
        return "verify"

    def stream_blocks(self) -> str:
        from .formats.vmdk_stream import convert_stream

        assert self.reader is not None and self.plan is not None
        self._start_transfer()
        result = convert_stream(self.reader, self.target, self.plan)
        self.virtual_size = result.virtual_size
        self._drain()
        return "verify"

    def _drain(self) -> None:
        """Read what the converter left (trailing metadata) so the checksum covers it all."""
        assert self.reader is not None
        for _ in self.reader:
            pass

    # -- qemu-img routes ---------------------------------------------------------------------

    def _qemu_convert(self, url: str, read_at: Callable[[int, int], bytes], size: int) -> None:
        from .formats.inspect import explain_qemu_refusal, inspect_image
        from .qemu import QemuImg, validate

        inspect_image(self.format, read_at, size)  # before qemu-img opens anything it names
        qemu = QemuImg()
        qemu_format = magic.QEMU_FORMAT[self.format]
        try:
            info = qemu.info(url, qemu_format)
        except InvalidImage as error:
            raise explain_qemu_refusal(self.format, error) from error
        validate(info, allowed_formats=(qemu_format,), capacity=self.target.capacity)
        self.virtual_size = info.virtual_size
        total = info.virtual_size
        self.progress.phase(phases.CONVERT, total)
        qemu.convert(url, qemu_format, str(self.target.work_path),
                     progress=lambda pct: self.progress.update(int(total * pct / 100), total),
                     preallocate=self.target.preallocate, dest_is_block=self.target.is_block)

    def qemu_local(self) -> str:
        path = str(self.source.local_path())  # type: ignore[attr-defined]
        self.progress.plan([(phases.CONVERT, 1.0)])
        self._close_stream()
        if self.verifier:
            self._hash_local(path)
        self._convert_file(path)
        return "verify"

    def _convert_file(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._qemu_convert(path, lambda offset, length: os.pread(fd, length, offset),
                               os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def _hash_local(self, path: str) -> None:
        assert self.verifier is not None
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK):
                self.verifier.update(chunk)

    def qemu_nbd(self) -> str:
        from .nbd import NbdServer

        assert self.info is not None and self.info.size is not None
        self.progress.plan([(phases.CONVERT, 1.0)])
        self._close_stream()
        cache = ReadAhead(self.source.read_at, self.info.size, block_size=READ_AHEAD_BLOCK,
                          blocks=READ_AHEAD_BLOCKS)
        with NbdServer(cache.read_at, self.info.size, on_read=self._served) as server:
            try:
                self._qemu_convert(server.url, cache.read_at, self.info.size)
            except CdiImportError:
                if server.first_error is not None:
                    raise server.first_error
                raise
        return "resize"

    def qemu_scratch(self) -> str:
        assert self.reader is not None and self.info is not None
        if self.options.scratch_dir is None:
            raise ScratchSpaceRequired(
                f"{self.format} image {'compressed with ' + '+'.join(self.compression) if self.compression else 'from a source without random access'} "
                "needs a scratch directory to be converted")
        self.progress.plan([(phases.TRANSFER, 1.0), (phases.CONVERT, 1.0)])
        self._start_transfer()
        scratch = self._scratch_file()
        limit = self._scratch_limit()
        with open(scratch, "wb") as out:
            for chunk in self.reader:
                self.scratch_bytes += len(chunk)
                if self.scratch_bytes > limit:
                    raise ImageTooLarge(self.scratch_bytes, limit, "decompressed image size")
                try:
                    out.write(chunk)
                except OSError as error:
                    raise PermanentError(
                        f"the scratch space filled up after {self.scratch_bytes} bytes of the "
                        f"decompressed {self.format} image: {error}", reason="ScratchSpaceTooSmall") from error
        if self.verifier:
            self.verify()
        self._convert_file(str(scratch))
        return "resize"

    def _scratch_file(self) -> Path:
        assert self.options.scratch_dir is not None
        self.options.scratch_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="cdi-scratch-", suffix=f".{self.format}",
                                    dir=self.options.scratch_dir)
        os.close(fd)
        path = Path(name)
        self.cleanup.callback(lambda: path.unlink(missing_ok=True))
        return path

    def _scratch_limit(self) -> int:
        """The most the scratch file may hold. Uncompressed, the probe gave the exact size and
        the scratch filesystem must have room for it now. Compressed, the decompressed image
        can be no bigger than what the target could hold plus room for the format's metadata;
        past that it is refused (a decompression bomb or an image too large)."""
        assert self.info is not None and self.options.scratch_dir is not None
        if not self.compression and self.info.size is not None:
            st = os.statvfs(self.options.scratch_dir)
            free = st.f_bavail * st.f_frsize
            if self.info.size > free:
                raise ScratchSpaceRequired(
                    f"the scratch directory has {free} bytes free, the image needs {self.info.size}")
            return self.info.size
        if self.target.capacity is not None:
            return self.target.capacity + self.target.capacity // 8 + 64 * 1024 * 1024
        return 1 << 62

    def _close_stream(self) -> None:
        if self.reader is not None:
            self.reader.close()

    # -- finishing ---------------------------------------------------------------------------

    def unpack_archive(self) -> str:
        assert self.reader is not None and self.archive is not None and self.info is not None
        self._start_transfer()
        result = self.archive.extract(self.reader, self.info.name)
        self._drain()
        self.virtual_size = result.bytes
        return "verify"

    def commit_archive(self) -> str:
        assert self.archive is not None
        self.archive.commit()
        self.disk_size = self.virtual_size
        self.progress.finish()
        return "complete"

    def verify(self) -> str:
        if self.verifier and not self._verified:
            self.progress.phase(phases.VERIFY)
            self.verifier.verify()
            self._verified = True
        return "commit-archive" if self.archive is not None else "resize"

    def resize(self) -> str:
        self.progress.phase(phases.RESIZE)
        self.disk_size = _commit(self.target, self.virtual_size)
        self.progress.finish()
        return "complete"

    @property
    def result(self) -> ImportResult:
        written = self.virtual_size if self._disk is None else self.target.bytes_written
        path = self.archive.directory if self.archive is not None else self.target.final_path

        return ImportResult(
            path=str(path), format=self.format, compression=self.compression,
            route=self.route, virtual_size=self.virtual_size, disk_size=self.disk_size,
            bytes_received=self.received, bytes_written=written,
            checksum=f"{self.verifier.algorithm}:{self.verifier.hexdigest()}" if self.verifier else None,
            labels=dict(self.info.labels) if self.info else {},
            scratch_bytes=self.scratch_bytes,
            preallocated=self._disk is not None and self.target.preallocate)


def _commit(disk: DiskTarget, virtual_size: int) -> int:
    """Commit, with a file size the filesystem cannot hold as a classified error."""
    try:
        return disk.commit(virtual_size)
    except OverflowError as error:
        raise _too_big(disk.final_size(virtual_size), error) from error
    except OSError as error:
        if error.errno in (errno.EFBIG, errno.EINVAL, errno.EOVERFLOW):
            raise _too_big(disk.final_size(virtual_size), error) from error
        raise


def run_import(source: Source, target: TargetSpec, options: ImportOptions | None = None) -> ImportResult:
    """Import ``source`` into ``target``; on any failure nothing that looks complete is left."""
    check_spec(target)
    limit_arenas()
    options = options or ImportOptions()
    started = time.monotonic()
    if options.content_type != "archive":
        refuse_self_import(source, target)
    for attempt in range(MAX_RESTARTS + 1):
        try:
            if options.content_type == "archive":
                result = _unpack(source, target, options)
            else:
                with DiskTarget(target) as disk:
                    result = _Run(source, options, disk=disk).run()
            result.seconds = time.monotonic() - started
            return result
        except (SourceChanged, RangesIgnored) as error:
            if attempt == MAX_RESTARTS:
                raise
            log.warning("%s; starting over", error)
        finally:
            source.close()
    raise AssertionError("unreachable")


def refuse_self_import(source: Source, target: TargetSpec) -> None:
    """A local source that is the target's own image (or device) would be read while it is
    overwritten: refused before the target is opened, so nothing is touched."""
    local = getattr(source, "local_path", None)
    if local is None:
        return
    final, _ = inspect_target(Path(target.path))
    try:
        mine, theirs = os.stat(local()), os.stat(final)
    except OSError:
        return
    same_file = (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
    same_device = bool(mine.st_rdev) and mine.st_rdev == theirs.st_rdev
    if same_file or same_device:
        raise InvalidSource(f"refusing to import {local()} into itself ({final})")


def _unpack(source: Source, target: TargetSpec, options: ImportOptions) -> ImportResult:
    """An ``archive`` import: the tar is unpacked into the target directory."""
    directory = Path(target.path)
    if not directory.is_dir():
        raise InvalidSource(f"archive content needs a filesystem volume (a directory); {directory} is not one")
    capacity = target.size
    if target.check_free_space:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        capacity = free if capacity is None else min(capacity, free)
    if capacity is not None:
        capacity = usable_space(capacity, target.filesystem_overhead)
    extractor = ArchiveExtractor(directory, capacity)
    try:
        return _Run(source, options, archive=extractor).run()
    except BaseException:
        extractor.abort()
        raise


def create_blank(target: TargetSpec, progress: Progress | None = None) -> ImportResult:
    """A blank raw disk of the target's capacity (CDI's ``source: blank``)."""
    check_spec(target)
    progress = progress or Progress()
    started = time.monotonic()
    with DiskTarget(target) as disk:
        if disk.capacity is None:
            raise InvalidSource("a blank image needs a size")
        progress.phase(phases.RESIZE)
        size = _commit(disk, disk.capacity)
        progress.finish()
    return ImportResult(path=str(disk.final_path), format="raw", compression=[], route="blank",
                        virtual_size=size, disk_size=size, bytes_received=0,
                        bytes_written=disk.bytes_written, checksum=None, labels={},
                        preallocated=target.preallocate, seconds=time.monotonic() - started)


__all__ = ["ImportOptions", "ImportResult", "run_import", "create_blank", "ProgressListener"]
