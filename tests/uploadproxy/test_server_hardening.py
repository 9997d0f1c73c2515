"""The upload server refuses what would fail open or fill a volume with nothing.

Behaviours under test:
- an empty upload (0 bytes; sync, async and form paths) is a 400 saying so, leaves nothing in
  the volume, and the server then accepts a real image;
- a server without a client CA (or without TLS) refuses to start, in-process and as the pod's
  process (exit 1, the reason in the termination message), unless
  ``UPLOAD_SERVER_NO_CLIENT_AUTH=true`` says explicitly that any client may upload; then it
  serves without a client certificate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.images import Image
from tests.servers.images import sha256_file as sha256_of
from tests.servers.ports import free_port, wait_listening
from tests.uploadproxy.conftest import ServerFactory
from tests.uploadproxy.harness import Pki, curl, server_curl_args, server_settings, wait_idle
from tests.uploadproxy.test_entrypoints import ROOT, server_env
from uploadproxy import paths
from uploadproxy.server import UploadServer


@pytest.mark.parametrize("path", [paths.SYNC, paths.ASYNC, paths.FORM])
def test_empty_upload_is_refused(upload_server: ServerFactory, pki: Pki, images: dict[str, Image],
                                 tmp_path: Path, path: str) -> None:
    handle = upload_server()
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    args = server_curl_args(pki, pki.proxy_client)
    upload = ["-F", f"file=@{empty}"] if path == paths.FORM else ["-X", "POST", "-T", str(empty)]
    status, body, _ = curl(*args, *upload, handle.url + path)
    assert status == 400 and "is empty (0 bytes)" in body, body
    wait_idle(handle)
    assert handle.leftovers() == []
    image = images["disk.raw"]
    assert curl(*args, "-X", "POST", "-T", str(image.path), handle.url + paths.SYNC)[0] == 200
    assert sha256_of(handle.disk) == image.raw_sha256


@pytest.mark.parametrize("missing", ["client_ca", "tls"])
def test_server_without_client_auth_refuses_to_start(pki: Pki, tmp_path: Path, missing: str) -> None:
    overrides = {"client_ca": None} if missing == "client_ca" else {"tls_cert": None, "tls_key": None}
    with pytest.raises(ValueError, match="refusing to start"):
        UploadServer(server_settings(pki, tmp_path / "vol", **overrides))


def test_server_process_without_client_ca_needs_to_be_told(pki: Pki, tmp_path: Path,
                                                          images: dict[str, Image]) -> None:
    env = server_env(pki, tmp_path / "data", free_port())
    del env["CLIENT_CERT_FILE"]
    result = subprocess.run([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env, timeout=60,
                            capture_output=True, text=True)
    assert result.returncode == 1
    message = json.loads((tmp_path / "termination-log").read_text())["message"]
    assert "CLIENT_CERT_FILE is not set" in message and "UPLOAD_SERVER_NO_CLIENT_AUTH" in message
    assert list((tmp_path / "data").iterdir()) == []
    port = free_port()  # told explicitly, the same server starts and takes an upload from anyone
    env = server_env(pki, tmp_path / "data", port, UPLOAD_SERVER_NO_CLIENT_AUTH="true")
    del env["CLIENT_CERT_FILE"]
    server = subprocess.Popen([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env)
    try:
        wait_listening(port)
        image = images["disk.raw"]
        status, body, _ = curl("--cacert", str(pki.server_ca.cert), "-X", "POST", "-T", str(image.path),
                               f"https://127.0.0.1:{port}{paths.SYNC}")
        assert status == 200, body
        assert server.wait(30) == 0
    finally:
        server.kill()
        server.wait()
    assert json.loads((tmp_path / "termination-log").read_text())["message"] == "Upload Complete"
