"""Helpers for the qcow2 tests: a deterministic source disk, qcow2 images made from it by the
real ``qemu-img``/``qemu-io``, and ways to feed an image to the converter."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Callable, Iterator

from importer.formats.qcow2 import Qcow2Result, convert_qcow2
from importer.stream import ChunkReader
from tests.servers.images import sha256_file
from importer.target import DiskTarget, TargetSpec

MiB = 1024 * 1024
SOURCE_SIZE = 32 * MiB + 7680
"""Not a multiple of any cluster size above 512: the last cluster is only partly guest data."""

HAVE_QEMU = bool(shutil.which("qemu-img") and shutil.which("qemu-io"))
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"


def run(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True)
    return done.stdout


def make_source(path: Path, seed: int = 2024) -> Path:
    """A raw disk with random (incompressible) and patterned (compressible) extents at
    unaligned offsets, zero runs inside data, holes, and data in the last partial cluster."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(SOURCE_SIZE)
        offset = rng.randrange(0, 4096)
        while offset < SOURCE_SIZE - 2 * MiB:
            length = rng.randrange(1, 900 * 1024)
            kind = rng.random()
            if kind < 0.45:
                data = rng.randbytes(length)
            elif kind < 0.8:
                word = rng.randbytes(rng.randrange(1, 64))
                data = (word * (length // len(word) + 1))[:length]
            else:
                data = bytes(length)  # explicit zeros: qemu-img leaves them out
            f.seek(offset)
            f.write(data)
            offset += length + rng.choice([0, 0, rng.randrange(1, 3 * MiB)])
        f.seek(SOURCE_SIZE - 5000)
        f.write(rng.randbytes(5000))
    return path



def qemu_raw_sha(image: Path, scratch: Path) -> str:
    """The hash of ``qemu-img convert -O raw`` of the image: the reference."""
    out = scratch / (image.name + ".ref.raw")
    run(QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", image, out)
    try:
        return sha256_file(out)
    finally:
        out.unlink()


def file_chunks(path: Path, size: int, limit: int | None = None) -> Iterator[bytes]:
    """The file as a pure stream of ``size``-byte chunks (optionally cut at ``limit``)."""
    remaining = os.path.getsize(path) if limit is None else limit
    with open(path, "rb") as f:
        while remaining > 0:
            chunk = f.read(min(size, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def pread_of(path: Path, limit: int | None = None) -> Callable[[int, int], bytes]:
    """A ``read_at`` over the file (optionally as if it ended at ``limit``)."""
    def read_at(offset: int, length: int) -> bytes:
        end = offset + length if limit is None else min(offset + length, limit)
        if end <= offset:
            return b""
        with open(path, "rb") as f:
            return os.pread(f.fileno(), end - offset, offset)
    return read_at


def convert(image: Path, out: Path, *, chunk: int = MiB, random_access: bool = False,
            size: int | None = None, limit: int | None = None,
            spill_dir: Path | None = None) -> tuple[Qcow2Result, DiskTarget]:
    """Run the converter on ``image`` into ``out`` and commit; returns the result and target.
    On failure the target is aborted and the error propagates."""
    target = DiskTarget(TargetSpec(path=out, size=size))
    reader = ChunkReader(file_chunks(image, chunk, limit))
    read_at = pread_of(image, limit) if random_access else None
    with target:
        result = convert_qcow2(reader, target, read_at=read_at,
                               spill_dir=spill_dir or out.parent)
        assert reader.read(1) == b"", "the stream must be drained"
        target.commit(result.virtual_size)
    return result, target


# -- images ----------------------------------------------------------------------------------


def qcow2_from(source: Path, out: Path, *options: str, compress: bool = False) -> Path:
    args: list[str | Path] = [QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2"]
    if compress:
        args.append("-c")
    if options:
        args += ["-o", ",".join(options)]
    run(*args, source, out)
    return out


def qemu_io(image: Path, *commands: str) -> None:
    args: list[str | Path] = [QEMU_IO, "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    run(*args, image)


def make_zero_clusters(source: Path, out: Path) -> Path:
    """compat 1.1 image whose L2 tables hold zero-flagged clusters (with and without a host
    offset) over ranges that used to hold data."""
    qcow2_from(source, out, "cluster_size=65536", "compat=1.1")
    qemu_io(out, "write -z 0 1M", "write -z -u 4M 2M", "write -z 9M 192k",
            "write -z 12345 4096")
    return out


def make_resized(out: Path) -> Path:
    """Data written, the image grown (its L1 table moves to the end), then written again:
    data and L2 tables arrive in the stream before the L1 table that maps them."""
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", out, "16M")
    qemu_io(out, "write -P 0x11 0 3M", "write -P 0x22 8M 1536k", "write -P 0x33 15M 1M")
    run(QEMU_IMG, "resize", "-f", "qcow2", out, "40M")
    qemu_io(out, "write -P 0x44 20M 2M", "write -P 0x55 1M 64k", "write -P 0x66 39M 1M",
            "write -P 0x77 8200k 100k")
    return out


def make_snapshot(source: Path, out: Path) -> Path:
    """An internal snapshot, then writes that copy-on-write L2 tables to the end of the file
    (the new tables map old clusters that the stream passed long before)."""
    qcow2_from(source, out, "cluster_size=65536")
    run(QEMU_IMG, "snapshot", "-c", "snap1", out)
    qemu_io(out, "write -P 0x5a 100k 64k", "write -P 0x6b 20M 1M", "write -z 2M 64k")
    return out


def make_variant(name: str, source: Path, out: Path) -> Path:
    """Build the named image variant (see VARIANTS)."""
    builders: dict[str, Callable[[], Path]] = {
        "cs512": lambda: qcow2_from(source, out, "cluster_size=512"),
        "cs4k": lambda: qcow2_from(source, out, "cluster_size=4096"),
        "cs64k": lambda: qcow2_from(source, out, "cluster_size=65536"),
        "cs2M": lambda: qcow2_from(source, out, "cluster_size=2097152"),
        "compat010": lambda: qcow2_from(source, out, "compat=0.10"),
        "compat010-cs4k": lambda: qcow2_from(source, out, "compat=0.10", "cluster_size=4096"),
        "zlib": lambda: qcow2_from(source, out, compress=True),
        "zlib-cs512": lambda: qcow2_from(source, out, "cluster_size=512", compress=True),
        "zlib-compat010": lambda: qcow2_from(source, out, "compat=0.10", compress=True),
        "zstd": lambda: qcow2_from(source, out, "compression_type=zstd", compress=True),
        "zstd-cs2M": lambda: qcow2_from(source, out, "compression_type=zstd",
                                        "cluster_size=2097152", compress=True),
        "zero-clusters": lambda: make_zero_clusters(source, out),
        "prealloc-metadata": lambda: qcow2_from(source, out, "preallocation=metadata"),
        "resized": lambda: make_resized(out),
        "snapshot": lambda: make_snapshot(source, out),
    }
    return builders[name]()


VARIANTS = ["cs512", "cs4k", "cs64k", "cs2M", "compat010", "compat010-cs4k", "zlib",
            "zlib-cs512", "zlib-compat010", "zstd", "zstd-cs2M", "zero-clusters",
            "prealloc-metadata", "resized", "snapshot"]


# -- hand edits --------------------------------------------------------------------------------


def patch(path: Path, offset: int, fmt: str, value: int) -> None:
    """Overwrite one big-endian field of the file."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def read_field(path: Path, offset: int, fmt: str) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return int(struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0])
