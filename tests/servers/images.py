"""Test images in every format and compression, generated with the real qemu-img (as CDI's
file host does), each with the sha256 of its raw form as ``qemu-img convert -O raw`` makes it.

The base disk is deterministic: random data extents at unaligned offsets, zero runs that are
written (not holes) and real holes, so sparse writing, cluster boundaries and zero detection
are all exercised.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import zstandard

from tests.servers.vmdk_craft import swap_first_grains

MiB = 1024 * 1024
BASE_SIZE = 24 * MiB
FORMATS = {"raw": None, "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx", "vdi": "vdi"}
COMPRESSIONS = {"gz": lambda d: gzip.compress(d, 6), "xz": lambda d: lzma.compress(d, preset=1),
                "zst": lambda d: zstandard.ZstdCompressor().compress(d), "bz2": lambda d: bz2.compress(d, 1)}


@dataclass(frozen=True)
class Image:
    path: Path
    raw_sha256: str
    """sha256 of ``qemu-img convert -O raw`` of the image (after decompression)."""
    raw_size: int
    file_sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def sha256_file(path: Path, length: int | None = None) -> str:
    """sha256 of the file, or of its first ``length`` bytes (an image inside a disk grown to its
    volume's size)."""
    digest = hashlib.sha256()
    left = length if length is not None else 1 << 62
    with open(path, "rb") as file:
        while left > 0 and (chunk := file.read(min(4 * MiB, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def make_base(path: Path, size: int = BASE_SIZE, seed: int = 7) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        out.truncate(size)
        offset = 3000  # deliberately unaligned
        while offset < size - 2 * MiB:
            length = rng.choice([512, 4096, 70_000, 300_000, MiB + 123])
            out.seek(offset)
            if rng.random() < 0.2:
                out.write(bytes(length))  # zeros written as data
            else:
                out.write(rng.randbytes(length))
            offset += length + rng.choice([0, 4096, 65536, 2 * MiB])


def raw_digest(path: Path, qemu_format: str | None) -> tuple[str, int]:
    if qemu_format is None:
        return sha256_file(path), path.stat().st_size
    out = path.with_suffix(path.suffix + ".expected.raw")
    subprocess.run(["qemu-img", "convert", "-f", qemu_format, "-O", "raw", str(path), str(out)], check=True)
    try:
        return sha256_file(out), out.stat().st_size
    finally:
        out.unlink()


def make_iso(directory: Path) -> Path:
    content = directory / "iso-content"
    content.mkdir(exist_ok=True)
    (content / "hello.txt").write_text("cdi-py test iso\n" * 1000)
    (content / "blob.bin").write_bytes(random.Random(3).randbytes(300_000))
    iso = directory / "tiny.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-R", "-J", str(content)], check=True)
    return iso


def build_images(directory: Path) -> dict[str, Image]:
    """Every format x compression fixture, keyed by file name (``disk.qcow2.xz`` ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / "disk.raw"
    make_base(base)
    images: dict[str, Image] = {}
    for name, qemu_format in FORMATS.items():
        path = directory / f"disk.{name}"
        if qemu_format:
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", qemu_format, str(base), str(path)], check=True)
        digest, size = raw_digest(path, qemu_format)
        images[path.name] = Image(path, digest, size, sha256_file(path))
    iso = make_iso(directory)
    images[iso.name] = Image(iso, sha256_file(iso), iso.stat().st_size, sha256_file(iso))
    for name in ("disk.raw", "disk.qcow2", "disk.vmdk", "disk.vhd", "tiny.iso"):
        source = images[name]
        data = source.path.read_bytes()
        for suffix, compress in COMPRESSIONS.items():
            path = directory / f"{name}.{suffix}"
            path.write_bytes(compress(data))
            images[path.name] = Image(path, source.raw_sha256, source.raw_size, sha256_file(path))
    vhdx = images["disk.vhdx"]
    path = directory / "disk.vhdx.gz"
    path.write_bytes(COMPRESSIONS["gz"](vhdx.path.read_bytes()))
    images[path.name] = Image(path, vhdx.raw_sha256, vhdx.raw_size, sha256_file(path))
    scrambled = _scrambled_vmdk_gz(images["disk.vmdk"], directory)
    images[scrambled.name] = scrambled
    _add_left_to_qemu(directory, base, images)
    return images


def _scrambled_vmdk_gz(vmdk: Image, directory: Path) -> Image:
    """The same disk as a VMDK whose grains are out of disk order, compressed: no single pass can
    place it, so only ``qemu-img`` from a scratch copy converts it (the importer asks for scratch
    space when it finds this, as CDI's does)."""
    image = bytearray(vmdk.path.read_bytes())
    swap_first_grains(image)
    path = directory / "scrambled.vmdk.gz"
    path.write_bytes(COMPRESSIONS["gz"](bytes(image)))
    return Image(path, vmdk.raw_sha256, vmdk.raw_size, sha256_file(path))


def _add_left_to_qemu(directory: Path, base: Path, images: dict[str, Image]) -> None:
    """``disk-sized.vhd`` (and ``.gz``): a VHD whose size field is exact and so disagrees
    with its geometry (``force_size``, as Azure wants them), which our VHD reader leaves to
    qemu-img: the image for the qemu routes (``qemu-nbd``; compressed, it needs scratch)."""
    path = directory / "disk-sized.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", str(base), str(path)],
                   check=True)
    digest, size = raw_digest(path, "vpc")
    images[path.name] = Image(path, digest, size, sha256_file(path))
    packed = directory / "disk-sized.vhd.gz"
    packed.write_bytes(COMPRESSIONS["gz"](path.read_bytes()))
    images[packed.name] = Image(packed, digest, size, sha256_file(packed))
