"""VHDX through our own single-pass reader (route ``stream-vhdx``), against real qemu-img.

Behaviours under test:
- dynamic VHDXs made by ``qemu-img convert -O vhdx`` (the disk of random extents, written
  zeros and holes of :mod:`tests.importer.test_vmdk_stream`; default, 1 MiB and 32 MiB
  blocks) and a fixed one (``subformat=fixed``) import from a local file, from nginx over HTTP, from a server without ranges and in gz/zst to
  exactly what ``qemu-img convert -O raw`` makes of them, by route ``stream-vhdx``, with no
  scratch, each source byte read once and at most 1.01x the data bytes written;
- so does one with 4096-byte logical sectors (Hyper-V makes them for 4Kn disks; qemu-img
  neither writes nor reads them, so the expected result is the disk the 512-byte one holds:
  with fewer blocks than a chunk, only the sector size field differs);
- a disk larger than one chunk (4 GiB with 1 MiB blocks), whose block table has a
  sector-bitmap entry between its payload entries, imports like qemu-img;
- blocks out of disk order (reversed) are sorted by file offset and still take the single
  pass, by range and from a stream; more of them than the sort holds keep qemu-img;
- what the reader leaves to qemu-img still converts: a log GUID whose log has no valid entry
  (qemu opens those read-only);
- hostile VHDXs fail with a classified permanent error and leave no disk, by range, by HTTP
  and in gz: a dirty log (qemu-img refuses it read-only; so do we), a differencing disk, a
  block past the end of the file, over the block table or mapped twice, a partially present
  block, a block state the format does not define, block and sector sizes the format does
  not allow, a virtual size off the sector size or beyond 64 TiB, a huge disk whose table
  does not fit its region, regions overlapping, a region table with a wrong checksum, a file
  cut inside a block.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

import cdi
from importer.formats import vhdx_plan
from importer.formats.crc32c import with_checksum_zeroed
from tests.importer.stream_disks import SIZE, disk_dir, expect_refused, expect_refused_served
from tests.servers.badserver import BadServer
from tests.servers.images import raw_digest, sha256_file
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA

MiB = 1 << 20
GiB = 1 << 30
KiB = 1024
REGIONS = 192 * KiB
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
ITEMS = {"parameters": uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le,
         "size": uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le,
         "sector": uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le}
MADE = {"dynamic.vhdx": [], "dynamic-1m.vhdx": ["-o", "block_size=1M"],
        "dynamic-32m.vhdx": ["-o", "block_size=32M"], "fixed.vhdx": ["-o", "subformat=fixed"]}


@dataclass(frozen=True)
class Served:
    www: Path
    nginx: Nginx
    plain: BadServer
    data_bytes: int
    digest: str
    """sha256 of the raw disk, which ``qemu-img convert -O raw`` of every image matches."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Served]:
    disk = disk_dir(tmp_path_factory, "vhdx")
    root, www, raw, data = disk.root, disk.www, disk.raw, disk.data_bytes
    for name, options in MADE.items():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", *options, str(raw), str(www / name)],
                       check=True)
    sector4k = bytearray((www / "dynamic-1m.vhdx").read_bytes())
    struct.pack_into("<I", sector4k, item(bytes(sector4k), "sector"), 4096)
    (www / "sector4k.vhdx").write_bytes(sector4k)
    for name in ("dynamic.vhdx", "fixed.vhdx"):
        (www / f"{name}.gz").write_bytes(gzip.compress((www / name).read_bytes(), 1))
    subprocess.run(["zstd", "-q", "-3", str(www / "dynamic-32m.vhdx"), "-o", str(www / "dynamic-32m.vhdx.zst")],
                   check=True)
    digest = sha256_file(raw)
    for name in MADE:
        assert raw_digest(www / name, "vhdx")[0] == digest, name
    nginx = start_nginx(www, root / "nginx", test_ca)
    plain = BadServer(www).start()
    try:
        yield Served(www, nginx, plain, data, digest)
    finally:
        plain.stop()
        nginx.stop()


