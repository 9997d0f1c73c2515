"""A qcow2 imported onto a block device that held other data: the clusters the image does not
allocate must read as zeros afterwards, as after ``qemu-img convert`` (a stale guest disk must
never show through a new one)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import cdi

MiB = 1 << 20
SIZE = 8 * MiB


def test_unallocated_clusters_read_as_zeros(tmp_path: Path, loop_device: Path) -> None:
    """``loop_device``: 48 MiB full of 0xaa (tests/importer/conftest.py)."""
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as disk:
        disk.truncate(SIZE)
        for offset in range(0, SIZE, 2 * MiB):  # 64 KiB of data every 2 MiB, holes between
            disk.seek(offset)
            disk.write(bytes(range(256)) * 256)
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    result = cdi.import_image(str(image), loop_device)
    assert result.route == "stream-qcow2"
    with open(loop_device, "rb") as device:
        written = device.read(SIZE)
    assert hashlib.sha256(written).hexdigest() == hashlib.sha256(raw.read_bytes()).hexdigest()
