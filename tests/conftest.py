"""Session fixtures: the generated images and the real servers that serve them.

Servers are started once per test session on loopback ports and stopped at the end; each
lives in ``tests/servers/`` with its own module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from importer.sources import RetryPolicy
from tests.servers.badserver import BadServer
from tests.servers.images import Image, build_images
from tests.servers.images import sha256_file as sha256_of  # noqa: F401 (used by the tests)
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA, make_ca

pytest_plugins = ["tests.kube.fixtures", "tests.servers.registry", "tests.servers.seaweed"]



@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def test_ca(session_dir: Path) -> TestCA:
    return make_ca(session_dir / "ca")


@pytest.fixture(scope="session")
def ca_dir(test_ca: TestCA, session_dir: Path) -> Path:
    """A cert dir as a certConfigMap would be mounted: the CA under an odd file name."""
    directory = session_dir / "certs"
    directory.mkdir(exist_ok=True)
    (directory / "my-ca.pem").write_bytes(test_ca.cert.read_bytes())
    return directory


@pytest.fixture(scope="session")
def images(session_dir: Path) -> dict[str, Image]:
    return build_images(session_dir / "images")


@pytest.fixture(scope="session")
def nginx(images: dict[str, Image], session_dir: Path, test_ca: TestCA) -> Iterator[Nginx]:
    root = next(iter(images.values())).path.parent
    server = start_nginx(root, session_dir / "nginx", test_ca)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bad_server(images: dict[str, Image]) -> Iterator[BadServer]:
    root = next(iter(images.values())).path.parent
    server = BadServer(root).start()
    yield server
    server.stop()


@pytest.fixture
def fast_retry() -> RetryPolicy:
    """Retries short enough for tests: temporary faults still take the real code path."""
    return RetryPolicy(attempts=4, initial_delay=0.05, max_delay=0.3, stall_timeout=10, connect_timeout=5)
