"""The importer pod's settings, read once from CDI's environment variables.

Only :func:`PodSettings.from_env` looks at ``os.environ``; everything else receives this
object. Names and meanings follow CDI's importer pod (``IMPORTER_*``, ``OWNER_UID``,
``FILESYSTEM_OVERHEAD``, ``INSECURE_TLS``, ``PREALLOCATION``); the few additions are ours
and have defaults that match a real pod.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import InvalidSource
from .quantity import parse_quantity

SOURCE_KINDS = {"http": "http", "s3": "s3", "registry": "registry", "none": "blank",
                "blank": "blank", "file": "file"}


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PodSettings:
    source: str
    """``http``, ``s3``, ``registry``, ``file`` or ``blank`` (CDI's ``none``)."""
    endpoint: str = ""
    content_type: str = "kubevirt"
    image_size: int | None = None
    """The PVC's requested size in bytes (``IMPORTER_IMAGE_SIZE``)."""
    owner_uid: str = ""
    filesystem_overhead: float = 0.0
    insecure_tls: bool = False
    access_key_id: str | None = None
    secret_key: str | None = None
    cert_dir: Path | None = None
    proxy_cert_dir: Path | None = None
    extra_headers: list[str] = field(default_factory=list)
    secret_headers: list[str] = field(default_factory=list)
    checksum: str | None = None
    preallocation: bool = False
    architecture: str | None = None
    data_dir: Path = Path("/data")
    """Filesystem volumes are mounted here; the image goes to ``disk.img`` in it."""
    block_device: Path = Path("/dev/cdi-block-volume")
    scratch_dir: Path | None = None
    termination_message_path: Path = Path("/dev/termination-log")
    metrics_port: int = 8443
    """0 disables the metrics endpoint (the library and tests need no server)."""
    retry_attempts: int = 8
    """Retries of a temporary fault inside the pod before it exits for kubelet to restart it."""
    speed_limit: int = 1024
    """Bytes/s a transfer must keep up over ``speed_time`` seconds (``IMPORTER_SPEED_LIMIT``)."""
    speed_time: float = 60.0
    """``IMPORTER_SPEED_TIME``."""
    retry_time: float = 300.0
    """Seconds one transfer may spend in all recovering from faults (``IMPORTER_RETRY_TIME``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PodSettings":
        env = os.environ if env is None else env
        kind = env.get("IMPORTER_SOURCE", "http").strip().lower()
        if kind not in SOURCE_KINDS:
            raise InvalidSource(f"IMPORTER_SOURCE={kind!r} is not supported: use one of "
                                + ", ".join(sorted(SOURCE_KINDS)))
        content_type = env.get("IMPORTER_CONTENTTYPE", "kubevirt") or "kubevirt"
        if content_type not in ("kubevirt", "archive"):
            raise InvalidSource(f"ContentType not one of: kubevirt, archive (got {content_type!r})")
        size = env.get("IMPORTER_IMAGE_SIZE", "").strip()
        scratch = env.get("IMPORTER_SCRATCH_DIR", "/scratch")
        return cls(
            source=SOURCE_KINDS[kind],
            endpoint=env.get("IMPORTER_ENDPOINT", ""),
            content_type=content_type,
            image_size=parse_quantity(size) if size else None,
            owner_uid=env.get("OWNER_UID", ""),
            filesystem_overhead=float(env.get("FILESYSTEM_OVERHEAD", "0") or 0),
            insecure_tls=_bool(env.get("INSECURE_TLS")),
            access_key_id=env.get("IMPORTER_ACCESS_KEY_ID") or None,
            secret_key=env.get("IMPORTER_SECRET_KEY") or None,
            cert_dir=_dir(env.get("IMPORTER_CERT_DIR")),
            proxy_cert_dir=_dir(env.get("IMPORTER_PROXY_CERT_DIR")),
            extra_headers=_numbered(env, "IMPORTER_EXTRA_HEADER_"),
            secret_headers=_secret_headers(Path(env.get("IMPORTER_SECRET_HEADERS_DIR", "/extraheaders"))),
            checksum=env.get("IMPORTER_CHECKSUM") or None,
            preallocation=_bool(env.get("PREALLOCATION")),
            architecture=env.get("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE") or None,
            data_dir=Path(env.get("IMPORTER_DATA_DIR", "/data")),
            block_device=Path(env.get("IMPORTER_BLOCK_DEVICE", "/dev/cdi-block-volume")),
            scratch_dir=Path(scratch) if scratch and Path(scratch).is_dir() else None,
            termination_message_path=cls.termination_path_from_env(env),
            metrics_port=int(env.get("IMPORTER_METRICS_PORT", "8443")),
            retry_attempts=int(env.get("IMPORTER_RETRY_ATTEMPTS", "8")),
            speed_limit=int(env.get("IMPORTER_SPEED_LIMIT", "1024")),
            speed_time=float(env.get("IMPORTER_SPEED_TIME", "60")),
            retry_time=float(env.get("IMPORTER_RETRY_TIME", "300")),
        )

    @staticmethod
    def termination_path_from_env(env: Mapping[str, str] | None = None) -> Path:
        """Where to report even when the rest of the settings cannot be parsed."""
        env = os.environ if env is None else env
        return Path(env.get("IMPORTER_TERMINATION_MESSAGE_PATH", "/dev/termination-log"))

    @property
    def target_path(self) -> Path:
        """The block device when it exists (CDI checks with stat), else ``disk.img``."""
        return self.block_device if self.block_device.exists() else self.data_dir / "disk.img"


def _dir(value: str | None) -> Path | None:
    return Path(value) if value and Path(value).is_dir() else None


def _numbered(env: Mapping[str, str], prefix: str) -> list[str]:
    keys = [k for k in env if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return [env[k] for k in sorted(keys, key=lambda k: int(k[len(prefix):]))]


def _secret_headers(directory: Path) -> list[str]:
    """Secret headers are mounted as files (one header per file, ``Name: value``)."""
    if not directory.is_dir():
        return []
    headers: list[str] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            headers.extend(line for line in path.read_text().splitlines() if line.strip())
    return headers
