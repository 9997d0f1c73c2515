"""The two processes of a host-assisted clone, on loopback with real mutual TLS.

``python -m uploadproxy.server`` (the target's upload server, CDI's upload pod environment) and
``python -m cloner`` (the source pod's environment), exactly as the pods run them; volumes are
directories and real loop devices. The PKI is the cluster's: a CA signs upload servers (the
cloner trusts it), another signs the cloner's client certificate (the server trusts it and
checks the CN it was told, ``CLIENT_NAME``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers.pki import CertPair, TestCA, make_ca
from tests.servers.ports import free_port, wait_listening
from uploadproxy.paths import CLONE

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
CLONER_NAME = "default/source-default/target"
"""The cloner's CN: CDI's ``<srcNs>/<srcPvc>-<tgtNs>/<tgtPvc>``."""


@dataclass
class ClonePki:
    server_ca: TestCA
    client_ca: TestCA
    server: CertPair
    cloner: CertPair
    wrong_name: CertPair
    stranger: CertPair


def make_clone_pki(directory: Path) -> ClonePki:
    server_ca, client_ca = make_ca(directory / "server-ca", "server-ca"), make_ca(directory / "client-ca", "client-ca")
    stranger_ca = make_ca(directory / "stranger-ca", "stranger-ca")
    for where in ("cloner", "stranger"):  # the CN has slashes; the file name follows it
        (directory / where / CLONER_NAME).parent.mkdir(parents=True, exist_ok=True)
    return ClonePki(server_ca, client_ca, server=server_ca.issue(directory / "server", "cdi-upload-target"),
                    cloner=client_ca.issue(directory / "cloner", CLONER_NAME, client=True),
                    wrong_name=client_ca.issue(directory / "wrong", "somebody-else", client=True),
                    stranger=stranger_ca.issue(directory / "stranger", CLONER_NAME, client=True))


class ServerProcess:
    """``python -m uploadproxy.server`` for one target: ``volume/disk.img`` or a device."""

    def __init__(self, pki: ClonePki, workdir: Path, destination: Path, size: str | None = None,
                 **extra: str) -> None:
        self.port = free_port()
        self.termination_path = workdir / "server.termination"
        self.log_path = workdir / "server.log"
        env = {**os.environ, "TLS_CERT_FILE": str(pki.server.cert), "TLS_KEY_FILE": str(pki.server.key),
               "CLIENT_CERT_FILE": str(pki.client_ca.cert), "CLIENT_NAME": CLONER_NAME,
               "DESTINATION": str(destination), "FILESYSTEM_OVERHEAD": "0", "PREALLOCATION": "false",
               "UPLOAD_SERVER_ADDRESS": "127.0.0.1", "UPLOAD_SERVER_PORT": str(self.port),
               "TERMINATION_MESSAGE_PATH": str(self.termination_path), **extra}
        if size is not None:
            env["UPLOAD_IMAGE_SIZE"] = size
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.port)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{CLONE}"

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def termination(self) -> dict[str, Any]:
        return json.loads(self.termination_path.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@dataclass
class ClonerRun:
    returncode: int
    termination: dict[str, Any]
    log: str


def cloner_env(pki: ClonePki, url: str, workdir: Path, *, mode: str = "Filesystem", content: str = "kubevirt",
               source: Path, client: CertPair | None = None, **extra: str) -> dict[str, str]:
    client = client or pki.cloner
    env = {**os.environ, "UPLOAD_URL": url, "CLIENT_CERT_FILE": str(client.cert), "CLIENT_KEY_FILE": str(client.key),
           "SERVER_CA_FILE": str(pki.server_ca.cert), "SOURCE_VOLUME_MODE": mode, "CONTENT_TYPE": content,
           "OWNER_UID": "11111111-2222-3333-4444-555555555555", "CLONE_METRICS_PORT": "0",
           "CLONE_RETRY_ATTEMPTS": "3", "TERMINATION_MESSAGE_PATH": str(workdir / "cloner.termination"), **extra}
    env["CLONE_SOURCE_DEVICE" if mode == "Block" else "CLONE_SOURCE_DIR"] = str(source)
    return env


def start_cloner(env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    (workdir / "cloner.termination").unlink(missing_ok=True)
    log = open(workdir / "cloner.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "cloner"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()


def finish_cloner(process: subprocess.Popen[bytes], workdir: Path, timeout: float = 120) -> ClonerRun:
    code = process.wait(timeout)
    termination = workdir / "cloner.termination"
    return ClonerRun(code, json.loads(termination.read_text()) if termination.exists() else {},
                     (workdir / "cloner.log").read_text())


def run_cloner(env: dict[str, str], workdir: Path, timeout: float = 120) -> ClonerRun:
    return finish_cloner(start_cloner(env, workdir), workdir, timeout)


def sparse_image(path: Path, size: int, extents: int, seed: int = 3, extent: int = 64 << 10) -> int:
    """A sparse file of ``size`` bytes with ``extents`` random data extents (some 4 KiB ones
    among them), plus an allocated run of zeros; returns the bytes of non-zero data."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
        written = 0
        slots = rng.sample(range(size // extent), extents)
        for index, slot in enumerate(slots):
            length = 4096 if index % 5 == 0 else extent
            data = rng.randbytes(length)
            file.seek(slot * extent)
            file.write(data)
            written += length
        os.posix_fallocate(file.fileno(), size // 2, 1 * MiB)  # allocated zeros: must not be sent
    return written


def losetup(backing: Path) -> Path:
    return Path(subprocess.run(["losetup", "-f", "--show", str(backing)], check=True, capture_output=True,
                               text=True).stdout.strip())


def detach(device: Path) -> None:
    subprocess.run(["losetup", "-d", str(device)], check=False)
