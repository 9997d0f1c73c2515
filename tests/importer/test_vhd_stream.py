"""Dynamic VHD through our own single-pass reader (route ``stream-vhd``), against real qemu-img.

Behaviours under test:
- a dynamic VHD made by ``qemu-img convert -O vpc`` (the disk of random extents, written
  zeros and holes of :mod:`tests.importer.test_vmdk_stream`; qemu rounds its size up to a
  CHS geometry) imports from a local file, from nginx over HTTP and in gz to exactly what
  ``qemu-img convert -O raw`` makes of it, by route ``stream-vhd``, with no scratch, each
  source byte read once and at most 1.01x the data bytes written;
- what the reader leaves to qemu-img still converts: blocks out of disk order, and a size
  field that disagrees with the geometry (qemu picks one by the creating application);
- hostile VHDs fail with a classified permanent error and leave no disk: a footer whose
  checksum is wrong (qemu refuses those too), a block past the end of the file, a block table over the dynamic header, a block mapped twice, a file cut
  inside a block.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

import cdi
from importer.formats.vhd import footer_checksum
from tests.importer.stream_disks import disk_dir, expect_refused_served
from tests.servers.images import raw_digest, sha256_file
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA

BLOCK = 2 << 20
UNALLOCATED = 0xFFFFFFFF


@dataclass(frozen=True)
class Served:
    www: Path
    nginx: Nginx
    data_bytes: int
    digest: str
    """sha256 of ``qemu-img convert -O raw`` of the VHD."""
    size: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Served]:
    disk = disk_dir(tmp_path_factory, "vhd")
    root, www, raw, data = disk.root, disk.www, disk.raw, disk.data_bytes
    image = www / "disk.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(raw), str(image)], check=True)
    (www / "disk.vhd.gz").write_bytes(gzip.compress(image.read_bytes(), 1))
    digest, size = raw_digest(image, "vpc")
    nginx = start_nginx(www, root / "nginx", test_ca)
    try:
        yield Served(www, nginx, data, digest, size)
    finally:
        nginx.stop()


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("name", ["disk.vhd", "disk.vhd.gz"])
def test_imports_like_qemu_img(served: Served, tmp_path: Path, name: str, where: str) -> None:
    source = str(served.www / name) if where == "local" else f"{served.nginx.http}/{name}"
    target = tmp_path / "disk.img"
    result = cdi.import_image(source, target)
    assert result.route == "stream-vhd"
    assert sha256_file(target) == served.digest
    assert result.virtual_size == served.size and result.scratch_bytes == 0
    assert result.bytes_received == (served.www / name).stat().st_size
    assert result.bytes_written <= served.data_bytes * 1.01
    assert target.stat().st_blocks * 512 <= served.data_bytes * 1.01


def bat(image: bytes) -> tuple[int, int, list[int]]:
    """(offset of the dynamic header, offset of the BAT, its entries)."""
    (dynamic,) = struct.unpack_from(">Q", image, 16)
    table, = struct.unpack_from(">Q", image, dynamic + 16)
    (entries,) = struct.unpack_from(">I", image, dynamic + 28)
    return dynamic, table, list(struct.unpack_from(f">{entries}I", image, table))


def allocated(image: bytes) -> list[int]:
    return [n for n, entry in enumerate(bat(image)[2]) if entry != UNALLOCATED]


def _local_import(image: bytes, tmp_path: Path) -> cdi.ImportResult:
    local = tmp_path / "edited.vhd"
    local.write_bytes(image)
    return cdi.import_image(str(local), tmp_path / "out" / "disk.img")


def test_blocks_out_of_order_keep_the_qemu_route(served: Served, tmp_path: Path) -> None:
    image = bytearray((served.www / "disk.vhd").read_bytes())
    _, table, entries = bat(bytes(image))
    a, b = allocated(bytes(image))[:2]
    span = 512 + BLOCK  # the sector bitmap, then the block
    at_a, at_b = entries[a] * 512, entries[b] * 512
    image[at_a:at_a + span], image[at_b:at_b + span] = image[at_b:at_b + span], image[at_a:at_a + span]
    struct.pack_into(">I", image, table + 4 * a, entries[b])
    struct.pack_into(">I", image, table + 4 * b, entries[a])
    result = _local_import(bytes(image), tmp_path)
    assert result.route == "qemu-local"
    assert sha256_file(tmp_path / "out" / "disk.img") == served.digest


def test_size_field_off_the_geometry_keeps_the_qemu_route(served: Served, tmp_path: Path) -> None:
    image = bytearray((served.www / "disk.vhd").read_bytes())
    struct.pack_into(">Q", image, 48, served.size - 512 * 17)  # the footer copy's current size
    struct.pack_into(">I", image, 64, footer_checksum(bytes(image[:512])))
    result = _local_import(bytes(image), tmp_path)
    assert result.route == "qemu-local"
    reference = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(tmp_path / "edited.vhd"),
                    str(reference)], check=True)
    assert sha256_file(tmp_path / "out" / "disk.img") == sha256_file(reference)


Edit = Callable[[bytearray], bytearray]


def _entry(which: int, value: Callable[[bytes], int]) -> Edit:
    def edit(image: bytearray) -> bytearray:
        table = bat(bytes(image))[1]
        struct.pack_into(">I", image, table + 4 * allocated(bytes(image))[which], value(bytes(image)))
        return image
    return edit


def _table_over_dynamic_header(image: bytearray) -> bytearray:
    dynamic = bat(bytes(image))[0]
    struct.pack_into(">Q", image, dynamic + 16, dynamic + 8)
    return image


def _bad_checksum(image: bytearray) -> bytearray:
    image[64] ^= 1
    return image


HOSTILE: dict[str, tuple[Edit, str]] = {
    "wrong footer checksum": (_bad_checksum, "checksum is wrong"),
    "block past the end": (_entry(-1, lambda image: len(image) // 512 + 64), "truncated"),
    "table over the dynamic header": (_table_over_dynamic_header, "overlaps the footer copy or the dynamic header"),
    "block mapped twice": (_entry(1, lambda image: bat(image)[2][allocated(image)[0]]), "overlaps another one"),
    "cut inside a block": (lambda image: image[:len(image) - BLOCK // 2], "truncated"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_images(served: Served, tmp_path: Path, name: str) -> None:
    edit, match = HOSTILE[name]
    image = edit(bytearray((served.www / "disk.vhd").read_bytes()))
    expect_refused_served(served.www, served.nginx.http, f"evil-{name.replace(' ', '-')}.vhd", bytes(image),
                          tmp_path, match)
