"""The upload server's clone path against a hostile or broken peer, byte by byte.

The peer holds the cloner's certificate (the only one the server accepts) but sends what a
bug or an attacker would. Behaviours under test:
- an extent longer than the limit, a zstd payload that inflates past its declared length, an
  unknown encoding or frame type, extents out of order or past the source, a segment whose
  digest does not match, the end before everything was verified: each a permanent failure
  with nothing left in the volume, reported again on ``GET`` for a cloner that lost the answer;
- a ``PUT`` at another offset than the acknowledged one: 409 with the server's offset;
- no client certificate: 401; the upload proxy does not forward the clone path (404);
- archive content into a Block volume: permanent, refused on ``POST``;
- PREALLOCATION: a Filesystem target is fully allocated, a Block target zero-filled, both
  equal to the source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import zstandard

from importer import clonewire as wire
from tests.cloner.conftest import LoopFactory, ServerFactory
from tests.cloner.harness import MiB, ClonePki, ServerProcess, cloner_env, run_cloner, sparse_image
from tests.cloner.test_clone import sha256
from tests.uploadproxy.harness import LoopThread, VerifyingSession, make_pki, start_proxy
from uploadproxy import paths, tokens

SIZE = 8 * MiB


class Peer:
    """requests with the cloner's identity, speaking to one server's clone path."""

    def __init__(self, pki: ClonePki, server: ServerProcess) -> None:
        self.session = VerifyingSession(str(pki.server_ca.cert))  # not REQUESTS_CA_BUNDLE's
        self.session.cert = (str(pki.cloner.cert), str(pki.cloner.key))
        self.url = server.url

    def create(self, size: int = SIZE, content: str = "kubevirt") -> requests.Response:
        return self.session.post(self.url, headers={wire.SIZE_HEADER: str(size), wire.CONTENT_TYPE_HEADER: content})

    def put(self, body: bytes, offset: int = 0) -> requests.Response:
        return self.session.put(self.url, data=body, headers={wire.OFFSET_HEADER: str(offset)})

    def state(self) -> dict[str, Any]:
        return dict(self.session.get(self.url).json())


@pytest.fixture
def peer(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> Iterator[tuple[Peer, Path]]:
    volume = tmp_path / "target"
    volume.mkdir()
    server = target_server(volume / "disk.img", size="8Mi")
    yield Peer(clone_pki, server), volume


def extent(offset: int, data: bytes) -> bytes:
    return wire.encode_extent(offset, data, data, wire.RAW)


def segment(end: int, *extents: tuple[int, bytes]) -> bytes:
    digest = wire.SegmentHash()
    for offset, data in extents:
        digest.update(offset, data)
    return wire.encode_segment(end, digest.digest())


A, B = b"a" * 4096, b"b" * 4096
BAD_STREAMS = {
    "extent too long": wire.EXTENT + wire.EXTENT_HEAD.pack(0, wire.MAX_EXTENT + 1, wire.RAW, wire.MAX_EXTENT + 1),
    "zstd bomb": wire.EXTENT + wire.EXTENT_HEAD.pack(0, 4096, wire.ZSTD, len(z := zstandard.ZstdCompressor().compress(
        bytes(1 << 20)))) + z + segment(4096, (0, A)),
    "unknown encoding": wire.EXTENT + wire.EXTENT_HEAD.pack(0, 4096, 7, 4096) + A,
    "unknown frame": b"X" + bytes(64),
    "out of order": extent(8192, A) + extent(0, B) + segment(12288, (8192, A), (0, B)),
    "past the source": extent(SIZE - 2048, A) + segment(SIZE + 2048, (SIZE - 2048, A)),
    "wrong digest": extent(0, A) + segment(4096, (0, B)),
    "done too early": extent(0, A) + segment(4096, (0, A)) + wire.encode_done(SIZE),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_bad_stream_is_refused(name: str, peer: tuple[Peer, Path]) -> None:
    client, volume = peer
    assert client.create().status_code == 201
    answer = client.put(BAD_STREAMS[name])
    assert answer.status_code in (400, 500), answer.text
    body = answer.json()
    assert body["permanent"] is True, body
    assert body["reason"] == ("ChecksumError" if name == "wrong digest" else "InvalidCloneStream"), body
    assert list(volume.iterdir()) == []
    state = client.state()
    assert state["state"] == "failed" and state["reason"] == body["reason"]


def test_wrong_offset_gets_the_servers(peer: tuple[Peer, Path]) -> None:
    client, volume = peer
    assert client.create().status_code == 201
    first = extent(0, A) + segment(4096, (0, A))
    cut = client.session.put(client.url, data=iter([first, b"E\x00"]), headers={wire.OFFSET_HEADER: "0"})
    assert cut.status_code == 400 and cut.json()["permanent"] is False  # the stream ended mid-frame
    answer = client.put(extent(8192, B), offset=8192)
    assert answer.status_code == 409 and answer.json()["offset"] == 4096
    rest = extent(8192, B) + segment(SIZE, (8192, B)) + wire.encode_done(SIZE)
    assert client.put(rest, offset=4096).status_code == 200
    data = (volume / "disk.img").read_bytes()
    assert data[:4096] == A and data[8192:12288] == B and data[4096:8192] == bytes(4096)
    assert hashlib.sha256(data[12288:]).digest() == hashlib.sha256(bytes(SIZE - 12288)).digest()


def test_no_client_certificate(clone_pki: ClonePki, peer: tuple[Peer, Path]) -> None:
    client, _ = peer
    answer = VerifyingSession(str(clone_pki.server_ca.cert)).get(client.url)
    assert answer.status_code == 401


def test_proxy_does_not_forward_the_clone_path(tmp_path: Path) -> None:
    assert paths.CLONE not in paths.PROXY_PATHS
    pki = make_pki(tmp_path / "pki", tokens.generate_key())
    loop = LoopThread()
    handle = start_proxy(loop, pki)
    try:
        token = tokens.issue(pki.token_key, "default", "disk")
        answer = VerifyingSession(str(pki.proxy_ca.cert)).put(f"{handle.url}{paths.CLONE}", data=b"x",
                                                               headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code in (404, 405)
    finally:
        loop.run(handle.proxy.stop())
        loop.stop()


def test_archive_into_block_is_refused(clone_pki: ClonePki, target_server: ServerFactory, loop_device: LoopFactory,
                                       tmp_path: Path) -> None:
    backing = tmp_path / "block.raw"
    backing.write_bytes(b"\x5a" * SIZE)
    client = Peer(clone_pki, target_server(loop_device(backing)))
    answer = client.create(content="archive")
    assert answer.status_code == 500 and answer.json()["permanent"] is True
    assert "Block" in answer.json()["message"]
    assert backing.read_bytes() == b"\x5a" * SIZE


@pytest.mark.parametrize("target_mode", ["Filesystem", "Block"])
def test_preallocation(target_mode: str, clone_pki: ClonePki, target_server: ServerFactory,
                       loop_device: LoopFactory, tmp_path: Path) -> None:
    image = tmp_path / "source" / "disk.img"
    sparse_image(image, 16 * MiB, extents=30)
    if target_mode == "Block":
        backing = tmp_path / "target.raw"
        backing.write_bytes(b"\xff" * (16 * MiB))
        target = loop_device(backing)
        server = target_server(target, PREALLOCATION="true")
    else:
        target = tmp_path / "target" / "disk.img"
        target.parent.mkdir()
        server = target_server(target, size="16Mi", PREALLOCATION="true")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=image.parent), tmp_path)
    assert run.returncode == 0, run.log
    assert server.wait() == 0 and server.termination()["preallocationApplied"] is True
    assert sha256(target) == sha256(image)
    if target_mode == "Filesystem":
        assert target.stat().st_blocks * 512 >= 16 * MiB
    else:
        assert backing.stat().st_blocks * 512 >= 16 * MiB  # zero-filled, not punched
