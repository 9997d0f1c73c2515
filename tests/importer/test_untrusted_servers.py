"""Servers are not believed blindly: ranges, encodings, redirects, credentials and deadlines.

Behaviours under test (the misbehaving server on loopback; see tests/servers/badserver.py):
- a resume answered with bytes from offset 0 (honestly labelled ``bytes 0-...``) is refused,
  on the streaming path (raw, gzip) and for ranged reads (qcow2 tables; VMDK through NBD and
  qemu-img): a permanent error, nothing left behind, never a spliced disk;
- a 206 without ``Content-Range`` is refused; one whose total is not the size makes the
  import start over, and a server that keeps saying so ends in SourceChanged, not success;
- ranges advertised but answered with 200: the import starts over reading in order and ends
  identical (VMDK then goes through scratch);
- we ask for ``Accept-Encoding: identity``; gzip, deflate and raw deflate applied anyway are
  undone (content and checksum of the file as published); ``br`` is a clear permanent error;
- credentials (basic auth, secret headers) are dropped on a redirect that changes only the
  scheme (https -> http, same host and port) or only the port; a registry's token realm over
  plain http on another host never receives them;
- a redirect to ``file://`` or ``ftp://`` and a header value with CR/LF fail at once (one
  request, or none), as permanent errors;
- a trickling source fails once its rate stays below the floor for the window, a silent one
  within the retry time budget, each with a temporary error saying what was spent; an honest
  slow link (``drip``) still passes with a floor set.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Iterator

import pytest

import cdi
from importer.errors import SourceChanged
from tests.conftest import sha256_of
from tests.servers.badserver import AUTH, BadServer
from tests.servers.images import Image
from tests.servers import pki
from tests.servers.relay import SchemeSplitter


@pytest.fixture(scope="module")
def tls_bad_server(images: dict[str, Image], test_ca: pki.TestCA, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[BadServer]:
    pair = test_ca.issue(tmp_path_factory.mktemp("tls-bad"), "127.0.0.1", dns=("localhost",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    server = BadServer(next(iter(images.values())).path.parent, ssl_context=context).start()
    yield server
    server.stop()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- ranges ----------------------------------------------------------------------------------

@pytest.mark.parametrize("behaviour,name", [("reset+range-from-zero", "disk.raw"),
                                            ("reset+range-from-zero", "disk.raw.gz"),
                                            ("range-from-zero", "disk.qcow2"),
                                            ("range-from-zero", "disk.vmdk"),
                                            ("range-no-header", "disk.qcow2")])
def test_ranges_that_do_not_match_are_refused(behaviour: str, name: str, bad_server: BadServer,
                                              tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    out = tmp_path / "vol"
    out.mkdir()
    with pytest.raises(cdi.PermanentError) as caught:
        cdi.import_image(bad_server.url(behaviour, name), out, retry=fast_retry, scratch_dir=tmp_path)
    assert caught.value.reason == "BadRangeResponse"
    assert "cannot be trusted" in str(caught.value)
    assert leftovers(out) == [] and leftovers(tmp_path) == ["vol"]


def test_a_total_that_keeps_changing_is_never_success(bad_server: BadServer, tmp_path: Path,
                                                      fast_retry: cdi.RetryPolicy) -> None:
    with pytest.raises(SourceChanged, match="a ranged answer says"):
        cdi.import_image(bad_server.url("range-wrong-total", "disk.qcow2"), tmp_path / "d.img", retry=fast_retry)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name,route", [("disk.raw", "stream-raw"), ("disk.qcow2", "stream-qcow2"),
                                        ("disk.vmdk", "stream-vmdk"), ("disk.vhdx", "stream-vhdx"),
                                        ("disk-sized.vhd", "qemu-scratch")])
def test_ranges_advertised_but_ignored_fall_back_to_reading_in_order(
        name: str, route: str, images: dict[str, Image], bad_server: BadServer, tmp_path: Path,
        fast_retry: cdi.RetryPolicy) -> None:
    result = cdi.import_image(bad_server.url("ignore-ranges", name), tmp_path / "d.img", retry=fast_retry)
    assert sha256_of(tmp_path / "d.img") == images[name].raw_sha256
    assert result.route == route


# -- encodings -------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2"])
def test_encoded_answers_are_decoded(encoding: str, name: str, images: dict[str, Image], bad_server: BadServer,
                                     tmp_path: Path) -> None:
    image = images[name]
    checksum = f"sha256:{image.file_sha256}"
    cdi.import_image(bad_server.url(encoding, name), tmp_path / "d.img", checksum=checksum)
    assert sha256_of(tmp_path / "d.img") == image.raw_sha256
    asked = {headers.get("Accept-Encoding") for key, headers in bad_server.seen if key == f"{encoding}/{name}"}
    assert asked == {"identity"}


def test_encoded_answer_resumes_from_the_start(images: dict[str, Image], bad_server: BadServer,
                                               tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    """The gzip body is cut midway: the resume re-reads it from byte 0 (a Range would address
    the encoded bytes) and skips what was already decoded; the disk is identical."""
    key = "gzip+reset-once/disk.raw"
    before = len([1 for k, _ in bad_server.seen if k == key])
    cdi.import_image(bad_server.url("gzip+reset-once", "disk.raw"), tmp_path / "d.img", retry=fast_retry)
    assert sha256_of(tmp_path / "d.img") == images["disk.raw"].raw_sha256
    requests = [h for k, h in bad_server.seen if k == key][before:]
    assert len(requests) == 2 and all("Range" not in h for h in requests)


def test_unknown_encoding_is_refused(bad_server: BadServer, tmp_path: Path) -> None:
    with pytest.raises(cdi.PermanentError, match="Content-Encoding: br") as caught:
        cdi.import_image(bad_server.url("br", "disk.raw"), tmp_path / "d.img")
    assert caught.value.reason == "UnsupportedEncoding"
    assert leftovers(tmp_path) == []


# -- credentials and redirects ------------------------------------------------------------------

def _secrets(headers: dict[str, str]) -> set[str]:
    return {name for name in ("Authorization", "X-Secret") if name in headers}


def test_credentials_dropped_when_scheme_or_port_changes(
        tls_bad_server: BadServer, bad_server: BadServer, ca_dir: Path, tmp_path: Path,
        images: dict[str, Image]) -> None:
    splitter = SchemeSplitter("127.0.0.1", ("127.0.0.1", tls_bad_server.port), ("127.0.0.1", bad_server.port))
    try:
        plain = f"http://127.0.0.1:{splitter.port}/record/disk.raw.gz"
        bad_server.recorded.clear()
        cdi.import_image(f"https://127.0.0.1:{splitter.port}/redirect-to/disk.raw.gz?to={plain}",
                         tmp_path / "d.img", cert_dir=ca_dir, username="cdi", password="s3cret-pass",
                         secret_headers=["X-Secret: secret-value"])
    finally:
        splitter.close()
    assert sha256_of(tmp_path / "d.img") == images["disk.raw.gz"].raw_sha256
    assert bad_server.recorded and all(_secrets(h) == set() for h in bad_server.recorded)
    sent = [h for key, h in tls_bad_server.seen if key == "redirect-to/disk.raw.gz"]
    assert sent and all(_secrets(h) == {"Authorization", "X-Secret"} for h in sent)
    # and only the port changing (http on one port -> https on another) drops them too
    other = tls_bad_server.url("record", "disk.raw.gz")
    tls_bad_server.recorded.clear()
    cdi.import_image(bad_server.url("redirect-to", "disk.raw.gz") + f"?to={other}", tmp_path / "e.img",
                     cert_dir=ca_dir, username="cdi", password="s3cret-pass", secret_headers=["X-Secret: x"])
    assert tls_bad_server.recorded and all(_secrets(h) == set() for h in tls_bad_server.recorded)


def test_registry_token_realm_over_http_on_another_host_gets_no_credentials(
        bad_server: BadServer, tmp_path: Path, fast_retry: cdi.RetryPolicy) -> None:
    bad_server.registry_realm = f"http://localhost:{bad_server.port}/record/disk.raw"
    bad_server.recorded.clear()
    with pytest.raises(cdi.AuthenticationFailed, match="over plain http on another host"):
        cdi.import_image(f"docker://127.0.0.1:{bad_server.port}/repo/disk:1", tmp_path / "d.img",
                         insecure=True, username="cdi", password="s3cret-pass", retry=fast_retry)
    assert bad_server.recorded == []
    registry = [h for key, h in bad_server.seen if key.startswith("/v2")]
    assert registry and all(AUTH not in h.values() for h in registry)


@pytest.mark.parametrize("to", ["file:///etc/passwd", "ftp://127.0.0.1/disk.raw"])
def test_redirect_to_another_scheme_is_permanent_at_once(to: str, bad_server: BadServer, tmp_path: Path) -> None:
    key = "redirect-to/disk.raw"
    before = bad_server.requests[key]
    with pytest.raises(cdi.InvalidSource, match="only http and https redirects are followed"):
        cdi.import_image(bad_server.url("redirect-to", "disk.raw") + f"?to={to}", tmp_path / "d.img")
    assert bad_server.requests[key] - before == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("secret", [False, True])
def test_header_with_crlf_is_permanent_before_any_request(secret: bool, bad_server: BadServer,
                                                          tmp_path: Path) -> None:
    value = "X-A: fine\r\nX-Injected: sneaky-secret-value"
    before = sum(bad_server.requests.values())
    kwargs = {"secret_headers": [value]} if secret else {"headers": [value]}
    with pytest.raises(cdi.InvalidSource, match="control characters") as caught:
        cdi.import_image(bad_server.url("plain", "disk.raw"), tmp_path / "d.img", **kwargs)  # type: ignore[arg-type]
    assert sum(bad_server.requests.values()) == before
    assert ("sneaky-secret-value" in str(caught.value)) is False


# -- deadlines -------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_trickle_fails_below_the_speed_floor(bad_server: BadServer, tmp_path: Path) -> None:
    policy = cdi.RetryPolicy(attempts=1, initial_delay=0.05, max_delay=0.1, stall_timeout=10,
                             connect_timeout=5, speed_limit=1000, speed_time=1.5)
    with pytest.raises(cdi.SourceUnavailable) as caught:
        cdi.import_image(bad_server.url("trickle", "disk.raw"), tmp_path / "d.img", retry=policy)
    message = str(caught.value)
    assert "is too slow" in message and "below the floor of 1000 bytes/s held for 1.5s" in message
    assert "gave up after 1 retries" in message
    assert leftovers(tmp_path) == []


@pytest.mark.timeout(120)
def test_silent_source_fails_within_the_retry_time_budget(bad_server: BadServer, tmp_path: Path) -> None:
    policy = cdi.RetryPolicy(attempts=1000, initial_delay=0.05, max_delay=0.1, stall_timeout=0.5,
                             connect_timeout=5, retry_time=3)
    with pytest.raises(cdi.SourceUnavailable) as caught:
        cdi.import_image(bad_server.url("stall", "disk.raw"), tmp_path / "d.img", retry=policy)
    message = str(caught.value)
    assert "and 3s in all" in message and "gave up after" in message
    assert leftovers(tmp_path) == []


def test_honest_slow_link_passes_the_floor(images: dict[str, Image], bad_server: BadServer, tmp_path: Path) -> None:
    policy = cdi.RetryPolicy(speed_limit=64 * 1024, speed_time=1)
    cdi.import_image(bad_server.url("drip", "disk.qcow2.xz"), tmp_path / "d.img", retry=policy)
    assert sha256_of(tmp_path / "d.img") == images["disk.qcow2.xz"].raw_sha256
