"""Images qemu-img would convert are inspected by our own parsers first.

Behaviours under test, each through ``cdi import`` of a local file (the ``qemu-local``
route) or a library call:

* VMDK (sparse and streamOptimized), VHD, VHDX and VDI made by qemu-img pass; cut short
  (a truncated download) each is refused as InvalidImage ("truncated"), where it used to
  import with the missing part silently zero;
* a differencing VHD, VHDX or VDI, and a VMDK naming a parent, are refused as needing their
  parent;
* a VMDK whose header defers to its descriptor, and whose descriptor names a FIFO, is
  refused at once as UnsafeImage (qemu-img used to open the FIFO and block for a minute);
* qemu-img made images of every format still import and match qemu-img's own conversion.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from importer.formats.inspect import inspect_file
from tests.importer.crafted import MiB, cdi_import

FORMATS = {  # name: (qemu-img format, our kind, options)
    "vmdk": ("vmdk", "vmdk", []),
    "vmdk-stream": ("vmdk", "vmdk", ["-o", "subformat=streamOptimized"]),
    "vhd": ("vpc", "vhd", []),
    "vhdx": ("vhdx", "vhdx", []),
    "vdi": ("vdi", "vdi", []),
    "vdi-static": ("vdi", "vdi", ["-o", "static=on"]),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("inspect")
    raw = work / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(48 * MiB)
        for n, offset in enumerate((0, 5 * MiB, 30 * MiB, 48 * MiB - 300_000)):
            f.seek(offset)
            f.write(os.urandom(300_000) if n % 2 else bytes([n + 1]) * 300_000)
    made = {"raw": raw}
    for name, (fmt, _, options) in FORMATS.items():
        made[name] = work / f"{name}.img"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options, raw,
                        made[name]], check=True)
    return made


def _volume(tmp_path: Path) -> Path:
    volume = tmp_path / "vol"
    volume.mkdir()
    return volume


def _copy(image: Path, tmp_path: Path, suffix: str) -> Path:
    out = tmp_path / f"{image.stem}{suffix}"
    shutil.copy(image, out)
    return out


@pytest.mark.parametrize("name", list(FORMATS))
def test_qemu_made_images_pass_and_import(images: dict[str, Path], tmp_path: Path,
                                          name: str) -> None:
    inspect_file(FORMATS[name][1], images[name])
    outcome = cdi_import(images[name], _volume(tmp_path))
    assert outcome.returncode == 0, outcome.stderr
    reference = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", images[name], reference], check=True)
    with open(tmp_path / "vol" / "disk.img", "rb") as got, open(reference, "rb") as want:
        assert got.read() == want.read()


@pytest.mark.parametrize("name", list(FORMATS))
def test_truncated_images_are_refused(images: dict[str, Path], tmp_path: Path, name: str) -> None:
    image = _copy(images[name], tmp_path, ".cut")
    cut = 513 if name == "vhd" else 150_000  # the closing footer and one byte of data
    os.truncate(image, image.stat().st_size - cut)
    outcome = cdi_import(image, _volume(tmp_path))
    assert outcome.returncode == 2, outcome.stdout + outcome.stderr
    assert "InvalidImage" in outcome.stderr and "image is truncated" in outcome.stderr, \
        outcome.stderr
    assert not (tmp_path / "vol" / "disk.img").exists()


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _vhd_differencing(path: Path) -> None:
    size = path.stat().st_size
    for footer in (0, size - 512):
        _patch(path, footer + 60, struct.pack(">I", 4))


def _vdi_differencing(path: Path) -> None:
    _patch(path, 0x4C, struct.pack("<I", 4))
    _patch(path, 0x1A8, uuid.uuid4().bytes)


def _vhdx_differencing(path: Path) -> None:
    data = path.read_bytes()
    guid = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
    entry = data.index(guid, 192 * 1024 + 64 * 1024)  # in the metadata table
    table_start = data.rindex(b"metadata", 0, entry)
    (item,) = struct.unpack_from("<I", data, entry + 16)
    _patch(path, table_start + item + 4, struct.pack("<I", 2))


def _vmdk_with_parent(path: Path) -> None:
    text = ('# Disk DescriptorFile\nversion=1\nCID=23fe5da7\nparentCID=12345678\n'
            'createType="monolithicSparse"\nparentFileNameHint="/dev/zero"\n'
            'RW 98304 SPARSE "x.vmdk"\n').encode()
    _patch(path, 512, text.ljust(1024, b"\0"))


@pytest.mark.parametrize("name, make", [("vhd", _vhd_differencing), ("vdi", _vdi_differencing),
                                        ("vhdx", _vhdx_differencing),
                                        ("vmdk", _vmdk_with_parent)])
def test_differencing_images_are_refused(images: dict[str, Path], tmp_path: Path, name: str,
                                         make: object) -> None:
    image = _copy(images[name], tmp_path, ".diff")
    make(image)  # type: ignore[operator]
    outcome = cdi_import(image, _volume(tmp_path))
    assert outcome.returncode == 2, outcome.stdout + outcome.stderr
    assert "InvalidImage" in outcome.stderr and "parent" in outcome.stderr, outcome.stderr


@pytest.mark.timeout(60)
def test_vmdk_descriptor_naming_a_fifo_is_refused_before_qemu_img(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    descriptor = ('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                  f'createType="monolithicFlat"\nRW 2048 FLAT "{fifo}" 0\n').encode()
    header = struct.pack("<4sIIQQQQIQQQ?4sH", b"KDMV", 1, 3, 0, 128, 1, 2, 512, 0, 0, 128,
                         False, b"\n \r\n", 0)
    image = tmp_path / "evil.vmdk"
    image.write_bytes(header.ljust(512, b"\0") + descriptor.ljust(1024, b"\0"))
    outcome = cdi_import(image, _volume(tmp_path), timeout=30)
    assert outcome.returncode == 2, outcome.stdout + outcome.stderr
    assert "UnsafeImage" in outcome.stderr and "monolithicFlat" in outcome.stderr, outcome.stderr
