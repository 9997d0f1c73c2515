"""Limits on what an image or an option may ask for: each a classified error, no traceback.

Behaviours under test (``cdi`` in a child process):

* ``--filesystem-overhead`` of nan, inf, -1 or 1.5, and an absurd ``--size``, are InvalidSource
  (exit 2) before anything is touched; ``cdi blank --size 1Ei`` on a filesystem that cannot
  hold such a file is TooSmall;
* a qcow2 of 2 EiB virtual size with no ``--size`` is TooSmall before any byte is written;
* five nested compression layers are refused (four still import);
* a zstd frame that needs a 1 GiB window is refused as needing too much memory.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from tests.importer.crafted import CDI, cdi_import, qcow2_alias


def _volume(tmp_path: Path) -> Path:
    volume = tmp_path / "vol"
    volume.mkdir()
    return volume


@pytest.fixture
def small_qcow2(tmp_path: Path) -> Path:
    return qcow2_alias(tmp_path / "small.qcow2", 4 << 20, 16)


@pytest.mark.parametrize("option", [("--filesystem-overhead", "nan"),
                                    ("--filesystem-overhead", "inf"),
                                    ("--filesystem-overhead", "-1"),
                                    ("--filesystem-overhead", "1.5"),
                                    ("--size", "1e30")])
def test_absurd_options_are_invalid(tmp_path: Path, small_qcow2: Path,
                                    option: tuple[str, str]) -> None:
    volume = _volume(tmp_path)
    outcome = cdi_import(small_qcow2, volume, *option)
    assert outcome.returncode == 2, outcome.stderr
    assert "InvalidSource" in outcome.stderr and "Traceback" not in outcome.stderr
    assert list(volume.iterdir()) == []


def test_blank_larger_than_the_filesystem_is_too_small(tmp_path: Path) -> None:
    done = subprocess.run([*CDI, "blank", str(_volume(tmp_path)), "--size", "1Ei"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "TooSmall" in done.stderr and "Traceback" not in done.stderr


def test_huge_qcow2_without_size_is_too_small(tmp_path: Path) -> None:
    image = qcow2_alias(tmp_path / "huge.qcow2", 1 << 61, 21, fill=0)
    volume = _volume(tmp_path)
    outcome = cdi_import(image, volume)
    assert outcome.returncode == 2, outcome.stderr
    assert "TooSmall" in outcome.stderr and "Traceback" not in outcome.stderr
    assert list(volume.iterdir()) == []


def _nest(image: Path, layers: int) -> Path:
    data = image.read_bytes()
    for _ in range(layers):
        data = gzip.compress(data, compresslevel=1)
    out = image.with_name(f"{image.name}.{layers}gz")
    out.write_bytes(data)
    return out


def test_compression_nests_at_most_four_deep(tmp_path: Path, small_qcow2: Path) -> None:
    outcome = cdi_import(_nest(small_qcow2, 5), _volume(tmp_path))
    assert outcome.returncode == 2 and "more than 4 times" in outcome.stderr, outcome.stderr
    other = tmp_path / "ok"
    other.mkdir()
    assert cdi_import(_nest(small_qcow2, 4), other).returncode == 0


def test_zstd_window_beyond_the_memory_bound_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "big-window.zst"
    with open(image, "wb") as out:  # from a pipe: zstd keeps the 1 GiB window it was told
        subprocess.run(["zstd", "-q", "--long=30", "-c"], input=os.urandom(2 << 20),
                       stdout=out, check=True)
    outcome = cdi_import(image, _volume(tmp_path))
    assert outcome.returncode == 2, outcome.stderr
    assert "InvalidImage" in outcome.stderr and "more memory" in outcome.stderr, outcome.stderr
