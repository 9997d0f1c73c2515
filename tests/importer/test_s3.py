"""S3Source against a real S3 server (SeaweedFS), with a TCP proxy that breaks connections.

Content is always compared by sha256 of everything the source yields, so a resume that
repeats or skips a byte cannot pass.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import botocore.exceptions as bex  # type: ignore[import-untyped]
import pytest

from importer.errors import (
    AuthenticationFailed,
    InvalidSource,
    PermanentError,
    SourceNotFound,
    SourceUnavailable,
)
from importer.sources import RetryPolicy, Source, SourceOptions, open_source
from importer.errors import SourceChanged
from importer.sources.s3 import S3Source, parse_s3_url
from importer.stream import CHUNK
from tests.servers.faultproxy import FaultProxy
from tests.servers.ports import free_port
from tests.servers.seaweed import SeaweedS3  # the seaweed_s3 fixture comes from conftest's plugins

MiB = 1024 * 1024
DISK_KEY = "images/my disk.img"
"""A space in the key: URLs carry it percent-encoded, the source must decode it."""
DISK_SIZE = 9 * MiB + 12345
"""Two full 4 MiB chunks and a ragged tail."""


def pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def fast_retry() -> RetryPolicy:
    """Short delays and timeouts: tests must not wait out production backoff."""
    return RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.2, stall_timeout=5.0,
                       connect_timeout=2.0)


def creds(server: SeaweedS3, **overrides: object) -> SourceOptions:
    options = SourceOptions(access_key_id=server.access_key, secret_key=server.secret_key,
                            retry=fast_retry())
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


def path_url(endpoint: str, bucket: str, key: str) -> str:
    return f"{endpoint}/{bucket}/{key.replace(' ', '%20')}"


@pytest.fixture(scope="module")
def disk(seaweed_s3: SeaweedS3) -> bytes:
    """The main test object, uploaded once."""
    data = pseudo_random(DISK_SIZE, seed=1)
    seaweed_s3.put(DISK_KEY, data)
    return data


@pytest.fixture
def server(seaweed_s3: SeaweedS3, disk: bytes) -> SeaweedS3:
    return seaweed_s3


def read_all(source: Source, start: int = 0) -> str:
    """Open, stream from ``start``, close; the sha256 of what came out."""
    with source:
        source.open()
        return sha256(source.chunks(start))


# -- URL forms and TLS ---------------------------------------------------------------------


def test_s3_scheme_with_endpoint(server: SeaweedS3, disk: bytes) -> None:
    """``s3://bucket/key`` plus an endpoint option: the usual in-cluster MinIO/Ceph setup."""
    options = creds(server, s3_endpoint=server.http_endpoint)
    source = open_source(f"s3://{server.bucket}/{DISK_KEY}", options)
    assert isinstance(source, S3Source)
    with source:
        info = source.open()
        assert info.size == len(disk) and info.random_access
        assert sha256(source.chunks()) == sha256([disk])


def test_http_path_style(server: SeaweedS3, disk: bytes) -> None:
    """CDI's ``source.s3.url: http://host:port/bucket/key``."""
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    source = open_source(url, creds(server), kind="s3")
    assert read_all(source) == sha256([disk])