# -- reading and editing the layout ------------------------------------------------------------


def regions(image: bytes) -> dict[bytes, tuple[int, int]]:
    (count,) = struct.unpack_from("<I", image, REGIONS + 8)
    return {image[at:at + 16]: struct.unpack_from("<QI", image, at + 16)
            for at in range(REGIONS + 16, REGIONS + 16 + 32 * count, 32)}


def item(image: bytes, name: str) -> int:
    """File offset of a metadata item."""
    start = regions(image)[METADATA_GUID][0]
    (count,) = struct.unpack_from("<H", image, start + 10)
    for at in range(start + 32, start + 32 + 32 * count, 32):
        if image[at:at + 16] == ITEMS[name]:
            return start + struct.unpack_from("<I", image, at + 16)[0]
    raise KeyError(name)


def bat(image: bytes) -> tuple[int, list[int]]:
    """(offset of the BAT, its entries up to the last non-zero one)."""
    start, length = regions(image)[BAT_GUID]
    entries = list(struct.unpack_from(f"<{length // 8}Q", image, start))
    while entries and not entries[-1]:
        entries.pop()
    return start, entries


def present(image: bytes) -> list[int]:
    """Indexes of the fully present entries, in table order."""
    return [n for n, entry in enumerate(bat(image)[1]) if entry & 7 == 6]


def current_header(image: bytes) -> int:
    return max((64 * KiB, 128 * KiB), key=lambda at: struct.unpack_from("<Q", image, at + 8)[0])


def reseal(image: bytearray, at: int, length: int) -> None:
    """Recompute the CRC-32C of the header or region table at ``at``."""
    struct.pack_into("<I", image, at + 4, with_checksum_zeroed(bytes(image[at:at + length]), 4))


def with_log(image: bytearray, entry: bool) -> bytearray:
    """A log GUID in the current header and, if ``entry``, one valid log entry (no descriptors)
    in the log: qemu then has a log to replay."""
    at = current_header(bytes(image))
    guid = uuid.uuid4().bytes_le
    image[at + 48:at + 64] = guid
    reseal(image, at, 4 * KiB)
    if entry:
        _, log_offset = struct.unpack_from("<IQ", image, at + 68)
        log = bytearray(4 * KiB)
        struct.pack_into("<4sIIIQII16sQQ", log, 0, b"loge", 0, 4 * KiB, 0, 1, 0, 0, guid, len(image), len(image))
        reseal(log, 0, 4 * KiB)
        image[log_offset:log_offset + 4 * KiB] = log
    return image


# -- imports like qemu-img ------------------------------------------------------------------------


def _source(served: Served, name: str, where: str) -> str:
    if where == "local":
        return str(served.www / name)
    if where == "no-ranges":
        return served.plain.url("no-accept-ranges", name)
    return f"{served.nginx.http}/{name}"


@pytest.mark.parametrize("where", ["local", "http", "no-ranges"])
@pytest.mark.parametrize("name", [*MADE, "sector4k.vhdx", "dynamic.vhdx.gz", "fixed.vhdx.gz",
                                  "dynamic-32m.vhdx.zst"])
def test_imports_like_qemu_img(served: Served, tmp_path: Path, name: str, where: str) -> None:
    target = tmp_path / "disk.img"
    result = cdi.import_image(_source(served, name, where), target)
    assert result.route == "stream-vhdx"
    assert sha256_file(target) == served.digest
    assert result.virtual_size == SIZE and result.scratch_bytes == 0
    assert result.bytes_received == (served.www / name).stat().st_size
    assert result.bytes_written <= served.data_bytes * 1.01
    assert target.stat().st_blocks * 512 <= served.data_bytes * 1.01


