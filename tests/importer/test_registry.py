"""The registry source against real registries (CNCF distribution 2.8, see tests/servers/registry.py).

Behaviours under test (CDI's registry import, cdi.md 3.9, 3.10 and 6.4 item 16):

* pull by tag and by digest over TLS, trusting the test CA from a cert dir whose file is ``ca.pem``;
  gzip, zstd and uncompressed layers; the disk in the 2nd layer after whiteouts, links and dirs;
* TLS: a missing CA is a permanent AuthenticationFailed; ``insecure`` skips verification and
  falls back to plain http; a plain-http registry without ``insecure`` is refused;
* auth: htpasswd Basic (good, wrong, missing credentials) and Bearer tokens from a token service;
* multi-arch: OCI index and docker manifest list, amd64/arm64/s390x picked by content; a
  missing platform lists those available; an explicit architecture must match a single-arch image;
* wrong tag or repository: SourceNotFound with reason ImagePullFailed;
* ``*KUBEVIRT_IO_*`` env vars become labels; bootc images are refused;
* path escapes are UnsafeImage; an image without ``disk/`` is InvalidImage;
* a connection cut mid-layer resumes with a Range request and yields identical bytes; a byte
  corrupted in transit is a digest mismatch (InvalidImage), never a silently skipped layer;
* the tar reader and the name/label rules on their own, as tables.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from importer.errors import (
    AuthenticationFailed,
    InvalidImage,
    InvalidSource,
    PermanentError,
    SourceNotFound,
    SourceUnavailable,
    UnsafeImage,
)
from importer.sources import RetryPolicy, SourceOptions, open_source
from importer.sources.registry import RegistrySource
from importer.sources.registry.client import parse_challenge
from importer.sources.registry.labels import env_labels, env_to_label
from importer.sources.registry.manifest import host_architecture
from importer.sources.registry.reference import ImageReference, parse_reference
from importer.formats.tarstream import TarStream, escapes, find_member, normalize
from importer.stream import ChunkReader
from tests.servers.faultproxy import FaultProxy
from tests.servers.ports import free_port
from tests.servers.registry import Member, Registry, tar_bytes  # fixtures come from conftest's plugins

pytestmark = pytest.mark.timeout(120)

FAST = RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.2, stall_timeout=10, connect_timeout=5)
EXPECTED_LABELS = {
    "instancetype.kubevirt.io/default-instancetype": "u1.small",
    "instancetype.kubevirt.io/default-preference": "fedora",
}


def options(registry: Registry | None = None, **overrides: object) -> SourceOptions:
    """Options trusting the test CA (when the registry has one), with quick retries."""
    values: dict[str, object] = {"retry": FAST}
    if registry is not None and registry.ca_dir is not None:
        values["cert_dir"] = registry.ca_dir
    values.update(overrides)
    return SourceOptions(**values)  # type: ignore[arg-type]


def pull(url: str, opts: SourceOptions, start: int = 0) -> tuple[str, int, RegistrySource]:
    """Open the source and read it all: (sha256 of the bytes, their count, the source)."""
    source = open_source(url, opts)
    assert isinstance(source, RegistrySource)
    with source:
        info = source.open()
        digest = hashlib.sha256()
        count = 0
        for chunk in source.chunks(start):
            digest.update(chunk)
            count += len(chunk)
        assert info.random_access is False
        if start == 0:
            assert info.size == count
    return digest.hexdigest(), count, source


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Pulling over TLS


def test_pull_by_tag_with_ca_named_pem(registry_images: Registry) -> None:
    """The CA reaches us as ``ca.pem``: every file of the cert dir is trusted, whatever its name."""
    assert [p.name for p in registry_images.ca_dir.iterdir()] == ["ca.pem"]  # type: ignore[union-attr]
    image = registry_images.images["simple"]
    digest, count, _ = pull(registry_images.url("simple"), options(registry_images))
    assert (digest, count) == (image.sha256(), len(image.disk))


def test_pull_by_digest(registry_images: Registry) -> None:
    image = registry_images.images["simple"]
    digest, _, source = pull(registry_images.url("simple", by_digest=True), options(registry_images))
    assert digest == image.sha256()
    assert source.manifest_digest == image.digest


def test_open_describes_the_image(registry_images: Registry) -> None:
    """open() knows the disk size (from the tar header), the name and the labels."""
    with RegistrySource(registry_images.url("simple"), options(registry_images)) as source:
        info = source.open()
    assert info.size == len(registry_images.images["simple"].disk)
    assert info.name == registry_images.url("simple")
    assert info.labels == EXPECTED_LABELS


@pytest.mark.parametrize("name", ["plain", "zstd", "multilayer", "big"])
def test_layer_kinds(registry_images: Registry, name: str) -> None:
    """Uncompressed and zstd layers; the disk in a 2nd layer after whiteouts, a link and dirs."""
    digest, _, _ = pull(registry_images.url(name), options(registry_images))
    assert digest == registry_images.images[name].sha256()


def test_unreadable_layer_skipped(registry_images: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="importer.sources.registry")
    digest, _, _ = pull(registry_images.url("junk"), options(registry_images))
    assert digest == registry_images.images["junk"].sha256()
    assert "skipping application/vnd.oci.empty.v1+json blob" in caplog.text
    assert "skipping unreadable layer" in caplog.text


def test_chunks_from_an_offset(registry_images: Registry) -> None:
    disk = registry_images.images["simple"].disk
    digest, count, _ = pull(registry_images.url("simple"), options(registry_images), start=1000)
    assert (digest, count) == (sha(disk[1000:]), len(disk) - 1000)


def test_chunks_twice_rescans(registry_images: Registry) -> None:
    """A second chunks() call (after a failure upstream, say) starts over by itself."""
    disk = registry_images.images["plain"].disk
    with RegistrySource(registry_images.url("plain"), options(registry_images)) as source:
        source.open()
        first = b"".join(source.chunks())
        second = b"".join(source.chunks())
    assert first == second == disk


# ---------------------------------------------------------------------------------------------
# TLS and the insecure path


def test_missing_ca_is_permanent_tls_failure(registry_images: Registry) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        pull(registry_images.url("simple"), options())
    assert caught.value.permanent
    assert "TLS" in str(caught.value) and "certificate" in str(caught.value).lower()


def test_insecure_skips_verification(registry_images: Registry) -> None:
    digest, _, _ = pull(registry_images.url("simple"), options(insecure=True))
    assert digest == registry_images.images["simple"].sha256()


def test_insecure_falls_back_to_http(http_registry: Registry) -> None:
    digest, _, _ = pull(http_registry.url("zstd"), options(insecure=True))
    assert digest == http_registry.images["zstd"].sha256()


def test_plain_http_registry_needs_insecure(http_registry: Registry) -> None:
    with pytest.raises(AuthenticationFailed, match="insecure"):
        pull(http_registry.url("simple"), options())


def test_unreachable_registry_is_temporary() -> None:
    with pytest.raises(SourceUnavailable):
        pull(f"docker://127.0.0.1:{free_port()}/disks/simple:v1", options())


# ---------------------------------------------------------------------------------------------
# Authentication


def test_basic_auth_good_credentials(basic_registry: Registry) -> None:
    opts = options(basic_registry, access_key_id=basic_registry.username, secret_key=basic_registry.password)
    digest, _, _ = pull(basic_registry.url("simple"), opts)
    assert digest == basic_registry.images["simple"].sha256()


@pytest.mark.parametrize("credentials", [("cdi-user", "wrong"), (None, None)])
def test_basic_auth_refused(basic_registry: Registry, credentials: tuple[str | None, str | None]) -> None:
    opts = options(basic_registry, access_key_id=credentials[0], secret_key=credentials[1])
    with pytest.raises(AuthenticationFailed) as caught:
        pull(basic_registry.url("simple"), opts)
    assert caught.value.permanent


def test_token_auth(token_registry: Registry) -> None:
    opts = options(token_registry, access_key_id=token_registry.username, secret_key=token_registry.password)
    digest, _, _ = pull(token_registry.url("multilayer"), opts)
    assert digest == token_registry.images["multilayer"].sha256()
    assert token_registry.token_server is not None
    asked = token_registry.token_server.requests[-1]
    assert asked["user"] == token_registry.username
    assert asked["query"]["service"] == ["cdi-test-registry"]
    assert asked["query"]["scope"] == ["repository:disks/multilayer:pull"]


def test_token_auth_wrong_password(token_registry: Registry) -> None:
    opts = options(token_registry, access_key_id=token_registry.username, secret_key="nope")
    with pytest.raises(AuthenticationFailed, match="refused the credentials"):
        pull(token_registry.url("simple"), opts)


def test_token_auth_anonymous_gets_no_access(token_registry: Registry) -> None:
    """An anonymous token without pull access: the registry still answers 401."""
    with pytest.raises(AuthenticationFailed) as caught:
        pull(token_registry.url("simple"), options(token_registry))
    assert caught.value.reason == "ImagePullFailed"


# ---------------------------------------------------------------------------------------------
# Platforms


@pytest.mark.parametrize("name", ["multiarch", "multiarch-docker"])
@pytest.mark.parametrize("architecture", ["amd64", "arm64", "s390x"])
def test_multiarch_choice(registry_images: Registry, name: str, architecture: str) -> None:
    image = registry_images.images[name]
    digest, _, _ = pull(registry_images.url(name), options(registry_images, architecture=architecture))
    assert digest == image.sha256(architecture)
    assert len({image.sha256(arch) for arch in image.disks}) == 3


def test_multiarch_defaults_to_host(registry_images: Registry) -> None:
    image = registry_images.images["multiarch"]
    if host_architecture() not in image.disks:
        pytest.fail(f"the multi-arch test image has no disk for this host's {host_architecture()}")
    digest, _, _ = pull(registry_images.url("multiarch"), options(registry_images))
    assert digest == image.sha256(host_architecture())


def test_multiarch_missing_platform_lists_available(registry_images: Registry) -> None:
    with pytest.raises(PermanentError) as caught:
        pull(registry_images.url("multiarch"), options(registry_images, architecture="ppc64le"))
    message = str(caught.value)
    assert "linux/ppc64le" in message
    assert "linux/amd64, linux/arm64, linux/s390x" in message


def test_single_arch_mismatch(registry_images: Registry) -> None:
    with pytest.raises(PermanentError, match="linux/amd64, not the requested architecture arm64"):
        pull(registry_images.url("simple"), options(registry_images, architecture="arm64"))


# ---------------------------------------------------------------------------------------------
# Not found, labels, refusals


@pytest.mark.parametrize("path", ["disks/simple:no-such-tag", "disks/no-such-repo:v1"])
def test_not_found_is_image_pull_failed(registry_images: Registry, path: str) -> None:
    with pytest.raises(SourceNotFound) as caught:
        pull(f"docker://{registry_images.host}/{path}", options(registry_images))
    assert caught.value.reason == "ImagePullFailed"
    assert "not found" in str(caught.value) and "image" in str(caught.value)


def test_bootc_image_refused(registry_images: Registry) -> None:
    with pytest.raises(PermanentError, match="bootable container"):
        pull(registry_images.url("bootc"), options(registry_images))


@pytest.mark.parametrize("name", ["evil-dotdot", "evil-abs"])
def test_path_escape_is_unsafe(registry_images: Registry, name: str) -> None:
    with pytest.raises(UnsafeImage, match="escapes"):
        pull(registry_images.url(name), options(registry_images))


def test_no_disk_is_invalid(registry_images: Registry) -> None:
    with pytest.raises(InvalidImage, match="no disk image found under disk/ in the container image layers"):
        pull(registry_images.url("nodisk"), options(registry_images))


# ---------------------------------------------------------------------------------------------
# Broken and corrupted connections


@pytest.fixture
def proxy_factory() -> Iterator[list[FaultProxy]]:
    proxies: list[FaultProxy] = []
    yield proxies
    for proxy in proxies:
        proxy.close()


def _through_proxy(registry: Registry, proxies: list[FaultProxy], at: int, fault: str) -> tuple[FaultProxy, str]:
    proxy = FaultProxy(registry.port, at, fault)
    proxies.append(proxy)
    return proxy, f"127.0.0.1:{proxy.port}"


def test_cut_connection_resumes_with_range(http_registry: Registry, proxy_factory: list[FaultProxy],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The gzip layer breaks at 3 MiB; the source asks for the rest with Range and the
    decompressor carries on, so the disk bytes are identical and nothing is fetched twice."""
    image = http_registry.images["big"]
    proxy, host = _through_proxy(http_registry, proxy_factory, 3 * 1024 * 1024, "cut")
    caplog.set_level(logging.WARNING, logger="importer.sources.base")
    digest, _, _ = pull(image.url(host), options(insecure=True))
    assert proxy.faults
    assert digest == image.sha256()
    assert b"Range: bytes=" in proxy.client_bytes
    assert "resuming at byte" in caplog.text
    assert proxy.sent < len(image.disk) + 1024 * 1024  # resumed, not restarted from byte 0


