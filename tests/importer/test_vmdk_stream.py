"""VMDK through our own single-pass reader (route ``stream-vmdk``), against real qemu-img.

Behaviours under test:
- monolithicSparse and streamOptimized images made by ``qemu-img convert`` (a disk of random
  extents, written zeros and holes, whose size is not a whole number of grains) import from
  a local file, from nginx over HTTP and compressed (.vmdk.gz, local and HTTP) to exactly
  what ``qemu-img convert -O raw`` makes of them, by route ``stream-vmdk``, with no scratch,
  each source byte read once, at most 1.01x the data bytes written and holes left as holes;
  onto a block device full of old data, the holes read as zeros;
- layouts the reader does not take keep the qemu-img route and still convert: grains out of
  disk order (a local file -> ``qemu-local``, over HTTP in gz -> ``qemu-scratch``), and
  tables beyond what a stream without ranges may look ahead (-> ``qemu-scratch``);
- hostile images fail with a classified permanent error naming the problem and leave no
  disk behind: grain table entries past the end of the file or inside the header and tables,
  a grain mapped twice, an absurd capacity, a grain directory of 4 Mi entries, grain
  markers with huge sizes, off the disk, off a grain boundary or repeated, grains that do not
  inflate (or inflate past a grain), and files cut short inside a grain or between grains.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

import cdi
from importer.formats import runs, vmdk, vmdk_plan
from importer.formats.vmdk_plan import plan_vmdk
from tests.importer.stream_disks import SIZE, disk_dir, expect_refused
from tests.servers.images import raw_digest, sha256_file
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA
from tests.servers.vmdk_craft import GRAIN, gte_offsets, header, put, swap_first_grains

MiB = 1 << 20


@dataclass(frozen=True)
class Served:
    www: Path
    nginx: Nginx
    data_bytes: int
    """Non-zero 4 KiB blocks of the disk, in bytes."""
    digest: str
    """sha256 of the raw disk (what qemu-img convert -O raw makes of every image here)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Served]:
    disk = disk_dir(tmp_path_factory, "vmdk")
    root, www, raw = disk.root, disk.www, disk.raw
    for name, options in (("sparse", []), ("stream", ["-o", "subformat=streamOptimized"])):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", *options, str(raw),
                        str(www / f"{name}.vmdk")], check=True)
        (www / f"{name}.vmdk.gz").write_bytes(gzip.compress((www / f"{name}.vmdk").read_bytes(), 1))
        assert raw_digest(www / f"{name}.vmdk", "vmdk")[0] == sha256_file(raw)
    nginx = start_nginx(www, root / "nginx", test_ca)
    try:
        yield Served(www, nginx, disk.data_bytes, sha256_file(raw))
    finally:
        nginx.stop()


@pytest.mark.parametrize("where", ["local", "http"])
@pytest.mark.parametrize("name", ["sparse.vmdk", "stream.vmdk", "sparse.vmdk.gz", "stream.vmdk.gz"])
def test_imports_like_qemu_img(served: Served, tmp_path: Path, name: str, where: str) -> None:
    source = str(served.www / name) if where == "local" else f"{served.nginx.http}/{name}"
    target = tmp_path / "disk.img"
    result = cdi.import_image(source, target)
    assert result.route == "stream-vmdk"
    assert sha256_file(target) == served.digest
    assert result.virtual_size == SIZE and result.scratch_bytes == 0
    assert result.bytes_received == (served.www / name).stat().st_size  # each byte read once
    assert result.bytes_written <= served.data_bytes * 1.01
    assert target.stat().st_blocks * 512 <= served.data_bytes * 1.01  # holes stay holes
    assert [p.name for p in tmp_path.iterdir()] == ["disk.img"]


@pytest.mark.parametrize("name", ["sparse.vmdk", "stream.vmdk.gz"])
def test_block_device_holes_read_as_zeros(served: Served, loop_device: Path, name: str) -> None:
    result = cdi.import_image(f"{served.nginx.http}/{name}", loop_device)
    assert result.route == "stream-vmdk"
    digest = hashlib.sha256()
    with open(loop_device, "rb") as device:
        digest.update(device.read(SIZE))
    assert digest.hexdigest() == served.digest


