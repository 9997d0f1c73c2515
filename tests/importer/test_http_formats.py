"""Every format x compression fixture imported over real nginx, checked by content.

Behaviours under test:
- each image (raw, qcow2, vmdk, vhd, vhdx, vdi, iso; raw/qcow2/vmdk/vhd/iso also in gz, xz,
  zst, bz2) imports to a raw disk whose sha256 equals ``qemu-img convert -O raw`` of it;
- the route taken is the cheapest possible: raw, qcow2, VMDK, VDI, VHD and VHDX stream with
  no scratch at all (also VHDX in gz); a VHD our reader leaves to qemu-img (its size field
  off its geometry) goes through qemu-img over NBD;
- https with the test CA in a cert dir (odd file name), without it (a permanent TLS error),
  and with insecureSkipVerify; basic auth good and bad; checksums right and wrong;
- a target too small for the image fails before anything is written, leaving no file;
- progress rises between 1 % and 99 % on the rate-limited port.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import cdi
from importer.progress import ProgressEvent
from tests.conftest import sha256_of
from tests.servers.images import Image
from tests.servers.nginx import PASSWORD, USER, Nginx

ALL_IMAGES = ["disk.raw", "disk.qcow2", "disk.vmdk", "disk.vhd", "disk.vhdx", "disk.vhdx.gz", "disk.vdi", "tiny.iso",
              "disk-sized.vhd"] + [
    f"{name}.{c}" for name in ("disk.raw", "disk.qcow2", "disk.vmdk", "disk.vhd", "tiny.iso")
    for c in ("gz", "xz", "zst", "bz2")]


def expected_route(name: str) -> str:
    if "qcow2" in name:
        return "stream-qcow2"
    if ".vmdk" in name:
        return "stream-vmdk"
    if ".vdi" in name:
        return "stream-vdi"
    if "disk-sized" in name:
        return "qemu-nbd"  # a VHD our reader leaves to qemu-img (only plain in this list)
    if ".vhdx" in name:
        return "stream-vhdx"
    if ".vhd" in name:
        return "stream-vhd"
    return "stream-raw"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_every_format_and_compression_over_http(name: str, images: dict[str, Image], nginx: Nginx,
                                                tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    image = images[name]
    result = cdi.import_image(f"{nginx.http}/{name}", tmp_path / "disk.img", retry=fast_retry)
    assert sha256_of(tmp_path / "disk.img") == image.raw_sha256
    assert result.virtual_size == image.raw_size
    assert result.route == expected_route(name)
    if result.route.startswith("stream"):
        assert result.bytes_received == image.path.stat().st_size  # each byte read once
        assert result.scratch_bytes == 0
    assert not list(tmp_path.glob(".*partial")) and not list(tmp_path.glob("cdi-scratch-*"))


def test_https_with_ca_dir(images: dict[str, Image], nginx: Nginx, ca_dir: Path, tmp_path: Path) -> None:
    result = cdi.import_image(f"{nginx.https}/disk.qcow2", tmp_path, cert_dir=ca_dir)
    assert sha256_of(Path(result.path)) == images["disk.qcow2"].raw_sha256


def test_https_without_ca_is_a_permanent_tls_error(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(cdi.PermanentError) as caught:
        cdi.import_image(f"{nginx.https}/disk.raw", tmp_path / "disk.img")
    assert caught.value.reason == "TLSError"
    assert "insecureSkipVerify" in str(caught.value)
    assert not (tmp_path / "disk.img").exists()


def test_https_insecure_skip_verify(images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    cdi.import_image(f"{nginx.https}/disk.raw.gz", tmp_path / "d.img", insecure=True)
    assert sha256_of(tmp_path / "d.img") == images["disk.raw"].raw_sha256


def test_basic_auth_over_https(images: dict[str, Image], nginx: Nginx, ca_dir: Path, tmp_path: Path) -> None:
    cdi.import_image(f"{nginx.https_auth}/disk.vhdx", tmp_path / "d.img", username=USER,
                     password=PASSWORD, cert_dir=ca_dir)
    assert sha256_of(tmp_path / "d.img") == images["disk.vhdx"].raw_sha256


def test_bad_credentials_fail_fast(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(cdi.AuthenticationFailed) as caught:
        cdi.import_image(f"{nginx.auth}/disk.raw", tmp_path / "d.img", username=USER, password="wrong")
    assert "401" in str(caught.value)
    assert not (tmp_path / "d.img").exists()


def test_not_found_is_permanent_with_cdi_message(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(cdi.SourceNotFound) as caught:
        cdi.import_image(f"{nginx.http}/nope.qcow2", tmp_path / "d.img")
    assert str(caught.value) == ("Unable to connect to http data source: expected status code 200, "
                                 "got 404. Status: 404 Not Found")


@pytest.mark.parametrize("name", ["disk.raw.xz", "disk.qcow2", "disk.vmdk"])
def test_checksum_verified(name: str, images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    digest = images[name].file_sha256
    result = cdi.import_image(f"{nginx.http}/{name}", tmp_path / "d.img", checksum=f"sha256:{digest}")
    assert result.checksum == f"sha256:{digest}"
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2.gz", "disk.vhd"])
def test_checksum_mismatch_leaves_nothing(name: str, images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    wrong = hashlib.md5(b"not the image").hexdigest()
    with pytest.raises(cdi.ChecksumMismatch) as caught:
        cdi.import_image(f"{nginx.http}/{name}", tmp_path / "d.img", checksum=f"md5:{wrong}")
    assert caught.value.reason == "ChecksumError"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk.vmdk", "disk.raw.zst", "disk.qcow2.xz"])
def test_target_too_small(name: str, nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(cdi.ImageTooLarge) as caught:
        cdi.import_image(f"{nginx.http}/{name}", tmp_path / "d.img", size=8 * 1024 * 1024)
    assert "is larger than the reported available storage" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_resize_to_size_with_overhead(images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    result = cdi.import_image(f"{nginx.http}/disk.qcow2", tmp_path / "d.img", size=size,
                              filesystem_overhead=0.06)
    usable = 94 << 20  # ceil(0.94 * 100 MiB) = 94 MiB
    assert result.disk_size == usable == (tmp_path / "d.img").stat().st_size
    with open(tmp_path / "d.img", "rb") as disk:
        head = disk.read(images["disk.qcow2"].raw_size)
        assert hashlib.sha256(head).hexdigest() == images["disk.qcow2"].raw_sha256
        assert disk.read().count(0) == usable - images["disk.qcow2"].raw_size


def test_output_is_sparse(nginx: Nginx, tmp_path: Path) -> None:
    cdi.import_image(f"{nginx.http}/disk.qcow2.zst", tmp_path / "d.img", size=1 << 30)
    stat = (tmp_path / "d.img").stat()
    assert stat.st_blocks * 512 < 24 * 1024 * 1024  # 1 GiB disk, well under 24 MiB on disk


def test_preallocation_allocates_every_block(nginx: Nginx, tmp_path: Path) -> None:
    result = cdi.import_image(f"{nginx.http}/disk.raw.gz", tmp_path / "d.img", size=64 << 20, preallocate=True)
    assert result.preallocated
    assert (tmp_path / "d.img").stat().st_blocks * 512 >= 64 << 20


@pytest.mark.parametrize("name", ["disk.qcow2", "disk.raw.gz"])
def test_progress_rises_through_the_transfer(name: str, nginx: Nginx, tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    cdi.import_image(f"{nginx.slow}/{name}", tmp_path / "d.img", progress=events.append)
    middle = [e.overall for e in events if e.overall is not None and 1 <= e.overall <= 99]
    assert len(middle) >= 3, events
    assert middle == sorted(middle)
    assert events[-1].phase == "done" and events[-1].overall == 100.0
    assert any(e.rate > 0 for e in events if e.phase == "transfer")