def test_cut_connection_resumes_over_tls(registry_images: Registry, proxy_factory: list[FaultProxy],
                                         caplog: pytest.LogCaptureFixture) -> None:
    image = registry_images.images["big"]
    proxy, host = _through_proxy(registry_images, proxy_factory, 2 * 1024 * 1024, "cut")
    caplog.set_level(logging.WARNING, logger="importer.sources.base")
    digest, _, _ = pull(image.url(host), options(registry_images))
    assert proxy.faults and digest == image.sha256()
    assert "resuming at byte" in caplog.text


@pytest.mark.parametrize("name", ["plain", "big"])
def test_corrupted_byte_is_digest_mismatch(http_registry: Registry, proxy_factory: list[FaultProxy],
                                           name: str) -> None:
    """Uncompressed: the disk bytes flow, then the layer digest fails. gzip: the inflater
    fails first, and the digest check names the real cause instead of skipping the layer."""
    proxy, host = _through_proxy(http_registry, proxy_factory, 1024 * 1024, "flip")
    with pytest.raises(InvalidImage, match="digest mismatch"):
        pull(http_registry.images[name].url(host), options(insecure=True))
    assert proxy.faults


# ---------------------------------------------------------------------------------------------
# Rules as tables


@pytest.mark.parametrize(("env", "label"), [
    ("KUBEVIRT_IO_TEST", "kubevirt.io/test"),
    ("KUBEVIRT_IO_TEST_TEST", "kubevirt.io/test-test"),
    ("TEST_KUBEVIRT_IO_TEST", "test.kubevirt.io/test"),
    ("TEST_TEST_KUBEVIRT_IO_TEST", "test.test.kubevirt.io/test"),
    ("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE", "instancetype.kubevirt.io/default-preference"),
])
def test_env_to_label(env: str, label: str) -> None:
    assert env_to_label(env) == label


