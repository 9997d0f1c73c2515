"""The resumable upload protocol at the upload server (``/v1beta1/upload-resumable``).

Behaviours under test:
- HEAD without Upload-Id is the capability probe (200); creation needs a positive
  Upload-Length (400 otherwise) and answers 201 with an Upload-Id at offset 0;
- a PATCH at the wrong offset -> 409 with the server's offset; parts advance the offset (204);
  HEAD reports offset, length and state; while paused, CDI's paths answer 503 naming the pause;
- the PATCH with the last byte answers 200 and the disk holds exactly the image (async: after
  the outcome; sync: at once, the answer waits for the commit);
- a connection that dies mid-PATCH keeps every byte the server accepted: HEAD gives the offset
  and resuming from it produces the exact image (no byte lost or doubled);
- a paused upload not resumed within the timeout is abandoned: nothing left, HEAD 404, and the
  volume accepts a new upload; DELETE abandons at once;
- a failed upload is reported to a later HEAD/PATCH with its status (checksum mismatch -> 400);
- stopping the server ends a paused upload's import at once (its thread must not outlive the
  server waiting for bytes) and leaves nothing on the volume.
"""

from __future__ import annotations

import time

import requests

from tests.servers.images import Image
from tests.uploadproxy.conftest import ServerFactory
from tests.uploadproxy.harness import (LoopThread, Pki, ServerHandle, curl, raw_request, server_curl_args,
                                       server_session, wait_idle, wait_outcome)
from tests.servers.images import sha256_file as sha256_of
from uploadproxy import paths

MiB = 1 << 20


class Client:
    def __init__(self, pki: Pki, handle: ServerHandle) -> None:
        self.http = server_session(pki)
        self.url = handle.url + paths.RESUMABLE

    def create(self, length: int, **headers: str) -> requests.Response:
        return self.http.post(self.url, headers={paths.LENGTH_HEADER: str(length), **headers})

    def patch(self, upload_id: str, offset: int, data: bytes) -> requests.Response:
        return self.http.patch(self.url, data=data, headers={paths.ID_HEADER: upload_id,
                                                             paths.OFFSET_HEADER: str(offset)})

    def head(self, upload_id: str | None = None) -> requests.Response:
        return self.http.head(self.url, headers={paths.ID_HEADER: upload_id} if upload_id else {})


def offset(response: requests.Response) -> int:
    return int(response.headers[paths.OFFSET_HEADER])


def test_protocol_walk(upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                       loop_thread: LoopThread) -> None:
    handle = upload_server()
    client = Client(pki, handle)
    image = images["disk.qcow2"]
    data = image.path.read_bytes()
    assert client.head().status_code == 200
    assert client.create(0).status_code == 400
    assert client.http.post(client.url).status_code == 400
    created = client.create(len(data))
    assert created.status_code == 201 and offset(created) == 0
    upload_id = created.headers[paths.ID_HEADER]
    wrong = client.patch(upload_id, 5, data[5:])
    assert wrong.status_code == 409 and offset(wrong) == 0
    part = client.patch(upload_id, 0, data[: 3 * MiB])
    assert part.status_code == 204 and offset(part) == 3 * MiB
    state = client.head(upload_id)
    assert (offset(state), state.headers[paths.LENGTH_HEADER], state.headers[paths.STATE_HEADER]) == \
        (3 * MiB, str(len(data)), "paused")
    status, body, _ = curl(*server_curl_args(pki, pki.proxy_client), "-X", "POST", "-T", str(image.path),
                           handle.url + paths.SYNC)
    assert status == 503 and "paused at byte 3145728" in body
    assert client.head("someone-else").status_code == 404
    last = client.patch(upload_id, 3 * MiB, data[3 * MiB:])
    assert last.status_code == 200, last.text
    wait_outcome(loop_thread, handle)
    assert sha256_of(handle.disk) == image.raw_sha256
    assert client.head(upload_id).headers[paths.STATE_HEADER] == "done"


