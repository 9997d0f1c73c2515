"""The disk the streaming-reader tests (VMDK, VDI, VHD, VHDX) have qemu-img convert into each
format, and the refusal check they share.

The disk is deterministic: random extents at unaligned offsets, zeros written as data, holes,
and data in its last, partial grain, so that block boundaries, zero detection and the tail
are all exercised whatever the format's block size.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

import cdi

MiB = 1 << 20
SIZE = 40 * MiB + 12 * 1024  # the last grain is partial


@dataclass(frozen=True)
class DiskDir:
    root: Path
    www: Path
    """What nginx serves: the tests put their images here."""
    raw: Path
    data_bytes: int
    """Non-zero 4 KiB blocks of the disk, in bytes."""


def make_disk(path: Path) -> int:
    """Writes the disk to ``path``; returns its data bytes (non-zero 4 KiB blocks)."""
    rng = random.Random(29)
    data = 0
    with open(path, "wb") as out:
        out.truncate(SIZE)
        offset = 5000
        while offset < SIZE - 3 * MiB:
            length = rng.choice([4096, 70_000, 300_000, MiB + 123])
            out.seek(offset)
            out.write(bytes(length) if rng.random() < 0.2 else rng.randbytes(length))
            offset += length + rng.choice([0, 4096, 65536, 2 * MiB])
        out.seek(SIZE - 9000)
        out.write(rng.randbytes(9000))
    with open(path, "rb") as raw:
        while block := raw.read(4096):
            data += 4096 if any(block) else 0
    return data


def disk_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> DiskDir:
    """A fresh directory holding the raw disk and an empty ``www`` for the images."""
    root = tmp_path_factory.mktemp(name)
    www = root / "www"
    www.mkdir()
    raw = root / "disk.raw"
    return DiskDir(root, www, raw, make_disk(raw))


def expect_refused(source: str, tmp_path: Path, match: str, **options: object) -> None:
    """The import fails as a permanent image error naming ``match`` and leaves nothing behind."""
    target = tmp_path / "vol"
    target.mkdir(parents=True)
    with pytest.raises(cdi.PermanentError, match=match) as caught:
        cdi.import_image(source, target, **options)  # type: ignore[arg-type]
    assert type(caught.value).__name__ in ("InvalidImage", "ImageTooLarge"), caught.value
    assert list(target.iterdir()) == []  # aborted: no disk.img, no partial file


def expect_refused_served(www: Path, base_url: str, name: str, image: bytes, tmp_path: Path, match: str,
                          **gz_options: object) -> None:
    """Serves a hostile ``image`` as ``name`` and gzipped: both imports over HTTP are refused
    (the compressed one with ``gz_options``, e.g. a scratch directory)."""
    (www / name).write_bytes(image)
    (www / f"{name}.gz").write_bytes(gzip.compress(image, 1))
    expect_refused(f"{base_url}/{name}", tmp_path / "http", match)
    expect_refused(f"{base_url}/{name}.gz", tmp_path / "gz", match, **gz_options)