def oddly_named_ca_dir(server: SeaweedS3, tmp_path: Path) -> Path:
    """A cert dir as a ConfigMap might hold it: an extension-less name with spaces, plus junk."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(server.ca_cert, certs / "Our Root CA")
    (certs / "README").write_text("CA for the lab S3\n")
    return certs


def test_https_path_style_with_test_ca(server: SeaweedS3, disk: bytes, tmp_path: Path) -> None:
    """HTTPS verified against a CA from the cert dir, whatever the file is called."""
    url = path_url(server.https_endpoint, server.bucket, DISK_KEY)
    options = creds(server, cert_dir=oddly_named_ca_dir(server, tmp_path))
    assert read_all(S3Source(url, options)) == sha256([disk])


def test_https_without_ca_is_a_tls_error(server: SeaweedS3) -> None:
    """An untrusted endpoint fails at once, telling the user what to provide."""
    url = path_url(server.https_endpoint, server.bucket, DISK_KEY)
    with S3Source(url, creds(server)) as source, pytest.raises(AuthenticationFailed) as caught:
        source.open()
    assert caught.value.reason == "TLSError"
    assert "certConfigMap" in str(caught.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_insecure(server: SeaweedS3, disk: bytes) -> None:
    """insecureSkipVerify: no CA needed."""
    url = path_url(server.https_endpoint, server.bucket, DISK_KEY)
    assert read_all(S3Source(url, creds(server, insecure=True)), start=MiB) == sha256([disk[MiB:]])


@pytest.mark.parametrize("url, bucket, key, endpoint, region, path_style", [
    ("s3://b/k/x.img", "b", "k/x.img", None, None, False),
    ("https://minio.local:9000/b/dir/a%20b.img", "b", "dir/a b.img", "https://minio.local:9000",
     None, True),
    ("http://[::1]:8333/b/k", "b", "k", "http://[::1]:8333", None, True),
    ("https://my.bucket.s3.eu-west-1.amazonaws.com/k/x.qcow2", "my.bucket", "k/x.qcow2", None,
     "eu-west-1", False),
    ("https://bkt.s3.amazonaws.com/x.img", "bkt", "x.img", None, None, False),
    ("https://bkt.s3-us-west-2.amazonaws.com/x.img", "bkt", "x.img", None, "us-west-2", False),
    ("https://s3.ap-south-1.amazonaws.com/bkt/x.img", "bkt", "x.img", None, "ap-south-1", False),
])
def test_url_forms(url: str, bucket: str, key: str, endpoint: str | None, region: str | None,
                   path_style: bool) -> None:
    """Every URL shape CDI users write resolves to the right bucket, key and endpoint."""
    location = parse_s3_url(url)
    assert (location.bucket, location.key, location.endpoint, location.region,
            location.path_style) == (bucket, key, endpoint, region, path_style)


def test_url_version_and_endpoint_option() -> None:
    location = parse_s3_url("s3://b/k?versionId=v1", endpoint="http://127.0.0.1:1/")
    assert (location.endpoint, location.path_style, location.use_ssl, location.version_id) == (
        "http://127.0.0.1:1", True, False, "v1")


@pytest.mark.parametrize("url", ["s3://bucket-only", "https://host:1/bucket/", "ftp://h/b/k",
                                 "https://b.s3.amazonaws.com/"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidSource):
        parse_s3_url(url)


def test_half_credentials_are_rejected() -> None:
    with pytest.raises(InvalidSource):
        S3Source("s3://b/k", SourceOptions(access_key_id="only-the-id"))


# -- credentials and missing objects -------------------------------------------------------


@pytest.mark.parametrize("access_key, secret_key, hint", [
    (None, "wrong-secret", "secretKey does not match"),
    ("no-such-key", "whatever", "does not know accessKeyId"),
])
def test_bad_credentials(server: SeaweedS3, access_key: str | None, secret_key: str,
                         hint: str) -> None:
    """Wrong secret / unknown key: permanent, with a message naming the likely mistake."""
    options = creds(server, secret_key=secret_key, access_key_id=access_key or server.access_key)
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    with S3Source(url, options) as source, pytest.raises(AuthenticationFailed, match=hint):
        source.open()


def test_anonymous_denied_on_private_bucket(server: SeaweedS3) -> None:
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    with S3Source(url, SourceOptions(retry=fast_retry())) as source, \
            pytest.raises(AuthenticationFailed, match="anonymous"):
        source.open()


def test_anonymous_reads_public_bucket(server: SeaweedS3) -> None:
    """No Secret => unsigned requests, which a public bucket serves."""
    data = pseudo_random(3 * MiB + 7, seed=2)
    server.put("pub.img", data, bucket=server.public_bucket)
    url = path_url(server.http_endpoint, server.public_bucket, "pub.img")
    assert read_all(S3Source(url, SourceOptions(retry=fast_retry()))) == sha256([data])


def test_missing_key(server: SeaweedS3) -> None:
    url = path_url(server.http_endpoint, server.bucket, "images/absent.img")
    with S3Source(url, creds(server)) as source, \
            pytest.raises(SourceNotFound, match="'images/absent.img' not found in bucket"):
        source.open()


def test_missing_bucket(server: SeaweedS3) -> None:
    url = path_url(server.http_endpoint, "no-such-bucket", "x.img")
    with S3Source(url, creds(server)) as source, \
            pytest.raises(SourceNotFound, match="bucket 'no-such-bucket' does not exist"):
        source.open()


def test_unreachable_endpoint_is_temporary() -> None:
    """Nothing listening: a temporary fault (the pod restarts), not a verdict on the URL."""
    url = f"http://127.0.0.1:{free_port()}/b/k"
    with S3Source(url, SourceOptions(retry=fast_retry())) as source, \
            pytest.raises(SourceUnavailable):
        source.open()


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> bex.ClientError:
    response = {"Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}}
    return bex.ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize("code, status, expected", [
    ("SlowDown", 503, SourceUnavailable),
    ("InternalError", 500, SourceUnavailable),
    ("500", 500, SourceUnavailable),
    ("TooManyRequests", 429, SourceUnavailable),
    ("NoSuchKey", 404, SourceNotFound),
    ("AccessDenied", 403, AuthenticationFailed),
    ("PreconditionFailed", 412, SourceChanged),
    ("PermanentRedirect", 301, InvalidSource),
    ("InvalidArgument", 400, PermanentError),
])
def test_error_classification(code: str, status: int, expected: type) -> None:
    """Server answers we cannot easily provoke from SeaweedFS, mapped by code and status."""
    source = S3Source("s3://b/k", SourceOptions())
    assert isinstance(source._classify(client_error(code, status), "GET"), expected)


def test_retry_after_and_region_hint() -> None:
    source = S3Source("s3://b/k", SourceOptions())
    slow = source._classify(client_error("SlowDown", 503, {"retry-after": "3"}), "GET")
    assert isinstance(slow, SourceUnavailable) and slow.retry_after == 3.0
    moved = source._classify(
        client_error("301", 301, {"x-amz-bucket-region": "eu-central-1"}), "HEAD")
    assert "eu-central-1" in str(moved)


# -- ranges and offsets --------------------------------------------------------------------


def test_read_at_ranges(server: SeaweedS3, disk: bytes) -> None:
    """Ranges inside, across chunk boundaries, past the end, and beyond it."""
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    with S3Source(url, creds(server)) as source:
        source.open()
        for offset, length in [(0, 1), (4 * MiB - 3, 10), (MiB + 17, 5 * MiB),
                               (DISK_SIZE - 100, 4096), (DISK_SIZE - 1, 1)]:
            assert source.read_at(offset, length) == disk[offset:offset + length]
        assert source.read_at(DISK_SIZE, 10) == b""
        assert source.read_at(5, 0) == b""


def test_read_at_concurrently(server: SeaweedS3, disk: bytes) -> None:
    """One source, several threads (a qcow2 reader fetching clusters in parallel)."""
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    offsets = list(range(0, DISK_SIZE, 256 * 1024))
    with S3Source(url, creds(server)) as source:
        source.open()
        with ThreadPoolExecutor(max_workers=8) as pool:
            pieces = list(pool.map(lambda o: source.read_at(o, 256 * 1024), offsets))
    assert sha256(pieces) == sha256([disk])


@pytest.mark.parametrize("start", [1, 4 * MiB, DISK_SIZE - 1, DISK_SIZE])
def test_chunks_from_offset(server: SeaweedS3, disk: bytes, start: int) -> None:
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    assert read_all(S3Source(url, creds(server)), start=start) == sha256([disk[start:]])


def test_chunk_sizes(server: SeaweedS3) -> None:
    """CHUNK-sized pieces (2 MiB): big enough for cheap syscalls downstream, small enough
    for flat memory; over parallel ranges as over one stream."""
    url = path_url(server.http_endpoint, server.bucket, DISK_KEY)
    with S3Source(url, creds(server)) as source:
        source.open()
        sizes = [len(c) for c in source.chunks()]
    assert sum(sizes) == DISK_SIZE and max(sizes) == CHUNK
    assert all(size == CHUNK for size in sizes[:-1])


# -- a proxy that breaks connections -------------------------------------------------------


@pytest.fixture
def proxy_factory(server: SeaweedS3) -> Iterator[Callable[..., FaultProxy]]:
    proxies: list[FaultProxy] = []

    def make(cut_after: int, before_cut: Callable[[], None] | None = None,
             stall: float = 0.0) -> FaultProxy:
        port = int(server.http_endpoint.rsplit(":", 1)[1])
        proxies.append(FaultProxy(port, cut_after, "cut", before_cut, stall))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def test_resume_after_connection_cut(server: SeaweedS3, proxy_factory: Callable[..., FaultProxy],
                                     caplog: pytest.LogCaptureFixture) -> None:
    """The connection dies mid-body; the stream resumes at the right byte, identical sha256."""
    data = pseudo_random(16 * MiB + 333, seed=3)
    server.put("resume.img", data)
    proxy = proxy_factory(cut_after=5 * MiB + 4321)
    url = path_url(proxy.endpoint, server.bucket, "resume.img")
    with caplog.at_level(logging.WARNING):
        assert read_all(S3Source(url, creds(server))) == sha256([data])
    assert proxy.faults == 1 and proxy.connections >= 2
    assert "resuming at byte" in caplog.text


def test_resume_after_stall(server: SeaweedS3, proxy_factory: Callable[..., FaultProxy]) -> None:
    """A server that goes silent: the stall timeout (read timeout) fires and the stream resumes."""
    data = pseudo_random(8 * MiB + 5, seed=8)
    server.put("stall.img", data)
    proxy = proxy_factory(cut_after=3 * MiB, stall=4.0)
    options = creds(server)
    options.retry.stall_timeout = 0.5
    started = time.monotonic()
    url = path_url(proxy.endpoint, server.bucket, "stall.img")
    assert read_all(S3Source(url, options)) == sha256([data])
    assert proxy.faults == 1 and time.monotonic() - started < 3.5


def test_object_replaced_mid_transfer(server: SeaweedS3,
                                      proxy_factory: Callable[..., FaultProxy]) -> None:
    """A new object under the same key must not be spliced onto the old bytes."""
    key = "replaced.img"
    server.put(key, pseudo_random(24 * MiB, seed=4))
    proxy = proxy_factory(cut_after=6 * MiB,
                          before_cut=lambda: server.put(key, pseudo_random(24 * MiB, seed=5)))
    url = path_url(proxy.endpoint, server.bucket, key)
    with S3Source(url, creds(server)) as source:
        source.open()
        with pytest.raises(SourceChanged, match="changed while it was being imported"):
            for _ in source.chunks():
                pass
    assert proxy.faults == 1


def test_object_replaced_before_a_range_read(server: SeaweedS3) -> None:
    """read_at is pinned to the opened version too."""
    key = "replaced-range.img"
    server.put(key, pseudo_random(MiB, seed=6))
    with S3Source(path_url(server.http_endpoint, server.bucket, key), creds(server)) as source:
        source.open()
        assert len(source.read_at(0, 1000)) == 1000
        server.put(key, pseudo_random(MiB, seed=7))
        with pytest.raises(SourceChanged):
            source.read_at(1000, 1000)
