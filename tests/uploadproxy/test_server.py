"""The upload server, spoken to directly (as the proxy does) with curl and raw sockets over TLS.

Behaviours under test:
- ``/healthz`` answers OK without a client certificate; upload paths need one signed by the
  client CA with CN ``client.upload-server.cdi.kubevirt.io``: none or another CN -> 401, a
  certificate from another CA fails the TLS handshake; the volume is untouched either way;
- only POST uploads (404 otherwise); HEAD on the async path answers 200;
- sync and async uploads of raw, raw.gz, raw.xz, qcow2, qcow2.xz and vmdk end with the image's
  exact raw content; raw, qcow2 and vmdk stream straight to the target (no scratch file is
  left in the scratch directory); the termination message says
  "Upload Complete";
- multipart form uploads (the ``file`` part; others ignored), sync and async;
- an archive (tar.gz) is unpacked into the filesystem volume, no disk.img;
- a second upload after success -> 409 and the disk is unchanged;
- a second upload while one is running -> 503, and the first one still completes;
- an image larger than the volume -> 400 "... too small ..." with nothing left behind, and the
  server then accepts an image that fits;
- a body cut short (the client dies mid-upload) leaves no disk.img and no partial file, and
  the server accepts the next upload;
- a checksum header that does not match -> 400 with nothing left; one that matches -> 200;
- the disk filling up mid-upload -> 400 "too small", partial file removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.servers.images import sha256_file as sha256_of
from tests.servers.images import Image
from tests.uploadproxy.conftest import ServerFactory
from tests.uploadproxy.harness import (LoopThread, Pki, ServerHandle, curl, raw_request, server_curl_args,
                                       server_session, sha256_prefix, wait_idle, wait_outcome)
from uploadproxy import paths
from uploadproxy.errors import UploadInterrupted

MiB = 1 << 20


def post(pki: Pki, handle: ServerHandle, file: Path, path: str = paths.SYNC, *extra: str,
         client: object = "proxy") -> tuple[int, str, int]:
    cert = pki.proxy_client if client == "proxy" else client
    return curl(*server_curl_args(pki, cert), "-X", "POST", "-T", str(file), *extra,  # type: ignore[arg-type]
                handle.url + path)


def test_healthz_needs_no_certificate(upload_server: ServerFactory, pki: Pki) -> None:
    handle = upload_server()
    assert curl("--cacert", str(pki.server_ca.cert), handle.url + "/healthz")[:2] == (200, "OK")


def test_client_certificate_rules(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    image = images["disk.raw"].path
    assert post(pki, handle, image, client=None)[0] == 401
    assert post(pki, handle, image, client=pki.wrong_name_client)[0] == 401
    status, _, exit_code = post(pki, handle, image, client=pki.stranger_client)
    assert status == 0 and exit_code != 0  # the handshake itself fails
    assert handle.leftovers() == [] and not handle.server.uploads.busy


def test_methods(upload_server: ServerFactory, pki: Pki) -> None:
    handle = upload_server()
    args = server_curl_args(pki, pki.proxy_client)
    assert curl(*args, handle.url + paths.SYNC)[0] == 404
    assert curl(*args, "-I", handle.url + paths.ASYNC)[0] == 200
    assert curl(*args, "-I", handle.url + paths.SYNC)[0] == 404


ROUTES = {"disk.raw": "stream-raw", "disk.raw.gz": "stream-raw", "disk.raw.xz": "stream-raw",
          "disk.qcow2": "stream-qcow2", "disk.qcow2.xz": "stream-qcow2", "disk.vmdk": "stream-vmdk"}


@pytest.mark.parametrize("path", [paths.SYNC, paths.ASYNC, "/v1alpha1/upload"])
@pytest.mark.parametrize("name", sorted(ROUTES))
def test_formats(upload_server: ServerFactory, pki: Pki, images: dict[str, Image], loop_thread: LoopThread,
                 tmp_path: Path, name: str, path: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    handle = upload_server(scratch_dir=scratch)
    image = images[name]
    status, body, _ = post(pki, handle, image.path, path)
    assert status == 200, body
    result = wait_outcome(loop_thread, handle)
    assert result.route == ROUTES[name] and result.format == name.split(".")[1]
    assert sha256_of(handle.disk) == image.raw_sha256
    assert result.scratch_bytes == 0 or result.route == "qemu-scratch"
    assert list(scratch.iterdir()) == []
    assert handle.termination()["message"] == "Upload Complete"
    assert handle.leftovers() == ["disk.img"]


@pytest.mark.parametrize("path", [paths.FORM, paths.FORM_ASYNC])
def test_form_upload(upload_server: ServerFactory, pki: Pki, images: dict[str, Image], loop_thread: LoopThread,
                     path: str) -> None:
    handle = upload_server()
    image = images["disk.qcow2.gz"]
    status, body, _ = curl(*server_curl_args(pki, pki.proxy_client), "-F", "note=ignored",
                           "-F", f"file=@{image.path}", "-F", "after=also ignored", handle.url + path)
    assert status == 200, body
    wait_outcome(loop_thread, handle)
    assert sha256_of(handle.disk) == image.raw_sha256


def test_archive_upload(upload_server: ServerFactory, pki: Pki, archive_tar: tuple[Path, dict[str, bytes]],
                        loop_thread: LoopThread) -> None:
    handle = upload_server()
    tar, files = archive_tar
    status, body, _ = post(pki, handle, tar, paths.ARCHIVE)
    assert status == 200, body
    wait_outcome(loop_thread, handle)
    for name, data in files.items():
        assert (handle.volume / name).read_bytes() == data
    assert not handle.disk.exists()


def test_upload_after_success_is_409(upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                                     loop_thread: LoopThread) -> None:
    handle = upload_server()
    assert post(pki, handle, images["disk.raw"].path)[0] == 200
    status, body, _ = post(pki, handle, images["disk.qcow2"].path, paths.ASYNC)
    assert status == 409 and "already completed" in body
    assert sha256_of(handle.disk) == images["disk.raw"].raw_sha256


def slow_body(data: bytes, gate: threading.Event) -> Iterator[bytes]:
    yield data[:MiB]
    gate.wait(60)
    yield data[MiB:]


def test_concurrent_upload_is_503(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    image = images["disk.raw"]
    gate = threading.Event()
    answers: list[requests.Response] = []
    first = threading.Thread(target=lambda: answers.append(requests.post(
        handle.url + paths.SYNC, data=slow_body(image.path.read_bytes(), gate),
        cert=(str(pki.proxy_client.cert), str(pki.proxy_client.key)), verify=str(pki.server_ca.cert))))
    first.start()
    deadline = time.monotonic() + 30
    while not handle.server.uploads.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    status, body, _ = post(pki, handle, images["disk.qcow2"].path)
    gate.set()
    first.join(60)
    assert status == 503 and "in progress" in body
    assert answers and answers[0].status_code == 200, answers
    assert sha256_of(handle.disk) == image.raw_sha256


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk.raw.xz"])
def test_too_large_is_400_and_nothing_is_left(upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                                              tmp_path: Path, name: str) -> None:
    handle = upload_server(image_size=8 * MiB)
    status, body, _ = post(pki, handle, images[name].path)
    assert status == 400 and "too small" in body and body.startswith("Saving stream failed")
    wait_idle(handle)
    assert handle.leftovers() == []
    small = tmp_path / "small.raw"
    small.write_bytes(os.urandom(MiB))
    assert post(pki, handle, small)[0] == 200
    assert sha256_prefix(handle.disk, MiB) == sha256_of(small)


def test_truncated_body_leaves_nothing(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    image = images["disk.raw"]
    data = image.path.read_bytes()
    head = (f"POST {paths.SYNC} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    raw_request(handle.server.port, head, data[: len(data) // 2], pki.server_ca.cert, pki.proxy_client)
    deadline = time.monotonic() + 30
    while handle.server.uploads.last_failure is None and time.monotonic() < deadline:
        time.sleep(0.02)
    wait_idle(handle)
    assert isinstance(handle.server.uploads.last_failure, UploadInterrupted)
    assert handle.leftovers() == [] and handle.server.uploads.result is None
    assert post(pki, handle, image.path)[0] == 200
    assert sha256_of(handle.disk) == image.raw_sha256


def test_checksum_header(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    image = images["disk.qcow2.xz"]
    wrong = "sha256:" + "0" * 64
    status, body, _ = post(pki, handle, image.path, paths.SYNC, "-H", f"{paths.CHECKSUM_HEADER}: {wrong}")
    assert status == 400 and "checksum mismatch" in body
    wait_idle(handle)
    assert handle.leftovers() == []
    right = f"sha256:{image.file_sha256}"
    status, body, _ = post(pki, handle, image.path, paths.SYNC, "-H", f"{paths.CHECKSUM_HEADER}: {right}")
    assert status == 200, body
    assert sha256_of(handle.disk) == image.raw_sha256


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a volume that really runs out of space."""
    mount = tmp_path / "small-volume"
    mount.mkdir()
    if not shutil.which("mount"):
        pytest.fail("mount is missing")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\xff" * MiB)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_disk_full_midway(upload_server: ServerFactory, pki: Pki, small_filesystem: Path,
                          random_file: Path) -> None:
    handle = upload_server(volume=small_filesystem)
    data = random_file.read_bytes()
    session = server_session(pki)
    url = handle.url + paths.RESUMABLE
    created = session.post(url, headers={paths.LENGTH_HEADER: str(len(data)), paths.MODE_HEADER: "sync"})
    upload_id = created.headers[paths.ID_HEADER]
    first = session.patch(url, data=data[: 2 * MiB], headers={paths.ID_HEADER: upload_id, paths.OFFSET_HEADER: "0"})
    assert first.status_code == 204
    fill(small_filesystem)
    rest = session.patch(url, data=data[2 * MiB:], headers={paths.ID_HEADER: upload_id,
                                                            paths.OFFSET_HEADER: str(2 * MiB)})
    assert rest.status_code == 400 and "too small" in rest.text, rest.text
    wait_idle(handle)
    assert handle.leftovers() == ["filler"]


