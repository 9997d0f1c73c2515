"""Memory and spill of the streaming qcow2 reader stay bounded, whatever the image claims.

Behaviours under test (each a ``cdi import`` in a child process, its own peak RSS measured):

* a 130 KiB image whose L2 entries all name one cluster maps 512 MiB; the result is that
  cluster 1 Mi times over, and the import stays under the memory bound (it took 220 MiB);
* images mapping 2 TiB (one shared L2 table, 64 KiB and 4 KiB clusters) and the largest L1
  table qemu allows (4 Mi entries) stay under the bound, plain and gzip-compressed (a
  stream without random access);
* the spill of data stored before its tables is bounded by the target's capacity: a small
  ``.qcow2.gz`` that would spill 64 MiB for a 16 MiB target fails as TooSmall once the spill
  passes what the target could hold, where it used to fill the scratch space; one that
  spills within the capacity converts to what qemu-img makes of it.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.importer.crafted import GiB, MiB, TiB, cdi_import, qcow2_alias

PEAK_RSS_BOUND = 150 * MiB


def _gzip(path: Path) -> Path:
    packed = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    return packed


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def _volume(tmp_path: Path) -> Path:
    volume = tmp_path / "vol"
    volume.mkdir()
    return volume


@pytest.mark.timeout(120)
def test_one_cluster_mapped_512_mib_times_matches_qemu(tmp_path: Path) -> None:
    image = qcow2_alias(tmp_path / "alias.qcow2", 512 * MiB, cluster_bits=9)
    assert image.stat().st_size < 140 * 1024
    outcome = cdi_import(image, _volume(tmp_path))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.peak_rss < PEAK_RSS_BOUND, outcome.peak_rss
    expected = hashlib.sha256()
    block = b"\xab" * (4 * MiB)
    for _ in range(512 // 4):
        expected.update(block)
    assert _sha(tmp_path / "vol" / "disk.img") == expected.hexdigest()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("virtual, cluster_bits", [(2 * TiB, 16), (2 * TiB, 12), (120 * GiB, 9)],
                         ids=["2TiB-64k", "2TiB-4k", "max-L1-512"])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_huge_mappings_stay_under_the_memory_bound(tmp_path: Path, virtual: int,
                                                   cluster_bits: int, compressed: bool) -> None:
    image = qcow2_alias(tmp_path / "huge.qcow2", virtual, cluster_bits, fill=0)
    if compressed:
        image = _gzip(image)
    outcome = cdi_import(image, _volume(tmp_path))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.peak_rss < PEAK_RSS_BOUND, outcome.peak_rss
    disk = tmp_path / "vol" / "disk.img"
    assert disk.stat().st_size == virtual and disk.stat().st_blocks == 0


def _data_before_tables(path: Path, data_bytes: int, mapped: int | None = None) -> Path:
    """A qcow2 (64 KiB clusters) whose L1 sits at the very end: everything before it is
    data of unknown meaning to a stream and must be spilled until the L1 arrives. Only the
    first ``mapped`` bytes of it are mapped (the virtual size); the rest is never used."""
    cs = 1 << 16
    clusters = (mapped or data_bytes) // cs
    l2_count = -(-clusters // (cs // 8))
    l2_offset = cs + data_bytes
    l1_offset = l2_offset + l2_count * cs
    virtual = clusters * cs
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 3, 0, 0, 16, virtual, 0, l2_count,
                         l1_offset, cs, 1, 0, 0) + struct.pack(">QQQII", 0, 0, 0, 4, 104)
    with open(path, "wb") as f:
        f.write(header.ljust(cs, b"\0"))
        for n in range(data_bytes // cs):
            f.write(struct.pack(">Q", n + 1) * (cs // 8))  # non-zero, compressible
        for table in range(l2_count):
            first = table * (cs // 8)
            entries = [(cs + (first + i) * cs) | 1 << 63 for i in range(min(cs // 8, clusters - first))]
            f.write(b"".join(struct.pack(">Q", e) for e in entries).ljust(cs, b"\0"))
        f.write(b"".join(struct.pack(">Q", (l2_offset + t * cs) | 1 << 63)
                         for t in range(l2_count)).ljust(cs, b"\0"))
    return path


@pytest.fixture
def small_scratch(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs: room for what a 16 MiB target may spill, not for a 64 MiB spill."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", scratch], check=True)
    try:
        yield scratch
    finally:
        subprocess.run(["umount", scratch], check=True)


@pytest.mark.timeout(120)
def test_spill_is_bounded_by_the_target_capacity(tmp_path: Path, small_scratch: Path) -> None:
    """64 MiB of data ahead of the tables (8 MiB of it mapped), a 16 MiB target: the spill
    stops at what the target could hold (TooSmall) instead of filling the scratch space."""
    image = _gzip(_data_before_tables(tmp_path / "late.qcow2", 64 * MiB, mapped=8 * MiB))
    outcome = cdi_import(image, _volume(tmp_path), "--size", "16Mi", "--scratch-dir",
                         small_scratch)
    assert outcome.returncode == 2, outcome.stderr
    assert "TooSmall" in outcome.stderr and "spilled" in outcome.stderr, outcome.stderr
    assert list(small_scratch.iterdir()) == [] and not (tmp_path / "vol" / "disk.img").exists()


@pytest.mark.timeout(120)
def test_spill_within_capacity_still_converts(tmp_path: Path) -> None:
    raw = _data_before_tables(tmp_path / "late.qcow2", 8 * MiB)
    outcome = cdi_import(_gzip(raw), _volume(tmp_path), "--size", "64Mi")
    assert outcome.returncode == 0, outcome.stderr
    reference = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", raw, reference], check=True)
    subprocess.run(["qemu-img", "resize", "-f", "raw", reference, "64M"], check=True,
                   capture_output=True)
    assert _sha(tmp_path / "vol" / "disk.img") == _sha(reference)
