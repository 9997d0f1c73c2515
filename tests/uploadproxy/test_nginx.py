"""nginx as the upload proxy's data path (``UPLOADPROXY_DATA_PATH=nginx``), beyond the proxy
behaviours test_proxy.py and test_client.py already run through both data paths.

Behaviours under test:
- the config made from the settings is one real nginx accepts, listening on the proxy's port
  with its certificate, relaying unbuffered with the client certificate and the servers' CA;
- what the proxy answers itself (refusals, the probe, CORS preflight, ``/healthz``, an unknown
  path) nginx answers with the same status and body as the Python data path;
- a server named by IP address with no name to check is refused with a clear 500 (nginx checks
  names only), never relayed unchecked;
- the proxy process supervises nginx: nginx killed -> the proxy exits 1; the proxy killed ->
  nginx goes too; nginx selected but not installed -> exit 1 saying so; which data path is in
  use is logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.servers.images import Image
from tests.servers.ports import free_port, wait_listening
from tests.uploadproxy.conftest import ServerFactory
from tests.uploadproxy.harness import LoopThread, NotReady, Pki, ProxyHandle, Ready, curl, proxy_settings, start_proxy
from uploadproxy import nginx, paths, tokens

ROOT = Path(__file__).resolve().parents[2]


def test_config_is_accepted_by_nginx(pki: Pki, tmp_path: Path) -> None:
    settings = proxy_settings(pki, pki.proxy_client, 8443, tmp_path)
    text = nginx.config(settings, 41234, tmp_path, workers=2)
    for expected in (f"listen 127.0.0.1:8443 ssl; ssl_certificate {pki.proxy_cert.cert};",
                     f"proxy_ssl_certificate {pki.proxy_client.cert};",
                     f"proxy_ssl_trusted_certificate {pki.server_ca.cert}; proxy_ssl_verify on;",
                     "client_max_body_size 0;", "proxy_request_buffering off;", "auth_request /.cdi/gate;",
                     "proxy_pass http://127.0.0.1:41234/.cdi/gate;", f"pid {tmp_path / 'nginx.pid'};"):
        assert expected in text
    for name in nginx.TEMP_DIRS.values():
        (tmp_path / name).mkdir()
    (tmp_path / "nginx.conf").write_text(text)
    check = subprocess.run(["nginx", "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.fixture
def both(loop_thread: LoopThread, pki: Pki, tmp_path: Path) -> Iterator[tuple[ProxyHandle, ProxyHandle]]:
    """The Python data path and the nginx one, sharing one routing table."""
    python = start_proxy(loop_thread, pki)
    relayed = start_proxy(loop_thread, pki, data_path="nginx", directory=tmp_path / "nginx")
    relayed.proxy.resolver = python.resolver
    relayed.resolver = python.resolver
    yield python, relayed
    python.stop(loop_thread)
    relayed.stop(loop_thread)


def test_own_answers_match_the_python_data_path(both: tuple[ProxyHandle, ProxyHandle], pki: Pki,
                                                images: dict[str, Image], token: Callable[[str], str]) -> None:
    python, relayed = both
    python.route("pending", NotReady("upload pod <b>not</b> ready & waiting"))
    python.route("odd", Ready("https://localhost:1", content_type="blockdevice-clone"))
    image = str(images["disk.raw"].path)
    expired = tokens.issue(pki.token_key, "default", "disk", now=time.time() - 400)
    clone = tokens.issue(pki.token_key, "default", "disk", operation="Clone")
    requests = [
        ["-X", "POST", "-T", image, paths.SYNC],
        ["-H", "Authorization: Basic Zm9vOmJhcg==", "-X", "POST", "-T", image, paths.ASYNC],
        ["-H", f"Authorization: Bearer {expired}", "-X", "POST", "-T", image, paths.SYNC],
        ["-H", f"Authorization: Bearer {clone}", "-X", "POST", "-T", image, paths.SYNC],
        ["-H", f"Authorization: Bearer {token('nowhere')}", "-X", "POST", "-T", image, paths.FORM],
        ["-H", f"Authorization: Bearer {token('pending')}", "-X", "PUT", "-T", image, paths.RESUMABLE],
        ["-H", f"Authorization: Bearer {token('odd')}", "-X", "POST", "-T", image, paths.SYNC],
        ["-I", paths.ASYNC], ["-I", paths.RESUMABLE], ["/healthz"], ["/no/such/path"],
        ["-X", "OPTIONS", "-H", "Origin: https://ui.example", "-H", "Access-Control-Request-Method: PUT",
         "-H", "Access-Control-Request-Headers: upload-offset", paths.RESUMABLE],
    ]
    for request in requests:
        *args, path = request
        answers = [curl("--cacert", str(pki.proxy_ca.cert), *args, proxy.url + path)[:2] for proxy in both]
        if "-I" in args:  # the "body" is the headers, which differ (Server, Date)
            answers = [(status, "") for status, _ in answers]
        assert answers[1] == answers[0], request
    status, body, _ = curl("--cacert", str(pki.proxy_ca.cert), "-X", "POST", "-T", image, relayed.url + paths.SYNC)
    assert (status, body) == (400, "missing Authorization header with an upload token")


def test_cors_headers_of_own_answers(proxy: ProxyHandle, pki: Pki) -> None:
    status, headers, _ = curl("--cacert", str(pki.proxy_ca.cert), "-D", "-",
                              "-H", "Origin: https://ui.example", "-X", "POST", proxy.url + paths.SYNC)
    lower = headers.lower()
    assert status == 400 and "access-control-allow-origin: *" in lower and "vary: origin" in lower


def test_server_named_by_address_is_refused(loop_thread: LoopThread, pki: Pki, upload_server: ServerFactory,
                                            images: dict[str, Image], token: Callable[[str], str],
                                            tmp_path: Path) -> None:
    relayed = start_proxy(loop_thread, pki, data_path="nginx", directory=tmp_path / "nginx")
    try:
        server = upload_server()
        relayed.resolver.table[("default", "disk")] = Ready(server.url)  # 127.0.0.1, no name
        status, body, _ = curl("--cacert", str(pki.proxy_ca.cert), "-H", f"Authorization: Bearer {token('disk')}",
                               "-X", "POST", "-T", str(images["disk.raw"].path), relayed.url + paths.SYNC)
        assert status == 500 and "named by address" in body
        assert server.leftovers() == []
    finally:
        relayed.stop(loop_thread)


def proxy_env(pki: Pki, port: int, directory: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "APISERVER_PUBLIC_KEY": tokens.public_key_pem(pki.token_key).decode(),
            "TLS_CERT_FILE": str(pki.proxy_cert.cert), "TLS_KEY_FILE": str(pki.proxy_cert.key),
            "CLIENT_CERT_FILE": str(pki.proxy_client.cert), "CLIENT_KEY_FILE": str(pki.proxy_client.key),
            "SERVER_CA_FILE": str(pki.server_ca.cert), "UPLOADPROXY_ADDRESS": "127.0.0.1",
            "UPLOADPROXY_PORT": str(port), "UPLOAD_SERVERS": "default/disk=https://localhost:1",
            "UPLOADPROXY_DATA_PATH": "nginx", "UPLOADPROXY_NGINX_DIR": str(directory), **extra}


def start_proxy_process(pki: Pki, directory: Path, **extra: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uploadproxy.proxy"], cwd=ROOT, text=True,
                               env=proxy_env(pki, port, directory, **extra), stderr=subprocess.PIPE)
    wait_listening(port)
    return process, port


def nginx_pid(directory: Path) -> int:
    deadline = time.monotonic() + 20
    while not (directory / "nginx.pid").exists():
        assert time.monotonic() < deadline, "nginx wrote no pid file"
        time.sleep(0.05)
    return int((directory / "nginx.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_nginx_dying_ends_the_proxy(pki: Pki, tmp_path: Path) -> None:
    process, port = start_proxy_process(pki, tmp_path)
    try:
        assert curl("--cacert", str(pki.proxy_ca.cert), f"https://127.0.0.1:{port}/healthz")[:2] == (200, "OK")
        os.kill(nginx_pid(tmp_path), signal.SIGKILL)
        assert process.wait(30) == 1
        assert process.stderr is not None
        log = process.stderr.read()
        assert "data path: nginx" in log and "nginx exited" in log
    finally:
        process.kill()
        process.wait(10)


def test_proxy_dying_takes_nginx_along(pki: Pki, tmp_path: Path) -> None:
    process, _ = start_proxy_process(pki, tmp_path)
    master = nginx_pid(tmp_path)
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 30
    while alive(master):
        assert time.monotonic() < deadline, "nginx outlived the proxy"
        time.sleep(0.05)


def test_nginx_selected_but_missing(pki: Pki, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "uploadproxy.proxy"], cwd=ROOT, text=True, capture_output=True,
                            env=proxy_env(pki, free_port(), tmp_path, UPLOADPROXY_NGINX="no-such-nginx"), timeout=60)
    assert result.returncode == 1 and "'no-such-nginx' is not installed" in result.stderr
    result = subprocess.run([sys.executable, "-m", "uploadproxy.proxy"], cwd=ROOT, text=True, capture_output=True,
                            env=proxy_env(pki, free_port(), tmp_path, UPLOADPROXY_DATA_PATH="haproxy"), timeout=60)
    assert result.returncode == 1 and "UPLOADPROXY_DATA_PATH must be one of python, nginx" in result.stderr
