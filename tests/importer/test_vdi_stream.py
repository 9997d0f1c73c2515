"""VDI through our own single-pass reader (route ``stream-vdi``), against real qemu-img.

Behaviours under test:
- dynamic and fixed VDIs made by ``qemu-img convert`` (the disk of random extents, written
  zeros and holes of :mod:`tests.importer.test_vmdk_stream`) import from a local file, from
  nginx over HTTP and in gz to exactly what ``qemu-img convert -O raw`` makes of them, by
  route ``stream-vdi``, with no scratch, each source byte read once, at most 1.01x the data
  bytes written (VDI allocates whole 1 MiB blocks; their zeros stay holes);
- blocks out of disk order keep the qemu-img route (``qemu-local``) and still convert;
- hostile VDIs fail with a classified permanent error and leave no disk: a block past the
  end of the file, a block map over the header, a data area inside the map, a block mapped
  twice, a file cut inside a block.
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
from tests.importer.stream_disks import SIZE, disk_dir, expect_refused_served
from tests.servers.images import raw_digest, sha256_file
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA

BLOCK = 1 << 20


@dataclass(frozen=True)
class Served:
    www: Path
    nginx: Nginx
    data_bytes: int
    digest: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Served]:
    disk = disk_dir(tmp_path_factory, "vdi")
    root, www, raw, data = disk.root, disk.www, disk.raw, disk.data_bytes
    for name, options in (("dynamic", []), ("fixed", ["-o", "static=on"])):
        image = www / f"{name}.vdi"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vdi", *options, str(raw), str(image)],
                       check=True)
        (www / f"{name}.vdi.gz").write_bytes(gzip.compress(image.read_bytes(), 1))
        assert raw_digest(image, "vdi")[0] == sha256_file(raw)
    nginx = start_nginx(www, root / "nginx", test_ca)
    try:
        yield Served(www, nginx, data, sha256_file(raw))
    finally:
        nginx.stop()


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("name", ["dynamic.vdi", "fixed.vdi", "dynamic.vdi.gz"])
def test_imports_like_qemu_img(served: Served, tmp_path: Path, name: str, where: str) -> None:
    source = str(served.www / name) if where == "local" else f"{served.nginx.http}/{name}"
    target = tmp_path / "disk.img"
    result = cdi.import_image(source, target)
    assert result.route == "stream-vdi"
    assert sha256_file(target) == served.digest
    assert result.virtual_size == SIZE and result.scratch_bytes == 0
    assert result.bytes_received == (served.www / name).stat().st_size
    assert result.bytes_written <= served.data_bytes * 1.01
    assert target.stat().st_blocks * 512 <= served.data_bytes * 1.01


def block_map(image: bytes) -> tuple[int, int, list[int]]:
    """(offset of the map, offset of the data, the map's entries)."""
    map_offset, data_offset = struct.unpack_from("<II", image, 0x154)
    (blocks,) = struct.unpack_from("<I", image, 0x180)
    return map_offset, data_offset, list(struct.unpack_from(f"<{blocks}I", image, map_offset))


def allocated(image: bytes) -> list[int]:
    """Indexes of the allocated map entries, in disk order."""
    return [n for n, entry in enumerate(block_map(image)[2]) if entry < 0xFFFFFFFE]


def test_blocks_out_of_order_keep_the_qemu_route(served: Served, tmp_path: Path) -> None:
    image = bytearray((served.www / "dynamic.vdi").read_bytes())
    map_offset, data, entries = block_map(bytes(image))
    a, b = allocated(bytes(image))[:2]
    at_a, at_b = data + entries[a] * BLOCK, data + entries[b] * BLOCK
    image[at_a:at_a + BLOCK], image[at_b:at_b + BLOCK] = image[at_b:at_b + BLOCK], image[at_a:at_a + BLOCK]
    struct.pack_into("<I", image, map_offset + 4 * a, entries[b])
    struct.pack_into("<I", image, map_offset + 4 * b, entries[a])
    local = tmp_path / "swapped.vdi"
    local.write_bytes(image)
    result = cdi.import_image(str(local), tmp_path / "out" / "disk.img")
    assert result.route == "qemu-local"
    assert sha256_file(tmp_path / "out" / "disk.img") == served.digest


Edit = Callable[[bytearray], bytearray]


def _entry(which: int, value: Callable[[bytes], int]) -> Edit:
    def edit(image: bytearray) -> bytearray:
        map_offset = block_map(bytes(image))[0]
        struct.pack_into("<I", image, map_offset + 4 * allocated(bytes(image))[which], value(bytes(image)))
        return image
    return edit


def _field(offset: int, value: Callable[[bytes], int]) -> Edit:
    def edit(image: bytearray) -> bytearray:
        struct.pack_into("<I", image, offset, value(bytes(image)))
        return image
    return edit


HOSTILE: dict[str, tuple[Edit, str]] = {
    "block past the end": (_entry(-1, lambda image: len(image) // BLOCK + 3), "truncated"),
    "map over the header": (_field(0x154, lambda _: 0x100), "overlaps the header"),
    "data inside the map": (_field(0x158, lambda image: block_map(image)[0]), "inside the block map"),
    "block mapped twice": (_entry(1, lambda image: block_map(image)[2][allocated(image)[0]]),
                           "overlaps another one"),
    "cut inside a block": (lambda image: image[:len(image) - BLOCK // 2], "truncated"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_images(served: Served, tmp_path: Path, name: str) -> None:
    edit, match = HOSTILE[name]
    image = edit(bytearray((served.www / "dynamic.vdi").read_bytes()))
    expect_refused_served(served.www, served.nginx.http, f"evil-{name.replace(' ', '-')}.vdi", bytes(image),
                          tmp_path, match)
