"""Misbehaving servers still give byte-identical imports, and hard failures fail fast.

Behaviours under test (see tests/servers/badserver.py for the server side):
- HEAD forbidden, intermittent 503, no Accept-Ranges, a text/html Content-Type: all succeed;
- a connection reset mid-body (several times) resumes with Range and finishes identical,
  for raw, compressed raw and qcow2 (whose converter state survives the resume);
- a server without ranges that resets: the resume re-reads and skips what it already has;
- a slow drip still finishes;
- a file that changes mid-import (new ETag) restarts the import instead of splicing;
- a file that vanishes (404, then 503) mid-import and comes back ends with the right content;
- basic auth survives a same-host redirect and is never sent to another host;
- extra headers and secret headers reach the server;
- 5xx forever becomes a temporary error after the retry budget; 400 fails at once.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

import cdi
from tests.conftest import sha256_of
from tests.servers.badserver import BadServer
from tests.servers.images import Image


@pytest.mark.parametrize("behaviour", ["forbidden-HEAD", "flaky", "no-accept-ranges", "bad-content-type"])
@pytest.mark.parametrize("name", ["disk.qcow2", "disk.vmdk", "disk.raw.gz"])
def test_cdi_bad_webserver_cases_succeed(behaviour: str, name: str, images: dict[str, Image],
                                         bad_server: BadServer, tmp_path: Path,
                                         fast_retry: cdi.RetryPolicy) -> None:
    result = cdi.import_image(bad_server.url(behaviour, name), tmp_path / "d.img", retry=fast_retry)
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256
    if name == "disk.vmdk":  # tables from the stream's first bytes when there are no ranges
        assert result.route == "stream-vmdk" and result.scratch_bytes == 0


@pytest.mark.parametrize("name", ["disk.raw", "disk.raw.xz", "disk.qcow2", "disk.qcow2.gz", "tiny.iso.zst"])
def test_reset_mid_body_resumes(name: str, images: dict[str, Image], bad_server: BadServer,
                                tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    before = bad_server.requests[f"reset/{name}"]
    result = cdi.import_image(bad_server.url("reset", name), tmp_path / "d.img", retry=fast_retry)
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256
    size = images[name].path.stat().st_size
    # every byte crossed the wire once: the stream resumed, it never started over
    assert result.bytes_received == size
    if result.route != "stream-qcow2" or result.compression:  # (qcow2 also reads its tables by range)
        # one request per cut, plus the ranged read of the header that picks the route
        assert bad_server.requests[f"reset/{name}"] - before == -(-size // bad_server.cut) + 1


def test_drip(images: dict[str, Image], bad_server: BadServer, tmp_path: Path) -> None:
    cdi.import_image(bad_server.url("drip", "disk.qcow2.xz"), tmp_path / "d.img")
    assert sha256_of(tmp_path / "d.img") == images["disk.qcow2.xz"].raw_sha256


def test_changed_source_restarts_instead_of_splicing(images: dict[str, Image], bad_server: BadServer,
                                                     tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    result = cdi.import_image(bad_server.url("changing", "disk.raw"), tmp_path / "d.img", retry=fast_retry)
    assert sha256_of(tmp_path / "d.img") == images["disk.raw"].raw_sha256
    assert result.bytes_received == images["disk.raw"].path.stat().st_size


def test_vanishing_source_comes_back(images: dict[str, Image], bad_server: BadServer,
                                     tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    cdi.import_image(bad_server.url("vanishing", "disk.qcow2"), tmp_path / "d.img", retry=fast_retry)
    assert sha256_of(tmp_path / "d.img") == images["disk.qcow2"].raw_sha256


def test_auth_kept_on_same_host_redirect(images: dict[str, Image], bad_server: BadServer, tmp_path: Path) -> None:
    cdi.import_image(bad_server.url("redirect-same", "disk.raw.gz"), tmp_path / "d.img",
                     username="cdi", password="s3cret-pass")
    assert sha256_of(tmp_path / "d.img") == images["disk.raw.gz"].raw_sha256


def test_credentials_dropped_on_redirect_to_other_host(bad_server: BadServer, tmp_path: Path) -> None:
    bad_server.recorded.clear()
    cdi.import_image(bad_server.url("redirect-other", "disk.raw.gz"), tmp_path / "d.img",
                     username="cdi", password="s3cret-pass", headers=["X-Extra: extra-value"],
                     secret_headers=["X-Secret: secret-value"])
    assert bad_server.recorded
    for headers in bad_server.recorded:
        assert "Authorization" not in headers and "X-Secret" not in headers
        assert headers.get("X-Extra") == "extra-value"


def test_extra_and_secret_headers(images: dict[str, Image], bad_server: BadServer, tmp_path: Path) -> None:
    cdi.import_image(bad_server.url("headers", "disk.qcow2"), tmp_path / "d.img",
                     headers=["X-Extra: extra-value"], secret_headers=["X-Secret: secret-value"])
    assert sha256_of(tmp_path / "d.img") == images["disk.qcow2"].raw_sha256
    with pytest.raises(cdi.AuthenticationFailed):
        cdi.import_image(bad_server.url("headers", "disk.qcow2"), tmp_path / "e.img",
                         headers=["X-Extra: extra-value"])


def test_server_errors_are_temporary_after_retries(bad_server: BadServer, tmp_path: Path,
                                                   fast_retry: cdi.RetryPolicy) -> None:
    before = bad_server.requests["status-503/disk.raw"]
    with pytest.raises(cdi.SourceUnavailable) as caught:
        cdi.import_image(bad_server.url("status-503", "disk.raw"), tmp_path / "d.img", retry=fast_retry)
    assert not caught.value.permanent
    assert bad_server.requests["status-503/disk.raw"] - before == fast_retry.attempts + 1
    assert list(tmp_path.iterdir()) == []


def test_client_errors_fail_at_once(bad_server: BadServer, tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    before = bad_server.requests["status-400/disk.raw"]
    with pytest.raises(cdi.PermanentError):
        cdi.import_image(bad_server.url("status-400", "disk.raw"), tmp_path / "d.img", retry=fast_retry)
    assert bad_server.requests["status-400/disk.raw"] - before == 1


def test_dns_failure_is_temporary_and_says_so(tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    with pytest.raises(cdi.SourceUnavailable) as caught:
        cdi.import_image("http://i-made-this-up.invalid/disk.img", tmp_path / "d.img", retry=fast_retry)
    assert "Unable to connect to http data source" in str(caught.value)


def test_basic_auth_header_value(bad_server: BadServer, images: dict[str, Image], tmp_path: Path) -> None:
    token = base64.b64encode(b"cdi:s3cret-pass").decode()
    cdi.import_image(bad_server.url("auth", "disk.raw.bz2"), tmp_path / "d.img",
                     secret_headers=[f"Authorization: Basic {token}"])
    assert sha256_of(tmp_path / "d.img") == images["disk.raw.bz2"].raw_sha256