def test_env_labels_ignores_others() -> None:
    assert env_labels(["SOMETHING_ELSE_IO=x", "NOTAVALIDENVVAR", "kubevirt_io_os=linux",
                       "KUBEVIRT_IO_OS=linux=yes"]) == {"kubevirt.io/os": "linux=yes"}


@pytest.mark.parametrize(("url", "expected"), [
    ("docker://quay.io/kubevirt/cirros:v1", ImageReference("quay.io", "kubevirt/cirros", "v1")),
    ("docker://127.0.0.1:5000/a/b", ImageReference("127.0.0.1:5000", "a/b", "latest")),
    ("docker://localhost/disk@sha256:" + "a" * 64, ImageReference("localhost", "disk", None, "sha256:" + "a" * 64)),
    ("docker://fedora", ImageReference("docker.io", "library/fedora", "latest")),
    ("docker://kubevirt/fedora:39", ImageReference("docker.io", "kubevirt/fedora", "39")),
    ("oci://reg.example:8443/x/y:z", ImageReference("reg.example:8443", "x/y", "z")),
])
def test_parse_reference(url: str, expected: ImageReference) -> None:
    assert parse_reference(url) == expected


@pytest.mark.parametrize("url", ["http://x/y", "docker://Reg.io/UPPER:tag", "docker://r.io/a@sha256:12",
                                 "docker://user:pw@r.io/a"])