def test_block_table_with_sector_bitmap_entries(served: Served, tmp_path: Path) -> None:
    """With 1 MiB blocks and 512-byte sectors a chunk is 4096 blocks (4 GiB): entry 4096 of
    the table is a sector-bitmap entry, and block 4096 of the disk is entry 4097."""
    raw = tmp_path / "big.raw"
    pieces = [(0, b"first"), (4 * GiB - 300 * KiB, b"across the chunk boundary" * 30_000),
              (4 * GiB + 5 * MiB, b"after"), (4 * GiB + 8 * MiB - 5, b"last!")]
    with open(raw, "wb") as out:
        out.truncate(4 * GiB + 8 * MiB)
        for offset, data in pieces:
            out.seek(offset)
            out.write(data)
    image = served.www / "big.vhdx"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", str(raw), str(image)],
                   check=True)
    try:
        assert bat(image.read_bytes()[:8 * MiB])[1][4096] == 0  # the bitmap entry: none here
        digest = sha256_file(raw)
        raw.unlink()
        for n, source in enumerate((str(image), f"{served.nginx.http}/big.vhdx")):
            target = tmp_path / f"disk{n}.img"
            result = cdi.import_image(source, target)
            assert result.route == "stream-vhdx"
            assert sha256_file(target) == digest
            target.unlink()
    finally:
        image.unlink()


# -- what stays with qemu-img ---------------------------------------------------------------------


def _local_import(image: bytes, tmp_path: Path) -> tuple[cdi.ImportResult, Path]:
    local = tmp_path / "edited.vhdx"
    local.write_bytes(image)
    return cdi.import_image(str(local), tmp_path / "out" / "disk.img"), local


def reversed_blocks(image: bytes) -> bytes:
    """The same disk with its blocks in reverse file order (as Hyper-V, which allocates blocks
    as the guest writes them, may leave them)."""
    out = bytearray(image)
    table, entries = bat(image)
    indexes = present(image)
    places = [entries[n] >> 20 << 20 for n in indexes]
    for n, place in zip(indexes, reversed(places)):
        old = entries[n] >> 20 << 20
        out[place:place + MiB] = image[old:old + MiB]
        struct.pack_into("<Q", out, table + 8 * n, place | 6)
    return bytes(out)


@pytest.mark.parametrize("where", ["local", "http", "no-ranges"])
def test_blocks_out_of_disk_order_stream_sorted(served: Served, tmp_path: Path, where: str) -> None:
    image = reversed_blocks((served.www / "dynamic-1m.vhdx").read_bytes())
    (served.www / "reversed.vhdx").write_bytes(image)
    assert raw_digest(served.www / "reversed.vhdx", "vhdx")[0] == served.digest
    result = cdi.import_image(_source(served, "reversed.vhdx", where), tmp_path / "disk.img")
    assert result.route == "stream-vhdx" and result.bytes_received == len(image)
    assert sha256_file(tmp_path / "disk.img") == served.digest


def test_more_blocks_out_of_order_than_sorted_keep_the_qemu_route(served: Served, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vhdx_plan, "MAX_SORTED", 4)
    result, _ = _local_import(reversed_blocks((served.www / "dynamic-1m.vhdx").read_bytes()), tmp_path)
    assert result.route == "qemu-local"
    assert sha256_file(tmp_path / "out" / "disk.img") == served.digest


@pytest.mark.parametrize("where", ["local", "http"])
def test_a_log_guid_without_a_log_entry_keeps_the_qemu_route(served: Served, tmp_path: Path, where: str) -> None:
    image = with_log(bytearray((served.www / "dynamic.vhdx").read_bytes()), entry=False)
    (served.www / "log-guid.vhdx").write_bytes(image)
    result = cdi.import_image(_source(served, "log-guid.vhdx", where), tmp_path / "disk.img")
    assert result.route == ("qemu-local" if where == "local" else "qemu-nbd")
    assert sha256_file(tmp_path / "disk.img") == served.digest


