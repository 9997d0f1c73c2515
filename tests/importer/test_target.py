"""The target writer, on files and on a real block device (a loop device).

Behaviours under test:
- zero blocks become holes in files; data lands at the right offsets;
- writes past the capacity fail with ImageTooLarge and the partial file is removed;
- nothing named ``disk.img`` exists until commit; abort leaves the directory empty;
- on a block device, zero runs are punched (read back as zero even over old data), a
  failed import zeroes the start of the device, and preallocation writes the whole device;
- usable space follows CDI's formula.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from importer.errors import ImageTooLarge
from importer.target import MiB, DiskTarget, TargetSpec, data_runs, usable_space


def test_usable_space_matches_cdi() -> None:
    assert usable_space(1 << 30, 0.055) == 967 * MiB  # ceil(0.945 * 1 GiB) = 967.67 MiB
    assert usable_space(1 << 30, 0.0) == 1 << 30


def test_data_runs() -> None:
    block = 64 * 1024
    data = bytes(block) + b"x" * block + b"y" * 10 + bytes(block - 10) + bytes(block)
    assert data_runs(data) == [(block, 2 * block + 4096)]
    assert data_runs(bytes(4 * block)) == []


def test_data_runs_are_aligned_to_the_disk_not_the_chunk() -> None:
    """A chunk at an odd disk offset (a decompressor's output) finds the disk's 4 KiB blocks:
    a data block that starts 100 bytes into the chunk is written from there, no earlier."""
    data = bytes(100) + b"x" * 4096 + bytes(8192)
    assert data_runs(data, offset=4096 - 100) == [(100, 100 + 4096)]
    assert data_runs(data, offset=0) == [(0, 8192)]  # blocks [0,4096) and [4096,8192) hold data


def test_odd_sized_chunks_write_only_the_data_blocks(tmp_path: Path) -> None:
    """Scattered 4 KiB data blocks written in chunks of odd sizes (as gzip or xz hand them
    out) allocate the data blocks and no other (the goal: at most 1.01x the data bytes)."""
    disk = bytearray(16 * MiB)
    blocks = range(0, len(disk) // 4096, 3)
    for index in blocks:
        disk[index * 4096:(index + 1) * 4096] = os.urandom(4096)
    with DiskTarget(TargetSpec(tmp_path)) as target:
        offset = 0
        for size in itertools.cycle((1_000_003, 777_777, 65_537)):
            if offset >= len(disk):
                break
            target.write_at(offset, bytes(disk[offset:offset + size]))
            offset += size
        target.commit(len(disk))
    written = (tmp_path / "disk.img")
    assert written.read_bytes() == disk
    # st_blocks also counts ext4's extent-tree blocks for this very fragmented file
    assert len(blocks) * 4096 <= written.stat().st_blocks * 512 <= len(blocks) * 4096 * 1.01


def test_file_holes_and_commit(tmp_path: Path) -> None:
    with DiskTarget(TargetSpec(tmp_path, size=8 * MiB)) as target:
        target.write_at(0, bytes(2 * MiB))
        target.write_at(3 * MiB, b"\x01" * MiB)
        assert not (tmp_path / "disk.img").exists()
        size = target.commit(4 * MiB)
    disk = tmp_path / "disk.img"
    assert size == 8 * MiB == disk.stat().st_size
    assert disk.stat().st_blocks * 512 <= MiB + 64 * 1024
    data = disk.read_bytes()
    assert data[3 * MiB:4 * MiB] == b"\x01" * MiB and data.count(0) == 7 * MiB


def test_capacity_enforced_and_partial_removed(tmp_path: Path) -> None:
    with pytest.raises(ImageTooLarge):
        with DiskTarget(TargetSpec(tmp_path / "disk.img", size=MiB)) as target:
            target.write_at(0, b"a" * MiB)
            target.write_at(MiB, b"b")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    if not shutil.which("losetup"):
        pytest.fail("losetup missing: scripts/setup installs util-linux")
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.write(b"\xaa" * (16 * MiB))  # old data the import must not leave behind
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    yield Path(device)
    subprocess.run(["losetup", "-d", device], check=False)


def test_block_device_zero_runs_read_as_zero(loop_device: Path) -> None:
    with DiskTarget(TargetSpec(loop_device)) as target:
        assert target.is_block and target.capacity == 16 * MiB
        target.write_at(0, b"\x01" * MiB + bytes(2 * MiB) + b"\x02" * MiB)
        target.commit(4 * MiB)
    with open(loop_device, "rb") as dev:
        data = dev.read(4 * MiB)
    assert data[:MiB] == b"\x01" * MiB and data[MiB:3 * MiB] == bytes(2 * MiB)
    assert data[3 * MiB:] == b"\x02" * MiB


def test_block_device_failure_is_marked(loop_device: Path) -> None:
    with pytest.raises(ImageTooLarge):
        with DiskTarget(TargetSpec(loop_device)) as target:
            target.write_at(0, b"\x03" * MiB)
            target.check_fits(32 * MiB)
    with open(loop_device, "rb") as dev:
        assert dev.read(MiB) == bytes(MiB)


def test_block_device_preallocation_writes_everything(loop_device: Path) -> None:
    with DiskTarget(TargetSpec(loop_device, preallocate=True)) as target:
        target.write_at(0, b"\x04" * 1000)
        target.commit(1000)
    with open(loop_device, "rb") as dev:
        data = dev.read()
    assert data[:1000] == b"\x04" * 1000 and data[1000:].count(0) == 16 * MiB - 1000
    os.sync()
