"""How the proxy finds the upload server of a volume: one small seam.

In a cluster the answer is the Service ``cdi-upload-<pvc>.<namespace>.svc:8443`` once the PVC
says its upload pod is ready (``cdi.kubevirt.io/storage.pod.ready=true``, not yet Succeeded;
CDI waits up to 10 s for that), with the volume's content type from
``cdi.kubevirt.io/storage.contentType``: :class:`~uploadproxy.kuberesolver.KubeResolver`.
:class:`StaticResolver` serves tests, benchmarks and single-host setups.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Protocol


@dataclass(frozen=True)
class Ready:
    url: str
    """Base URL of the upload server, e.g. ``https://cdi-upload-disk.ns.svc:8443``."""
    content_type: str = "kubevirt"
    """``kubevirt`` (a disk image) or ``archive`` (a tar unpacked into the volume)."""
    server_name: str | None = None
    """The name the server's certificate must carry when ``url`` names an address instead
    (the proxy dialling a pod IP outside the cluster's DNS)."""


@dataclass(frozen=True)
class NotReady:
    reason: str
    """Why no upload can go there now; the proxy answers 503 with it."""


class Resolver(Protocol):
    async def resolve(self, namespace: str, pvc: str) -> Ready | NotReady:
        """Where uploads to PVC ``namespace/pvc`` go, or why they cannot go anywhere yet."""
        ...


def service_name(pvc: str) -> str:
    """``cdi-upload-<pvc>``, shortened with a hash suffix to stay a DNS label (the controller
    names the upload pod and its Service with this too)."""
    name = f"cdi-upload-{pvc}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-.')}-{digest}"


def service_host(namespace: str, pvc: str) -> str:
    return f"{service_name(pvc)}.{namespace}.svc"


def service_url(namespace: str, pvc: str, port: int = 8443) -> str:
    """CDI's upload Service for a PVC."""
    return f"https://{service_host(namespace, pvc)}:{port}"


class StaticResolver:
    """A fixed table ``(namespace, pvc) -> Ready | NotReady``."""

    def __init__(self, table: Mapping[tuple[str, str], Ready | NotReady] | None = None) -> None:
        self.table: dict[tuple[str, str], Ready | NotReady] = dict(table or {})

    async def resolve(self, namespace: str, pvc: str) -> Ready | NotReady:
        found = self.table.get((namespace, pvc))
        if found is None:
            return NotReady(f"rejecting Upload Request for PVC {pvc} that doesn't exist")
        return found

    @classmethod
    def parse(cls, text: str) -> "StaticResolver":
        """``ns/pvc=https://host:port[#archive]`` entries separated by commas or spaces (the
        proxy's ``UPLOAD_SERVERS`` variable)."""
        table: dict[tuple[str, str], Ready | NotReady] = {}
        for entry in text.replace(",", " ").split():
            key, _, url = entry.partition("=")
            namespace, _, pvc = key.partition("/")
            if not (namespace and pvc and url):
                raise ValueError(f"bad upload server entry {entry!r}: want ns/pvc=https://host:port")
            url, _, content_type = url.partition("#")
            table[(namespace, pvc)] = Ready(url.rstrip("/"), content_type or "kubevirt")
        return cls(table)
