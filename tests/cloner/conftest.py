"""Fixtures for the clone tests: the PKI, upload server processes, loop devices."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.cloner.harness import ClonePki, ServerProcess, detach, losetup, make_clone_pki


@pytest.fixture(scope="session")
def clone_pki(tmp_path_factory: pytest.TempPathFactory) -> ClonePki:
    return make_clone_pki(tmp_path_factory.mktemp("clone-pki"))


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def target_server(clone_pki: ClonePki, tmp_path: Path) -> Iterator[ServerFactory]:
    """``target_server(destination, size=None, **env)``: an upload server process."""
    started: list[ServerProcess] = []

    def factory(destination: Path, size: str | None = None, **extra: str) -> ServerProcess:
        server = ServerProcess(clone_pki, tmp_path, destination, size, **extra)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


LoopFactory = Callable[[Path], Path]


@pytest.fixture
def loop_device() -> Iterator[LoopFactory]:
    """``loop_device(backing_file)``: a real loop device over the file, detached afterwards."""
    devices: list[Path] = []

    def attach(backing: Path) -> Path:
        device = losetup(backing)
        devices.append(device)
        return device

    yield attach
    for device in devices:
        detach(device)