def test_parse_reference_refuses(url: str) -> None:
    with pytest.raises(InvalidSource):
        parse_reference(url)


def test_parse_challenge() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.io/token",service="reg.io",'
                                'scope="repository:a/b:pull,push"')
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.io/token", "service": "reg.io",
                                "scope": "repository:a/b:pull,push"}


def _tar_stream(data: bytes) -> TarStream:
    return TarStream(ChunkReader(iter([data[i:i + 777] for i in range(0, len(data), 777)])))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tarstream_long_names(fmt: int) -> None:
    """GNU ``L`` members, PAX ``path`` records and the ustar prefix all give the full name."""
    name = "disk/" + "d" * 60 + "/" + "n" * 80 + ".img"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for member, content in (("etc/x", b"1"), (name, b"disk bytes")):
            info = tarfile.TarInfo(member)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    tar = _tar_stream(out.getvalue())
    entry = find_member(tar, "disk")
    assert entry is not None and entry.name == name
    assert b"".join(tar.data()) == b"disk bytes"


def test_tarstream_bad_checksum() -> None:
    data = bytearray(tar_bytes([Member("disk/a", b"x")]))
    data[0] ^= 1
    with pytest.raises(InvalidImage, match="checksum"):
        find_member(_tar_stream(bytes(data)), "disk")


