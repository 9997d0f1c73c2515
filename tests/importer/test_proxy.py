"""Imports through an HTTP(S) proxy taken from the environment (CDI's importProxy becomes
``http_proxy``/``https_proxy``/``no_proxy`` in the importer pod).

Behaviours under test: plain http is relayed by the proxy; https is tunnelled with CONNECT
and still verified against the cert dir; ``no_proxy`` hosts bypass it; both the library and
the pod entrypoint honour the variables; content is checked by hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import cdi
from tests.conftest import sha256_of
from tests.importer.test_pod import pod_env, run_pod
from tests.servers.forwardproxy import ForwardProxy
from tests.servers.images import Image
from tests.servers.nginx import Nginx


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.close()


def test_http_through_proxy(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, images: dict[str, Image],
                            nginx: Nginx, tmp_path: Path) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    cdi.import_image(f"{nginx.http}/disk.qcow2.gz", tmp_path / "d.img")
    assert sha256_of(tmp_path / "d.img") == images["disk.qcow2.gz"].raw_sha256
    assert any(line.startswith(f"GET {nginx.http}/disk.qcow2.gz") for line in proxy.requests)


def test_https_tunnelled_and_verified(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch,
                                      images: dict[str, Image], nginx: Nginx, ca_dir: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("https_proxy", proxy.url)
    cdi.import_image(f"{nginx.https}/disk.vmdk", tmp_path / "d.img", cert_dir=ca_dir)
    assert sha256_of(tmp_path / "d.img") == images["disk.vmdk"].raw_sha256
    host = nginx.https.split("://", 1)[1]
    assert any(line.startswith(f"CONNECT {host}") for line in proxy.requests)


def test_no_proxy_bypasses(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, images: dict[str, Image],
                           nginx: Nginx, tmp_path: Path) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    cdi.import_image(f"{nginx.http}/disk.raw.xz", tmp_path / "d.img")
    assert sha256_of(tmp_path / "d.img") == images["disk.raw.xz"].raw_sha256
    assert proxy.requests == []


def test_pod_honours_proxy_env(proxy: ForwardProxy, images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=f"{nginx.http}/disk.raw.gz",
                  http_proxy=proxy.url)
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        env.pop(name, None)
    code, message = run_pod(env)
    assert code == 0, message
    assert sha256_of(tmp_path / "data" / "disk.img") == images["disk.raw.gz"].raw_sha256
    assert any("disk.raw.gz" in line for line in proxy.requests)
