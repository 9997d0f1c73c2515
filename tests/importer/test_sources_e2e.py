"""Whole imports from S3 and from an OCI registry, checked by content.

Behaviours under test:
- S3 (SeaweedFS): qcow2 streams with its tables read by range (no scratch, no spill); a VMDK
  is converted by qemu-img reading S3 through the NBD socket; compressed raw streams; a
  checksum is verified for S3 too; a missing key fails fast;
- registry (CNCF distribution): a containerDisk holding a qcow2 is converted while the layer
  streams (no scratch, unlike CDI), one holding a gzip-compressed raw disk is decompressed
  (CDI cannot), labels come from the image env, a wrong tag is ImagePullFailed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import cdi
from tests.conftest import sha256_of
from tests.servers.images import Image
from tests.servers.registry import Member, Pusher, Registry, config_blob, layer
from tests.servers.seaweed import SeaweedS3


@pytest.fixture(scope="module")
def s3_images(seaweed_s3: SeaweedS3, images: dict[str, Image]) -> SeaweedS3:
    for name in ("disk.qcow2", "disk.vmdk", "disk.raw.zst", "disk.vhdx", "disk-sized.vhd"):
        seaweed_s3.put(f"images/{name}", images[name].path.read_bytes())
    return seaweed_s3


@pytest.mark.parametrize("name,route", [("disk.qcow2", "stream-qcow2"), ("disk.vmdk", "stream-vmdk"),
                                        ("disk.raw.zst", "stream-raw"), ("disk.vhdx", "stream-vhdx"),
                                        ("disk-sized.vhd", "qemu-nbd")])
def test_s3_import(name: str, route: str, s3_images: SeaweedS3, images: dict[str, Image], tmp_path: Path) -> None:
    result = cdi.import_image(f"s3://{s3_images.bucket}/images/{name}", tmp_path / "d.img",
                              s3_endpoint=s3_images.http_endpoint, username=s3_images.access_key,
                              password=s3_images.secret_key)
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256
    assert result.route == route and result.scratch_bytes == 0


def test_s3_https_path_style_with_checksum(s3_images: SeaweedS3, images: dict[str, Image],
                                           tmp_path: Path) -> None:
    name = "disk.qcow2"
    url = f"{s3_images.https_endpoint}/{s3_images.bucket}/images/{name}"
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "s3-ca").write_bytes(s3_images.ca_cert.read_bytes())
    result = cdi.import_image(url, tmp_path / "d.img", source_kind="s3", cert_dir=certs,
                              username=s3_images.access_key, password=s3_images.secret_key,
                              checksum=f"sha256:{images[name].file_sha256}")
    assert result.checksum == f"sha256:{images[name].file_sha256}"
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256


def test_s3_missing_key(s3_images: SeaweedS3, tmp_path: Path) -> None:
    with pytest.raises(cdi.SourceNotFound):
        cdi.import_image(f"s3://{s3_images.bucket}/images/nope.qcow2", tmp_path / "d.img",
                         s3_endpoint=s3_images.http_endpoint, username=s3_images.access_key,
                         password=s3_images.secret_key)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def disk_images(registry_images: Registry, images: dict[str, Image]) -> Registry:
    pusher = Pusher(f"https://{registry_images.host}", str(registry_images.ca_dir / "ca.pem"))
    env = ["INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora"]
    for name, how in (("disk.qcow2", "gzip"), ("disk.raw.gz", "none"), ("disk.qcow2.xz", "zstd")):
        members = [Member("disk/", type=b"5", mode=0o555), Member(f"disk/{name}", images[name].path.read_bytes())]
        pusher.image(f"e2e/{name.replace('.', '-')}", "v1", [layer(members, how)], config_blob(env=env))
    return registry_images


@pytest.mark.parametrize("name", ["disk.qcow2", "disk.raw.gz", "disk.qcow2.xz"])
def test_registry_container_disk(name: str, disk_images: Registry, images: dict[str, Image], tmp_path: Path) -> None:
    url = f"docker://{disk_images.host}/e2e/{name.replace('.', '-')}:v1"
    result = cdi.import_image(url, tmp_path / "d.img", cert_dir=disk_images.ca_dir,
                              checksum=f"sha256:{images[name].file_sha256}")
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256
    assert result.route.startswith("stream") and result.scratch_bytes == 0
    assert result.labels == {"instancetype.kubevirt.io/default-preference": "fedora"}


def test_registry_wrong_tag(disk_images: Registry, tmp_path: Path) -> None:
    with pytest.raises(cdi.SourceNotFound) as caught:
        cdi.import_image(f"docker://{disk_images.host}/e2e/disk-qcow2:nope", tmp_path / "d.img",
                         cert_dir=disk_images.ca_dir)
    assert caught.value.reason == "ImagePullFailed"
