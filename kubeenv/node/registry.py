"""The node's image registry: the CNCF distribution registry (Debian's ``docker-registry``) on
loopback, plain HTTP, where ``scripts/images`` pushes our images and containerd pulls them.

Its storage is a cache outside the node (``/var/cache/cdi-py/registry`` by default), so a warm
machine pushes nothing: the image tags are hashes of their inputs and are already there.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubeenv.process import Process

DEFAULT_STORAGE = Path(os.environ.get("CDI_REGISTRY_CACHE", "/var/cache/cdi-py/registry"))
PREFERRED_PORT = 5000


def write_config(path: Path, storage: Path, address: str) -> None:
    storage.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {address}
""")


def start(config_dir: Path, log: Path, *, die_with_parent: bool, storage: Path = DEFAULT_STORAGE) -> tuple[str, Process]:
    """Start the registry on 127.0.0.1 (port 5000 when free); ``host:port`` and its process."""
    address = f"127.0.0.1:{_port()}"
    config = config_dir / "registry.yml"
    write_config(config, storage, address)
    process = Process.spawn("registry", ["docker-registry", "serve", str(config)], log,
                            die_with_parent=die_with_parent)
    deadline = time.monotonic() + 30
    while not _answers(address):
        if not process.alive() or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"the image registry did not start on {address}:\n{process.log_tail()}")
        time.sleep(0.1)
    return address, process


def _port() -> int:
    for port in (PREFERRED_PORT, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free port for the image registry")


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
