"""The upload proxy in front of real upload servers, with curl as the client.

Behaviours under test:
- no Authorization header or a malformed one -> 400; a token signed by another key or
  expired -> 401; a valid token for another operation -> 400; the server never sees these;
- a token for a volume with no upload server -> 503 "... doesn't exist"; a not-ready reason is
  returned HTML-escaped; a volume with an unknown content type -> 503;
- HEAD on the async paths answers 200 without a token (virtctl's probe), ``/healthz`` OK;
- CORS: a preflight is answered 204 with the requested method and headers, actual answers
  carry ``Access-Control-Allow-Origin: *`` and expose the Upload-* headers;
- sync, async and form uploads pass through to the right server (two volumes, two servers),
  over mutual TLS, and end with the exact image;
- an archive volume gets the archive path (CDI's rewrite): the tar is unpacked;
- the server's refusals reach the client unchanged: too large (400 ... too small), 409 after
  success; a proxy whose client certificate the server does not accept gets 401 from it;
- an upload server that is down -> 500 from the proxy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from tests.servers.images import sha256_file as sha256_of
from tests.servers.images import Image
from tests.servers.ports import free_port
from tests.uploadproxy.conftest import ServerFactory
from tests.uploadproxy.harness import LoopThread, NotReady, Pki, ProxyHandle, Ready, curl, start_proxy, wait_outcome
from uploadproxy import paths, tokens


def upload(pki: Pki, proxy: ProxyHandle, token: str | None, file: Path, path: str = paths.SYNC,
           *extra: str) -> tuple[int, str, int]:
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    return curl("--cacert", str(pki.proxy_ca.cert), *auth, "-X", "POST", "-T", str(file), *extra, proxy.url + path)


def test_token_checks(proxy: ProxyHandle, upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                      token: Callable[[str], str]) -> None:
    server = upload_server()
    proxy.route("disk", Ready(server.url))
    image = images["disk.raw"].path
    assert upload(pki, proxy, None, image)[0] == 400
    status, _, _ = curl("--cacert", str(pki.proxy_ca.cert), "-H", "Authorization: Basic Zm9vOmJhcg==",
                        "-X", "POST", "-T", str(image), proxy.url + paths.SYNC)
    assert status == 400
    foreign = tokens.issue(tokens.generate_key(), "default", "disk")
    assert upload(pki, proxy, foreign, image)[0] == 401
    expired = tokens.issue(pki.token_key, "default", "disk", now=time.time() - 400)
    status, body, _ = upload(pki, proxy, expired, image)
    assert status == 401 and "expired" in body
    clone = tokens.issue(pki.token_key, "default", "disk", operation="Clone")
    assert upload(pki, proxy, clone, image)[0] == 400
    assert not server.disk.exists() and server.server.uploads.last_failure is None
    status, body, _ = upload(pki, proxy, token("disk"), image)
    assert status == 200, body


def test_volume_not_ready(proxy: ProxyHandle, pki: Pki, images: dict[str, Image],
                          token: Callable[[str], str]) -> None:
    image = images["disk.raw"].path
    status, body, _ = upload(pki, proxy, token("nowhere"), image)
    assert status == 503 and "PVC nowhere that doesn't exist" in body.replace("&#x27;", "'")
    proxy.route("pending", NotReady("upload pod <b>not</b> ready & waiting"))
    status, body, _ = upload(pki, proxy, token("pending"), image)
    assert status == 503 and body == "upload pod &lt;b&gt;not&lt;/b&gt; ready &amp; waiting"
    proxy.route("odd", Ready("https://127.0.0.1:1", content_type="blockdevice-clone"))
    status, body, _ = upload(pki, proxy, token("odd"), image)
    assert status == 503 and "content-type blockdevice-clone is invalid" in body


def test_probes_and_cors(proxy: ProxyHandle, pki: Pki, upload_server: ServerFactory,
                         images: dict[str, Image], token: Callable[[str], str]) -> None:
    ca = ["--cacert", str(pki.proxy_ca.cert)]
    assert curl(*ca, "-I", proxy.url + paths.ASYNC)[0] == 200
    assert curl(*ca, "-I", proxy.url + paths.RESUMABLE)[0] == 200
    assert curl(*ca, proxy.url + "/healthz")[:2] == (200, "OK")
    status, headers, _ = curl(*ca, "-D", "-", "-X", "OPTIONS", "-H", "Origin: https://console.example",
                              "-H", "Access-Control-Request-Method: post",
                              "-H", "Access-Control-Request-Headers: authorization, content-type",
                              proxy.url + paths.FORM_ASYNC)
    lower = headers.lower()
    assert status == 204
    assert "access-control-allow-origin: *" in lower and "access-control-allow-methods: post" in lower
    assert "access-control-allow-headers: authorization, content-type" in lower
    server = upload_server()
    proxy.route("cors", Ready(server.url))
    status, headers, _ = curl(*ca, "-D", "-", "-H", "Origin: https://console.example",
                              "-H", f"Authorization: Bearer {token('cors')}", "-X", "POST",
                              "-T", str(images["disk.raw"].path), proxy.url + paths.SYNC)
    lower = headers.lower()
    assert status == 200 and "access-control-allow-origin: *" in lower
    assert "access-control-expose-headers: upload-offset" in lower and "vary: origin" in lower


@pytest.mark.parametrize("path", [paths.SYNC, paths.ASYNC, paths.FORM, paths.FORM_ASYNC])
def test_uploads_reach_the_right_server(proxy: ProxyHandle, upload_server: ServerFactory, pki: Pki,
                                        images: dict[str, Image], loop_thread: LoopThread,
                                        token: Callable[[str], str], path: str) -> None:
    first, second = upload_server(), upload_server()
    proxy.route("first", Ready(first.url))
    proxy.route("second", Ready(second.url))
    image = images["disk.qcow2.xz"]
    if path in (paths.FORM, paths.FORM_ASYNC):
        status, body, _ = curl("--cacert", str(pki.proxy_ca.cert), "-H", f"Authorization: Bearer {token('second')}",
                               "-F", f"file=@{image.path}", proxy.url + path)
    else:
        status, body, _ = upload(pki, proxy, token("second"), image.path, path)
    assert status == 200, body
    wait_outcome(loop_thread, second)
    assert sha256_of(second.disk) == image.raw_sha256
    assert not first.disk.exists() and not first.server.uploads.busy


def test_archive_volume_is_rewritten(proxy: ProxyHandle, upload_server: ServerFactory, pki: Pki,
                                     archive_tar: tuple[Path, dict[str, bytes]], token: Callable[[str], str]) -> None:
    server = upload_server()
    proxy.route("files", Ready(server.url, content_type="archive"))
    tar, files = archive_tar
    status, body, _ = upload(pki, proxy, token("files"), tar, paths.SYNC)
    assert status == 200, body
    assert {name: (server.volume / name).read_bytes() for name in files} == files
    assert not server.disk.exists()


def test_server_refusals_pass_through(proxy: ProxyHandle, upload_server: ServerFactory, pki: Pki,
                                      images: dict[str, Image], token: Callable[[str], str]) -> None:
    server = upload_server(image_size=4 << 20)
    proxy.route("tiny", Ready(server.url))
    status, body, _ = upload(pki, proxy, token("tiny"), images["disk.raw"].path)
    assert status == 400 and "too small" in body
    assert server.leftovers() == []
    done = upload_server()
    proxy.route("done", Ready(done.url))
    assert upload(pki, proxy, token("done"), images["disk.raw"].path)[0] == 200
    assert upload(pki, proxy, token("done"), images["disk.raw"].path)[0] == 409


@pytest.mark.parametrize("data_path", ["python", "nginx"])
def test_proxy_without_accepted_client_certificate(loop_thread: LoopThread, upload_server: ServerFactory, pki: Pki,
                                                   images: dict[str, Image], token: Callable[[str], str],
                                                   data_path: str, tmp_path: Path) -> None:
    impostor = start_proxy(loop_thread, pki, client=pki.wrong_name_client, data_path=data_path,
                           directory=tmp_path / "nginx")
    try:
        server = upload_server()
        impostor.route("disk", Ready(server.url))
        status, _, _ = upload(pki, impostor, token("disk"), images["disk.raw"].path)
        assert status == 401 and server.leftovers() == []
    finally:
        impostor.stop(loop_thread)


def test_server_down_is_500(proxy: ProxyHandle, pki: Pki, images: dict[str, Image],
                            token: Callable[[str], str]) -> None:
    proxy.route("gone", Ready(f"https://127.0.0.1:{free_port()}"))
    status, body, _ = upload(pki, proxy, token("gone"), images["disk.raw"].path)
    assert status == 500 and "error proxying" in body
