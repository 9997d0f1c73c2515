"""The cloner pod's settings, read once from its environment.

The controller's contract: ``UPLOAD_URL`` (``https://cdi-upload-<pvc>.<ns>.svc:8443`` plus the
clone path), ``CLIENT_CERT_FILE``/``CLIENT_KEY_FILE`` (the cloner's client certificate),
``SERVER_CA_FILE`` (the CA of upload servers), ``SOURCE_VOLUME_MODE`` (``Filesystem`` or
``Block``), ``CONTENT_TYPE`` (``kubevirt`` or ``archive``), ``OWNER_UID`` (the label of the
progress metric). Ours, with defaults for a real pod: ``CLONE_SOURCE_DIR``
(``/var/run/cdi/clone/source``), ``CLONE_SOURCE_DEVICE`` (``/dev/cdi-block-volume``),
``CLONE_METRICS_PORT`` (8443; 0 turns the endpoint off), ``CLONE_RETRY_ATTEMPTS`` (8),
``CLONE_COMPRESSION`` (``auto`` or ``off``), ``CLONE_SEGMENT_BYTES`` (16Mi of data per
verified segment), ``TERMINATION_MESSAGE_PATH`` (``/dev/termination-log``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from importer.errors import InvalidSource
from importer.quantity import parse_quantity

SOURCE_DIR = Path("/var/run/cdi/clone/source")
SOURCE_DEVICE = Path("/dev/cdi-block-volume")


@dataclass
class ClonerSettings:
    upload_url: str
    client_cert: Path | None = None
    client_key: Path | None = None
    server_ca: Path | None = None
    volume_mode: str = "Filesystem"
    content_type: str = "kubevirt"
    owner_uid: str = ""
    source_dir: Path = SOURCE_DIR
    source_device: Path = SOURCE_DEVICE
    metrics_port: int = 8443
    attempts: int = 8
    compress: bool = True
    segment_bytes: int = 16 << 20
    termination_message_path: Path = Path("/dev/termination-log")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ClonerSettings":
        env = os.environ if env is None else env
        url = env.get("UPLOAD_URL", "").strip()
        if not url:
            raise InvalidSource("UPLOAD_URL is not set: the cloner does not know where to send")
        try:
            return cls(
                upload_url=url, client_cert=_path(env.get("CLIENT_CERT_FILE")),
                client_key=_path(env.get("CLIENT_KEY_FILE")), server_ca=_path(env.get("SERVER_CA_FILE")),
                volume_mode=env.get("SOURCE_VOLUME_MODE", "Filesystem") or "Filesystem",
                content_type=env.get("CONTENT_TYPE", "kubevirt") or "kubevirt",
                owner_uid=env.get("OWNER_UID", ""),
                source_dir=Path(env.get("CLONE_SOURCE_DIR") or SOURCE_DIR),
                source_device=Path(env.get("CLONE_SOURCE_DEVICE") or SOURCE_DEVICE),
                metrics_port=int(env.get("CLONE_METRICS_PORT", "8443")),
                attempts=max(1, int(env.get("CLONE_RETRY_ATTEMPTS", "8"))),
                compress=env.get("CLONE_COMPRESSION", "auto").strip().lower() != "off",
                segment_bytes=parse_quantity(env.get("CLONE_SEGMENT_BYTES") or "16Mi"),
                termination_message_path=termination_path_from_env(env))
        except ValueError as error:
            raise InvalidSource(f"bad cloner settings: {error}") from error


def termination_path_from_env(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log"))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