def test_checksum_over_the_stream(served: Served, tmp_path: Path) -> None:
    digest = sha256_file(served.www / "stream.vmdk")
    result = cdi.import_image(f"{served.nginx.http}/stream.vmdk", tmp_path / "d.img",
                              checksum=f"sha256:{digest}")
    assert result.route == "stream-vmdk" and result.checksum == f"sha256:{digest}"
    assert sha256_file(tmp_path / "d.img") == served.digest


# -- helpers for hand-edited images ----------------------------------------------------------


def markers(image: bytes) -> list[tuple[int, int, int]]:
    """(file offset, lba, compressed size) of every grain marker of a streamOptimized image."""
    pos, found = header(image)["overhead"] * 512, []
    while pos + 12 <= len(image):
        lba, size = struct.unpack_from("<QI", image, pos)
        if not size:
            break
        found.append((pos, lba, size))
        pos += -(-(12 + size) // 512) * 512
    return found


def test_grains_out_of_order_keep_the_qemu_route(served: Served, tmp_path: Path) -> None:
    image = bytearray((served.www / "sparse.vmdk").read_bytes())
    swap_first_grains(image)
    local = tmp_path / "swapped.vmdk"
    local.write_bytes(image)
    (served.www / "swapped.vmdk.gz").write_bytes(gzip.compress(bytes(image), 1))
    result = cdi.import_image(str(local), tmp_path / "a" / "disk.img")
    assert result.route == "qemu-local"
    assert sha256_file(tmp_path / "a" / "disk.img") == served.digest
    result = cdi.import_image(f"{served.nginx.http}/swapped.vmdk.gz", tmp_path / "b" / "disk.img",
                              scratch_dir=tmp_path / "scratch")
    assert result.route == "qemu-scratch"
    assert sha256_file(tmp_path / "b" / "disk.img") == served.digest


def test_a_declined_image_is_planned_once(served: Served, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The route is chosen twice for a file with random access (before and after the stream
    opens); the reader's verdict on the tables is kept, not read again by range."""
    image = bytearray((served.www / "sparse.vmdk").read_bytes())
    swap_first_grains(image)
    (served.www / "declined.vmdk").write_bytes(image)
    planned: list[int | None] = []

    def counting(read_at: runs.ReadAt, size: int | None, lookahead: int | None = None) -> runs.StreamPlan | None:
        planned.append(size)
        return plan_vmdk(read_at, size, lookahead)

    monkeypatch.setattr(vmdk_plan, "plan_vmdk", counting)
    result = cdi.import_image(f"{served.nginx.http}/declined.vmdk", tmp_path / "disk.img")
    assert result.route == "qemu-nbd"
    assert planned == [len(image)]


def test_tables_beyond_the_lookahead_keep_the_qemu_route(served: Served, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "LOOKAHEAD", 8192)  # qemu's tables end at 19 KiB here
    result = cdi.import_image(f"{served.nginx.http}/sparse.vmdk.gz", tmp_path / "d.img",
                              scratch_dir=tmp_path / "scratch")
    assert result.route == "qemu-scratch"
    assert sha256_file(tmp_path / "d.img") == served.digest


# -- hostile images ----------------------------------------------------------------------------

Edit = Callable[[bytearray], bytearray]


def _gte(index: int, value: Callable[[bytes, int], int]) -> Edit:
    def edit(image: bytearray) -> bytearray:
        at, entry = gte_offsets(bytes(image))[index]
        put(image, at, "<I", value(bytes(image), entry))
        return image
    return edit


def _marker(index: int, lba: Callable[[bytes, int], int] | None = None, size: int | None = None,
            data: bytes | None = None) -> Edit:
    """Rewrite grain marker ``index``: its disk address (from the image and the old one), its
    size, or its compressed data."""
    def edit(image: bytearray) -> bytearray:
        pos, old_lba, old_size = markers(bytes(image))[index]
        new_lba = lba(bytes(image), old_lba) if lba else old_lba
        put(image, pos, "<QI", new_lba, size if size is not None else old_size)
        if data is not None:
            put(image, pos + 8, "<I", len(data))
            image[pos + 12:pos + 12 + len(data)] = data
        return image
    return edit


def _header(field: int, fmt: str, value: int) -> Edit:
    def edit(image: bytearray) -> bytearray:
        put(image, field, fmt, value)
        return image
    return edit


def _cut(at: Callable[[bytes], int]) -> Edit:
    return lambda image: image[:at(bytes(image))]


HOSTILE_SPARSE: dict[str, tuple[Edit, str]] = {
    "grain past the end": (_gte(-1, lambda image, _: len(image) // 512 + 64), "truncated"),
    "grain in the header": (_gte(0, lambda _, __: 2), "overlaps the image header or its grain tables"),
    "grain mapped twice": (_gte(1, lambda image, _: gte_offsets(image)[0][1]), "overlaps another one"),
    "grain over a neighbour": (_gte(1, lambda image, _: gte_offsets(image)[0][1] + 8),
                               "overlaps another one"),
    "absurd capacity": (_header(12, "<Q", 1 << 62), "more than 4294967296 grains"),
    "4 Mi grain tables": (_header(12, "<Q", 1 << 38), "overlaps the header, the descriptor or the grain directory"),
    "cut inside a grain": (_cut(lambda image: gte_offsets(image)[-1][1] * 512 + 1000), "truncated"),
}
HOSTILE_STREAM: dict[str, tuple[Edit, str]] = {
    "huge grain marker": (_marker(1, size=0x7FFF_FFFF), "claims 2147483647 compressed bytes"),
    "grain off the disk": (_marker(1, lba=lambda _, __: (SIZE // GRAIN + 1) * GRAIN // 512),
                           "past the end of the disk"),
    "grain off a boundary": (_marker(1, lba=lambda _, lba: lba + 8), "not on a grain boundary"),
    "grain given twice": (_marker(2, lba=lambda image, _: markers(image)[1][1]), "repeats the grain"),
    "grain that does not inflate": (_marker(0, data=b"\x78\x9c" + b"garbage" * 20), "is corrupt"),
    "grain that inflates past a grain": (_marker(0, data=zlib.compress(bytes(4 * GRAIN), 9)),
                                         "does not inflate to exactly one grain"),
    "cut between grains": (_cut(lambda image: markers(image)[-1][0]), "do not match its grain tables"),
    "cut inside a grain": (_cut(lambda image: markers(image)[-1][0] + 40), "truncated"),
    "unknown marker": (lambda image: _metadata_marker(image, 9), "unknown VMDK marker type 9"),
}
def _metadata_marker(image: bytearray, kind: int) -> bytearray:
    pos = markers(bytes(image))[1][0]
    put(image, pos, "<QII", 0, 0, kind)
    return image


@pytest.mark.parametrize("name", sorted(HOSTILE_SPARSE))
def test_hostile_sparse_images(served: Served, tmp_path: Path, name: str) -> None:
    edit, match = HOSTILE_SPARSE[name]
    image = edit(bytearray((served.www / "sparse.vmdk").read_bytes()))
    local = tmp_path / "evil.vmdk"
    local.write_bytes(image)
    expect_refused(str(local), tmp_path, match)
    served_name = f"evil-sparse-{name.replace(' ', '-')}.vmdk.gz"
    (served.www / served_name).write_bytes(gzip.compress(bytes(image), 1))
    expect_refused(f"{served.nginx.http}/{served_name}", tmp_path / "http", match,
                    scratch_dir=tmp_path / "scratch")


@pytest.mark.parametrize("name", sorted(HOSTILE_STREAM))
def test_hostile_stream_optimized_images(served: Served, tmp_path: Path, name: str) -> None:
    edit, match = HOSTILE_STREAM[name]
    original = (served.www / "stream.vmdk").read_bytes()
    image = edit(bytearray(original))
    served_name = f"evil-stream-{name.replace(' ', '-')}.vmdk"
    (served.www / served_name).write_bytes(image)
    expect_refused(f"{served.nginx.http}/{served_name}", tmp_path, match)


def test_cut_short_at_a_grain_boundary_is_truncated_without_tables_in_front(
        served: Served, tmp_path: Path) -> None:
    """VMware's streams keep their tables behind the grains: one that stops after a whole
    grain, without its end-of-stream marker, is an incomplete download."""
    image = bytearray((served.www / "stream.vmdk").read_bytes())
    put(image, 56, "<Q", vmdk.GD_AT_END)
    image = image[:markers(bytes(image))[-1][0]]
    served_name = "evil-stream-gd-at-end.vmdk.gz"
    (served.www / served_name).write_bytes(gzip.compress(bytes(image), 1))
    expect_refused(f"{served.nginx.http}/{served_name}", tmp_path, "end-of-stream marker")
