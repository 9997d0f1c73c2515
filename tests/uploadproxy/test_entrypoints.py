"""The two processes as a pod runs them: ``python -m uploadproxy.server`` and
``python -m uploadproxy.proxy``, configured only by environment variables.

Behaviours under test:
- the server reads CDI's upload pod environment (TLS files, client CA and name, destination,
  size with filesystem overhead); an upload through the proxy process (curl, bearer token;
  with the proxy relaying and with nginx relaying)
  lands in the volume, resized to the usable size, and the server exits 0 with the
  termination message "Upload Complete";
- a server whose DEADLINE has passed while idle exits 0 with "Deadline Passed" and
  ``deadlinePassed: true``;
- unusable settings exit 1 with a termination message saying why.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from importer.target import usable_space
from tests.servers.images import Image
from tests.servers.ports import free_port, wait_listening
from tests.uploadproxy.harness import Pki, curl, sha256_prefix
from uploadproxy import paths, tokens

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def server_env(pki: Pki, volume: Path, port: int, **extra: str) -> dict[str, str]:
    volume.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TLS_CERT_FILE": str(pki.server_cert.cert), "TLS_KEY_FILE": str(pki.server_cert.key),
            "CLIENT_CERT_FILE": str(pki.client_ca.cert), "CLIENT_NAME": "client.upload-server.cdi.kubevirt.io",
            "DESTINATION": str(volume / "disk.img"), "UPLOAD_IMAGE_SIZE": "64Mi", "FILESYSTEM_OVERHEAD": "0.055",
            "PREALLOCATION": "false", "UPLOAD_SERVER_ADDRESS": "127.0.0.1", "UPLOAD_SERVER_PORT": str(port),
            "TERMINATION_MESSAGE_PATH": str(volume.parent / "termination-log"), **extra}


@pytest.fixture(params=["python", "nginx"])
def proxy_process(request: pytest.FixtureRequest, pki: Pki, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A proxy process (either data path) routing default/disk to an upload server port chosen here."""
    server_port, proxy_port = free_port(), free_port()
    env = {**os.environ, "APISERVER_PUBLIC_KEY": tokens.public_key_pem(pki.token_key).decode(),
           "TLS_CERT_FILE": str(pki.proxy_cert.cert), "TLS_KEY_FILE": str(pki.proxy_cert.key),
           "CLIENT_CERT_FILE": str(pki.proxy_client.cert), "CLIENT_KEY_FILE": str(pki.proxy_client.key),
           "SERVER_CA_FILE": str(pki.server_ca.cert), "UPLOADPROXY_ADDRESS": "127.0.0.1",
           "UPLOADPROXY_PORT": str(proxy_port), "UPLOAD_SERVERS": f"default/disk=https://localhost:{server_port}",
           "UPLOADPROXY_DATA_PATH": request.param, "UPLOADPROXY_NGINX_DIR": str(tmp_path / "nginx")}
    log = open(tmp_path / "proxy.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "uploadproxy.proxy"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(proxy_port)
        yield server_port, proxy_port
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_server_and_proxy_processes(pki: Pki, tmp_path: Path, images: dict[str, Image],
                                    proxy_process: tuple[int, int]) -> None:
    server_port, proxy_port = proxy_process
    volume = tmp_path / "data"
    server = subprocess.Popen([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT,
                              env=server_env(pki, volume, server_port))
    try:
        wait_listening(server_port)
        image = images["disk.qcow2"]
        token = tokens.issue(pki.token_key, "default", "disk")
        status, body, _ = curl("--cacert", str(pki.proxy_ca.cert), "-H", f"Authorization: Bearer {token}",
                               "-X", "POST", "-T", str(image.path), f"https://127.0.0.1:{proxy_port}{paths.SYNC}")
        assert status == 200, body
        assert server.wait(30) == 0
    finally:
        server.kill()
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["message"] == "Upload Complete" and message["deadlinePassed"] is False
    disk = volume / "disk.img"
    assert disk.stat().st_size == usable_space(64 * MiB, 0.055)
    assert sha256_prefix(disk, image.raw_size) == image.raw_sha256


def test_deadline_passed(pki: Pki, tmp_path: Path) -> None:
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).isoformat()
    env = server_env(pki, tmp_path / "data", free_port(), DEADLINE=past)
    result = subprocess.run([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env, timeout=60)
    assert result.returncode == 0
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message == {"message": "Deadline Passed", "deadlinePassed": True}


def test_bad_settings(pki: Pki, tmp_path: Path) -> None:
    env = server_env(pki, tmp_path / "data", free_port(), UPLOAD_IMAGE_SIZE="lots")
    result = subprocess.run([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env, timeout=60,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "lots" in json.loads((tmp_path / "termination-log").read_text())["message"]