def test_sync_mode_answers_after_commit(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    client = Client(pki, handle)
    image = images["disk.raw.gz"]
    data = image.path.read_bytes()
    upload_id = client.create(len(data), **{paths.MODE_HEADER: "sync"}).headers[paths.ID_HEADER]
    assert client.patch(upload_id, 0, data).status_code == 200
    assert sha256_of(handle.disk) == image.raw_sha256  # no waiting: the answer came after the commit


def test_broken_connection_resumes_without_loss(upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                                                loop_thread: LoopThread) -> None:
    handle = upload_server()
    client = Client(pki, handle)
    image = images["disk.raw"]
    data = image.path.read_bytes()
    upload_id = client.create(len(data)).headers[paths.ID_HEADER]
    head = (f"PATCH {paths.RESUMABLE} HTTP/1.1\r\nHost: 127.0.0.1\r\n{paths.ID_HEADER}: {upload_id}\r\n"
            f"{paths.OFFSET_HEADER}: 0\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    raw_request(handle.server.port, head, data[: 5 * MiB + 12345], pki.server_ca.cert, pki.proxy_client)
    deadline = time.monotonic() + 30
    while (state := client.head(upload_id)).headers[paths.STATE_HEADER] != "paused":
        assert time.monotonic() < deadline, state.headers
        time.sleep(0.02)
    resumed_at = offset(state)
    assert 0 < resumed_at <= 5 * MiB + 12345
    assert client.patch(upload_id, resumed_at, data[resumed_at:]).status_code == 200
    wait_outcome(loop_thread, handle)
    assert sha256_of(handle.disk) == image.raw_sha256


def test_paused_upload_expires(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server(resume_timeout=0.5)
    client = Client(pki, handle)
    data = images["disk.raw"].path.read_bytes()
    upload_id = client.create(len(data)).headers[paths.ID_HEADER]
    assert client.patch(upload_id, 0, data[:MiB]).status_code == 204
    deadline = time.monotonic() + 30
    while client.head(upload_id).status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    wait_idle(handle)
    assert handle.leftovers() == []
    assert client.create(len(data)).status_code == 201


def test_delete_abandons(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    client = Client(pki, handle)
    data = images["disk.raw"].path.read_bytes()
    upload_id = client.create(len(data)).headers[paths.ID_HEADER]
    assert client.patch(upload_id, 0, data[:MiB]).status_code == 204
    assert client.http.delete(client.url, headers={paths.ID_HEADER: upload_id}).status_code == 204
    assert handle.leftovers() == [] and not handle.server.uploads.busy
    assert client.create(len(data)).status_code == 201


def test_failure_is_reported_later(upload_server: ServerFactory, pki: Pki, images: dict[str, Image]) -> None:
    handle = upload_server()
    client = Client(pki, handle)
    data = images["disk.raw.xz"].path.read_bytes()
    created = client.create(len(data), **{paths.CHECKSUM_HEADER: "md5:" + "0" * 32})
    upload_id = created.headers[paths.ID_HEADER]
    answer = client.patch(upload_id, 0, data)
    assert answer.status_code == 400 and "checksum mismatch" in answer.text
    assert client.head(upload_id).status_code == 400
    again = client.patch(upload_id, len(data), b"")
    assert again.status_code == 400 and "checksum mismatch" in again.text
    assert handle.leftovers() == []


def test_stopping_the_server_ends_a_paused_upload(upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                                                  loop_thread: LoopThread) -> None:
    handle = upload_server()
    client = Client(pki, handle)
    data = images["disk.raw"].path.read_bytes()
    upload_id = client.create(len(data)).headers[paths.ID_HEADER]
    assert client.patch(upload_id, 0, data[: 2 * MiB]).status_code == 204
    session = handle.server.uploads.session
    assert session is not None and not session.finished.done()
    loop_thread.run(handle.server.stop(), timeout=60)
    assert session.finished.done() and isinstance(session.finished.exception(), Exception)
    assert handle.leftovers() == []