def test_tarstream_truncated_member() -> None:
    data = tar_bytes([Member("disk/a", b"x" * 5000)])[:2048]
    tar = _tar_stream(data)
    assert find_member(tar, "disk") is not None
    with pytest.raises(InvalidImage, match="truncated"):
        b"".join(tar.data())


@pytest.mark.parametrize(("name", "normal", "escaping"), [
    ("./disk//a.img", "disk/a.img", False),
    ("disk/../../etc/evil", "disk/../../etc/evil", True),
    ("/abs/disk/x", "/abs/disk/x", True),
    ("disk/a..b", "disk/a..b", False),
])
def test_paths(name: str, normal: str, escaping: bool) -> None:
    assert normalize(name) == normal
    assert escapes(name) is escaping


def test_symlink_under_disk_is_skipped_not_followed() -> None:
    data = tar_bytes([Member("disk/link", type=tarfile.SYMTYPE, linkname="/etc/shadow"),
                      Member("disk/real.img", b"real")])
    tar = _tar_stream(data)
    entry = find_member(tar, "disk")
    assert entry is not None and entry.name == "disk/real.img"


def test_cert_dir_ignores_dot_files_and_garbage(registry_images: Registry, tmp_path: Path) -> None:
    """A mounted ConfigMap has ``..data`` links; a non-certificate file is skipped, not fatal."""
    (tmp_path / "..data").mkdir()
    (tmp_path / "readme.txt").write_text("not a certificate")
    (tmp_path / "tls.crt").write_bytes((registry_images.ca_dir / "ca.pem").read_bytes())  # type: ignore[operator]
    digest, _, _ = pull(registry_images.url("zstd"), options(cert_dir=tmp_path))
    assert digest == registry_images.images["zstd"].sha256()
