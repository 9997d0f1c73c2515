"""Fixtures shared by the importer's tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB block device full of old data (0xaa) that an import must not leave behind."""
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\xaa" * (48 * MiB))
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    yield Path(device)
    subprocess.run(["losetup", "-d", device], check=False)
