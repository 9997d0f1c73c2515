"""Fixtures for the upload tests: one event loop thread, the PKI, servers and a proxy."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.uploadproxy.harness import (LoopThread, Pki, ProxyHandle, ServerHandle, make_pki, server_settings,
                                       start_proxy, start_server)
from uploadproxy import tokens


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("upload-pki"), tokens.generate_key())


ServerFactory = Callable[..., ServerHandle]


@pytest.fixture
def upload_server(loop_thread: LoopThread, pki: Pki, tmp_path: Path) -> Iterator[ServerFactory]:
    """``upload_server(**settings)``: a fresh upload server for one volume under tmp_path."""
    started: list[ServerHandle] = []

    def factory(volume: Path | None = None, **overrides: Any) -> ServerHandle:
        settings = server_settings(pki, volume or tmp_path / f"volume{len(started)}", **overrides)
        handle = start_server(loop_thread, settings)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        loop_thread.run(handle.server.stop())


@pytest.fixture(params=["python", "nginx"])
def proxy(request: pytest.FixtureRequest, loop_thread: LoopThread, pki: Pki, tmp_path: Path) -> Iterator[ProxyHandle]:
    """The proxy with either data path: this process relaying, or nginx (uploadproxy.nginx)."""
    handle = start_proxy(loop_thread, pki, data_path=request.param, directory=tmp_path / "nginx")
    yield handle
    handle.stop(loop_thread)


@pytest.fixture
def token(pki: Pki) -> Callable[[str], str]:
    return lambda pvc: tokens.issue(pki.token_key, "default", pvc)


@pytest.fixture(scope="session")
def archive_tar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A gzipped tar of a few files (one in a subdirectory) and their contents."""
    rng = random.Random(11)
    files = {"hello.txt": b"hello upload\n" * 100, "sub/blob.bin": rng.randbytes(3 << 20),
             "sub/deeper/empty": b""}
    path = tmp_path_factory.mktemp("archive") / "files.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, files


@pytest.fixture(scope="session")
def random_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 MiB of incompressible data: a raw image with no holes (fills a filesystem for real)."""
    path = tmp_path_factory.mktemp("random") / "random.raw"
    path.write_bytes(random.Random(5).randbytes(8 << 20))
    return path
