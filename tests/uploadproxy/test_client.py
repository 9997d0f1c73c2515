"""The client library (:func:`uploadproxy.client.upload`) against the proxy and servers.

Behaviours under test:
- with no options it finds the resumable protocol, uploads, and the disk holds the image; the
  progress callback rises monotonically to the file size;
- forced one-shot async and sync uploads work too (what an old CDI proxy offers);
- a connection cut mid-upload (a TCP relay between client and proxy) is resumed from the
  server's offset: the upload completes with the exact image, having sent far less than twice
  the file; on the one-shot path the same cut is survived by a retry from byte 0;
- a checksum (given, or computed with ``checksum=True``) is verified by the server; a wrong one
  fails at once (400, one attempt, nothing left on the volume);
- a refused token fails at once with AuthenticationFailed; a token callable is asked again
  after a 401 on a later attempt (a token that stopped verifying mid-upload is refreshed).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import pytest

from tests.servers.images import sha256_file as sha256_of
from tests.servers.images import Image
from tests.uploadproxy.conftest import ServerFactory
from tests.uploadproxy.cutter import UploadCutter
from tests.uploadproxy.harness import LoopThread, Pki, ProxyHandle, Ready, ServerHandle, rsa_public, wait_outcome
from uploadproxy import client, tokens


@pytest.fixture
def volume(proxy: ProxyHandle, upload_server: ServerFactory) -> ServerHandle:
    server = upload_server()
    proxy.route("disk", Ready(server.url))
    return server


@pytest.fixture
def cutter(proxy: ProxyHandle) -> Iterator[Callable[..., UploadCutter]]:
    made: list[UploadCutter] = []

    def make(at: int, stall: float = 0.0, on_cut: Callable[[], None] | None = None) -> UploadCutter:
        made.append(UploadCutter(proxy.port, at, stall, on_cut))
        return made[-1]

    yield make
    for relay in made:
        relay.close()


def test_discovers_resumable_with_progress(proxy: ProxyHandle, volume: ServerHandle, pki: Pki,
                                           images: dict[str, Image], loop_thread: LoopThread,
                                           token: Callable[[str], str]) -> None:
    image = images["disk.qcow2"]
    seen: list[tuple[int, int]] = []
    result = client.upload(proxy.url, token("disk"), image.path, ca=pki.proxy_ca.cert,
                           progress=lambda done, total: seen.append((done, total)))
    assert result.status == 200 and result.mode == "resumable" and result.resumes == 0
    wait_outcome(loop_thread, volume)
    assert sha256_of(volume.disk) == image.raw_sha256
    size = image.path.stat().st_size
    assert seen[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


@pytest.mark.parametrize("async_", [True, False])
def test_one_shot_paths(proxy: ProxyHandle, volume: ServerHandle, pki: Pki, images: dict[str, Image],
                        loop_thread: LoopThread, token: Callable[[str], str], async_: bool) -> None:
    image = images["disk.raw.gz"]
    result = client.upload(proxy.url, token("disk"), image.path, ca=pki.proxy_ca.cert, resumable=False,
                           async_=async_)
    assert result.mode == ("async" if async_ else "sync")
    wait_outcome(loop_thread, volume)
    assert sha256_of(volume.disk) == image.raw_sha256


def test_resumes_after_a_cut(proxy: ProxyHandle, volume: ServerHandle, pki: Pki, images: dict[str, Image],
                             loop_thread: LoopThread, token: Callable[[str], str],
                             cutter: Callable[..., UploadCutter]) -> None:
    image = images["disk.raw"]
    relay = cutter(15 << 20)
    result = client.upload(f"https://127.0.0.1:{relay.port}", token("disk"), image.path, ca=pki.proxy_ca.cert,
                           checksum=True)
    size = image.path.stat().st_size
    assert relay.cuts == 1 and result.resumes >= 1
    assert size < result.bytes_sent < 2 * size - (8 << 20)
    wait_outcome(loop_thread, volume)
    assert sha256_of(volume.disk) == image.raw_sha256


def test_one_shot_retries_from_the_start(proxy: ProxyHandle, volume: ServerHandle, pki: Pki,
                                         images: dict[str, Image], loop_thread: LoopThread,
                                         token: Callable[[str], str], cutter: Callable[..., UploadCutter]) -> None:
    image = images["disk.raw"]
    relay = cutter(10 << 20)
    result = client.upload(f"https://127.0.0.1:{relay.port}", token("disk"), image.path, ca=pki.proxy_ca.cert,
                           resumable=False, async_=False)
    assert relay.cuts == 1 and result.attempts >= 2
    assert sha256_of(volume.disk) == image.raw_sha256


def test_wrong_checksum_fails_at_once(proxy: ProxyHandle, volume: ServerHandle, pki: Pki,
                                      images: dict[str, Image], token: Callable[[str], str]) -> None:
    with pytest.raises(client.UploadFailed) as failure:
        client.upload(proxy.url, token("disk"), images["disk.raw"].path, ca=pki.proxy_ca.cert,
                      checksum="sha256:" + "1" * 64)
    assert failure.value.status == 400 and "checksum mismatch" in failure.value.body
    assert volume.leftovers() == []


def test_token_refused_and_refreshed(proxy: ProxyHandle, volume: ServerHandle, pki: Pki,
                                     images: dict[str, Image], loop_thread: LoopThread,
                                     cutter: Callable[..., UploadCutter]) -> None:
    expired = tokens.issue(pki.token_key, "default", "disk", now=time.time() - 400)
    with pytest.raises(client.AuthenticationFailed):
        client.upload(proxy.url, expired, images["disk.raw"].path, ca=pki.proxy_ca.cert)
    # the upload starts with a good token; while the connection is cut the proxy's key is rotated
    # (as if the token had expired meanwhile), so resuming gets a 401 and asks for a new token
    signing = [pki.token_key]
    issued: list[str] = []

    def rotate() -> None:
        signing.append(tokens.generate_key())
        proxy.proxy.public_key = rsa_public(signing[-1])

    def current_token() -> str:
        issued.append(tokens.issue(signing[-1], "default", "disk"))
        return issued[-1]

    relay = cutter(12 << 20, on_cut=rotate)
    result = client.upload(f"https://127.0.0.1:{relay.port}", current_token, images["disk.raw"].path,
                           ca=pki.proxy_ca.cert)
    assert result.status == 200 and len(issued) >= 2
    wait_outcome(loop_thread, volume)
    assert sha256_of(volume.disk) == images["disk.raw"].raw_sha256




def test_a_permanent_failure_is_not_retried(proxy: ProxyHandle, upload_server: ServerFactory, pki: Pki,
                                            images: dict[str, Image], token: Callable[[str], str]) -> None:
    """CDI answers 500 to everything; ours says when sending the same file again cannot help
    (here: a compressed VHD left to qemu-img, which needs scratch space this server has none of)."""
    server = upload_server()
    proxy.route("disk", Ready(server.url))
    with pytest.raises(client.UploadFailed) as failed:
        client.upload(proxy.url, token("disk"), images["disk-sized.vhd.gz"].path, ca=pki.proxy_ca.cert, resumable=False)
    assert failed.value.status == 500 and "scratch" in str(failed.value)
    assert "retries" not in str(failed.value)  # given up at the first answer, not after the retry budget
    assert server.leftovers() == []