# -- hostile images --------------------------------------------------------------------------------

Edit = Callable[[bytearray], bytearray]


def _entry(which: int, value: Callable[[bytes, int], int]) -> Edit:
    """Set a present entry (by its rank among the present ones) to ``value(image, entry)``."""
    def edit(image: bytearray) -> bytearray:
        table, entries = bat(bytes(image))
        index = present(bytes(image))[which]
        struct.pack_into("<Q", image, table + 8 * index, value(bytes(image), entries[index]))
        return image
    return edit


def _item(name: str, fmt: str, value: int) -> Edit:
    def edit(image: bytearray) -> bytearray:
        at = item(bytes(image), name)
        if name == "parameters":
            value_now = struct.unpack_from("<I", image, at + 4)[0] | value
            struct.pack_into("<I", image, at + 4, value_now)
        else:
            struct.pack_into(fmt, image, at, value)
        return image
    return edit


def _region(guid: bytes, offset: Callable[[bytes], int], checksum: bool = True) -> Edit:
    def edit(image: bytearray) -> bytearray:
        (count,) = struct.unpack_from("<I", image, REGIONS + 8)
        for at in range(REGIONS + 16, REGIONS + 16 + 32 * count, 32):
            if image[at:at + 16] == guid:
                struct.pack_into("<Q", image, at + 16, offset(bytes(image)))
        if checksum:
            reseal(image, REGIONS, 64 * KiB)
        return image
    return edit


def _block_size(value: int) -> Edit:
    def edit(image: bytearray) -> bytearray:
        struct.pack_into("<I", image, item(bytes(image), "parameters"), value)
        return image
    return edit


HOSTILE: dict[str, tuple[Edit, str]] = {
    "dirty log": (lambda image: with_log(image, entry=True), "has a log that must be replayed.*check -r all"),
    "differencing": (_item("parameters", "", 2), "parent"),
    "block past the end": (_entry(-1, lambda image, entry: ((len(image) >> 20) + 64 << 20) | 6), "truncated"),
    "block over the block table": (_entry(0, lambda image, entry: bat(image)[0] | 6), "overlaps the block table"),
    "block mapped twice": (_entry(1, lambda image, entry: bat(image)[1][present(image)[0]]), "overlaps another one"),
    "partially present block": (_entry(0, lambda image, entry: entry | 7), "partially present"),
    "undefined block state": (_entry(0, lambda image, entry: entry & ~7 | 4), "state 4"),
    "huge block size": (_block_size(512 * MiB), "invalid VHDX block size"),
    "block size not a power of two": (_block_size(3 * MiB), "invalid VHDX block size"),
    "sector size 1024": (_item("sector", "<I", 1024), "logical sector size"),
    "size off the sector": (_item("size", "<Q", SIZE + 100), "multiple of the 512-byte sector"),
    "beyond 64 TiB": (_item("size", "<Q", 1 << 47), "at most 64 TiB"),
    "huge disk, small table": (_item("size", "<Q", 1 << 45), "too small"),
    "metadata over the block table": (_region(METADATA_GUID, lambda image: regions(image)[BAT_GUID][0]),
                                      "overlaps"),
    "region table checksum": (_region(METADATA_GUID, lambda image: 5 * MiB, checksum=False), "checksum"),
    "cut inside a block": (lambda image: image[:len(image) - MiB // 2], "truncated"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_images(served: Served, tmp_path: Path, name: str) -> None:
    edit, match = HOSTILE[name]
    image = edit(bytearray((served.www / "dynamic-1m.vhdx").read_bytes()))
    served_name = f"evil-{name.replace(' ', '-').replace(',', '')}.vhdx"
    expect_refused_served(served.www, served.nginx.http, served_name, bytes(image), tmp_path, match,
                          scratch_dir=tmp_path / "scratch")
    expect_refused(str(served.www / served_name), tmp_path / "local", match)
