"""The upload server's settings, read once from the environment CDI gives its upload pod.

CDI's variables: ``TLS_KEY_FILE``, ``TLS_CERT_FILE``, ``CLIENT_CERT_FILE`` (the CA that signs
the proxy's client certificate), ``CLIENT_NAME`` (the CN that certificate must carry),
``FILESYSTEM_OVERHEAD``, ``UPLOAD_IMAGE_SIZE``, ``PREALLOCATION``, ``DESTINATION``
(``/dev/cdi-block-volume`` for block volumes, else ``/data/disk.img``), ``DEADLINE`` (RFC 3339),
``TLS_MIN_VERSION``, ``TLS_CIPHERS``. Ours, with defaults that match a real pod:
``UPLOAD_SERVER_ADDRESS``/``UPLOAD_SERVER_PORT`` (0.0.0.0:8443), ``SCRATCH_DIR`` (``/scratch``
when mounted), ``TERMINATION_MESSAGE_PATH`` (``/dev/termination-log``) and
``UPLOAD_RESUME_TIMEOUT`` (seconds a paused resumable upload waits for its client) and
``OWNER_UID`` (the DataVolume's UID, the label of the progress metric the controller reads),
``UPLOAD_SERVER_NO_CLIENT_AUTH`` (``true`` to run without client certificates: without it, a
server with no ``CLIENT_CERT_FILE`` or no TLS refuses to start instead of accepting anyone).
Only :meth:`ServerSettings.from_env` reads ``os.environ``.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from importer.quantity import parse_quantity
from importer.target import TargetSpec

BLOCK_DESTINATION = Path("/dev/cdi-block-volume")
FILE_DESTINATION = Path("/data/disk.img")
PROXY_CLIENT_NAME = "client.upload-server.cdi.kubevirt.io"


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class ServerSettings:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    """CA bundle for client certificates. Without it (or without TLS) the server refuses to
    start unless :attr:`no_client_auth` says, explicitly, that anyone may upload."""
    no_client_auth: bool = False
    """Run without client authentication (``UPLOAD_SERVER_NO_CLIENT_AUTH``): never in a pod."""
    client_name: str = PROXY_CLIENT_NAME
    destination: Path = FILE_DESTINATION
    image_size: int | None = None
    """The PVC's requested size in bytes (``UPLOAD_IMAGE_SIZE``)."""
    filesystem_overhead: float = 0.0
    preallocation: bool = False
    deadline: datetime.datetime | None = None
    """When an idle server gives up and exits (``"Deadline Passed"``) for a fresh pod."""
    tls_min_version: str | None = None
    tls_ciphers: str | None = None
    address: str = "0.0.0.0"
    port: int = 8443
    scratch_dir: Path | None = None
    termination_message_path: Path = Path("/dev/termination-log")
    resume_timeout: float = 300.0
    channel_limit: int = 16 << 20
    """Bytes that may wait between the network and the disk."""
    owner_uid: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerSettings":
        env = os.environ if env is None else env
        size = env.get("UPLOAD_IMAGE_SIZE", "").strip()
        deadline = env.get("DEADLINE", "").strip()
        scratch = Path(env.get("SCRATCH_DIR", "/scratch"))
        return cls(
            tls_cert=_path(env.get("TLS_CERT_FILE")), tls_key=_path(env.get("TLS_KEY_FILE")),
            client_ca=_path(env.get("CLIENT_CERT_FILE")),
            client_name=env.get("CLIENT_NAME") or PROXY_CLIENT_NAME,
            destination=Path(env.get("DESTINATION") or FILE_DESTINATION),
            image_size=parse_quantity(size) if size else None,
            filesystem_overhead=float(env.get("FILESYSTEM_OVERHEAD", "0") or 0),
            preallocation=_bool(env.get("PREALLOCATION")),
            deadline=datetime.datetime.fromisoformat(deadline) if deadline else None,
            tls_min_version=env.get("TLS_MIN_VERSION") or None,
            tls_ciphers=env.get("TLS_CIPHERS") or None,
            address=env.get("UPLOAD_SERVER_ADDRESS", "0.0.0.0"),
            port=int(env.get("UPLOAD_SERVER_PORT", "8443")),
            scratch_dir=scratch if scratch.is_dir() else None,
            termination_message_path=cls.termination_path_from_env(env),
            resume_timeout=float(env.get("UPLOAD_RESUME_TIMEOUT", "300")),
            owner_uid=env.get("OWNER_UID", ""),
            no_client_auth=_bool(env.get("UPLOAD_SERVER_NO_CLIENT_AUTH")),
        ).checked()

    def checked(self) -> "ServerSettings":
        """These settings, or ValueError when they would let any client upload without being
        told to: a server must not fail open because a certificate path went missing."""
        authenticates = self.client_ca is not None and self.tls_cert is not None and self.tls_key is not None
        if not authenticates and not self.no_client_auth:
            missing = "CLIENT_CERT_FILE" if self.client_ca is None else "TLS_CERT_FILE/TLS_KEY_FILE"
            raise ValueError(f"{missing} is not set, so clients could not be authenticated; refusing to "
                             "start (set UPLOAD_SERVER_NO_CLIENT_AUTH=true to accept any client)")
        return self

    @staticmethod
    def termination_path_from_env(env: Mapping[str, str] | None = None) -> Path:
        """Where to report even when the rest of the settings cannot be parsed."""
        env = os.environ if env is None else env
        return Path(env.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log"))

    @property
    def is_block(self) -> bool:
        try:
            return stat.S_ISBLK(self.destination.stat().st_mode)
        except OSError:
            return False

    def target(self, archive: bool = False) -> TargetSpec:
        """Where the image goes: the block device as it is, or a file sized from the PVC
        request less the filesystem overhead and capped at the free space (as the importer
        pod does). An archive is unpacked into the volume directory itself."""
        if self.is_block:
            return TargetSpec(path=self.destination, preallocate=self.preallocation)
        path = self.destination.parent if archive else self.destination
        return TargetSpec(path=path, size=self.image_size, filesystem_overhead=self.filesystem_overhead,
                          preallocate=self.preallocation, check_free_space=True)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@dataclass
class ProxySettings:
    """The upload proxy's settings: ``APISERVER_PUBLIC_KEY`` (PEM, CDI's name) or
    ``APISERVER_PUBLIC_KEY_FILE``; ``TLS_CERT_FILE``/``TLS_KEY_FILE`` (its own HTTPS);
    ``CLIENT_CERT_FILE``/``CLIENT_KEY_FILE`` (the certificate it shows upload servers);
    ``SERVER_CA_FILE`` (the CA that signs upload servers); ``UPLOADPROXY_ADDRESS``/
    ``UPLOADPROXY_PORT`` (0.0.0.0:8443); ``UPLOAD_SERVERS`` (a static table for
    :class:`~uploadproxy.resolver.StaticResolver`, ``ns/pvc=https://host:port[#archive]``);
    without it the cluster is asked (:class:`~uploadproxy.kuberesolver.KubeResolver`) through
    ``KUBECONFIG`` or the in-cluster config, dialling Services (``UPLOADPROXY_UPSTREAM=dns``) or
    their endpoints (``endpoints``, for a proxy outside the cluster network).
    ``UPLOADPROXY_DATA_PATH``: ``python`` (the default: this process relays the bodies) or
    ``nginx`` (nginx relays them and asks this process about each request, :mod:`uploadproxy.nginx`),
    with ``UPLOADPROXY_NGINX`` (the binary, ``nginx``) and ``UPLOADPROXY_NGINX_DIR`` (a writable
    directory for its config, pid and temp files; a new one under ``$TMPDIR`` if unset)."""

    public_key_pem: bytes
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_ca: Path | None = None
    address: str = "0.0.0.0"
    port: int = 8443
    upload_servers: str = ""
    kubeconfig: Path | None = None
    upstream: str = "dns"
    data_path: str = "python"
    nginx: str = "nginx"
    nginx_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ProxySettings":
        env = os.environ if env is None else env
        key = env.get("APISERVER_PUBLIC_KEY", "").encode()
        if not key and env.get("APISERVER_PUBLIC_KEY_FILE"):
            key = Path(env["APISERVER_PUBLIC_KEY_FILE"]).read_bytes()
        if not key:
            raise ValueError("APISERVER_PUBLIC_KEY or APISERVER_PUBLIC_KEY_FILE is required to verify tokens")
        return cls(
            public_key_pem=key,
            tls_cert=_path(env.get("TLS_CERT_FILE")), tls_key=_path(env.get("TLS_KEY_FILE")),
            client_cert=_path(env.get("CLIENT_CERT_FILE")), client_key=_path(env.get("CLIENT_KEY_FILE")),
            server_ca=_path(env.get("SERVER_CA_FILE")),
            address=env.get("UPLOADPROXY_ADDRESS", "0.0.0.0"),
            port=int(env.get("UPLOADPROXY_PORT", "8443")),
            upload_servers=env.get("UPLOAD_SERVERS", ""),
            kubeconfig=_path(env.get("KUBECONFIG")),
            upstream=env.get("UPLOADPROXY_UPSTREAM", "dns"),
            data_path=_choice(env.get("UPLOADPROXY_DATA_PATH") or "python", "UPLOADPROXY_DATA_PATH", DATA_PATHS),
            nginx=env.get("UPLOADPROXY_NGINX") or "nginx",
            nginx_dir=_path(env.get("UPLOADPROXY_NGINX_DIR")),
        )


DATA_PATHS = ("python", "nginx")


def _choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value
