"""The proxy's resolver in a cluster: the PVC's annotations say whether its upload server is ready.

As CDI's proxy does, for up to ``wait`` seconds (10) it reads the PVC until
``cdi.kubevirt.io/storage.pod.ready`` is ``true``; a PVC that is missing, not an upload target
or already ``Succeeded`` is refused at once. The content type comes from
``cdi.kubevirt.io/storage.contentType``.

Where to dial: inside the cluster, the Service ``cdi-upload-<pvc>.<ns>.svc:8443`` (``dns``, the
default). A proxy running outside the cluster network (our test clusters have no cluster DNS or
Service routing) uses ``endpoints``: a ready address from the Service's EndpointSlices, with the
Service's DNS name still checked against the server's certificate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .resolver import NotReady, Ready, service_host, service_name, service_url

log = logging.getLogger("uploadproxy.resolver")

STORAGE = "cdi.kubevirt.io/storage"
UPLOAD_TARGET = f"{STORAGE}.upload.target"
POD_READY = f"{STORAGE}.pod.ready"
POD_PHASE = f"{STORAGE}.pod.phase"
CONTENT_TYPE = f"{STORAGE}.contentType"
PORT = 8443
MODES = ("dns", "endpoints")


class Refusal(NotReady):
    """Not ready, and waiting will not change it."""


class KubeResolver:
    def __init__(self, api: client.ApiClient, *, mode: str = "dns", wait: float = 10.0, poll: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"resolver mode must be one of {MODES}, not {mode!r}")
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.mode = mode
        self.wait = wait
        self.poll = poll

    async def resolve(self, namespace: str, pvc: str) -> Ready | NotReady:
        deadline = time.monotonic() + self.wait
        while True:
            found = await asyncio.to_thread(self._look, namespace, pvc)
            if isinstance(found, (Ready, Refusal)) or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(self.poll)

    def _look(self, namespace: str, pvc: str) -> Ready | NotReady:
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(pvc, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return Refusal(f"rejecting Upload Request for PVC {pvc} that doesn't exist")
            return NotReady(f"cannot read PVC {pvc}: {error.reason}")
        annotations: dict[str, str] = _json(claim).get("metadata", {}).get("annotations") or {}
        if UPLOAD_TARGET not in annotations:
            return Refusal(f"rejecting Upload Request for PVC {pvc} that isn't marked as an upload target "
                           f"({UPLOAD_TARGET})")
        if annotations.get(POD_PHASE) == "Succeeded":
            return Refusal(f"rejecting Upload Request for PVC {pvc} that already finished uploading")
        if annotations.get(POD_READY) != "true":
            return NotReady(f"Upload Server for PVC {pvc} is not ready; try again shortly")
        content_type = annotations.get(CONTENT_TYPE) or "kubevirt"
        if self.mode == "dns":
            return Ready(service_url(namespace, pvc, PORT), content_type)
        address = self._ready_address(namespace, service_name(pvc))
        if address is None:
            return NotReady(f"Upload Server for PVC {pvc} has no ready endpoint yet; try again shortly")
        host = f"[{address}]" if ":" in address else address
        return Ready(f"https://{host}:{PORT}", content_type, server_name=service_host(namespace, pvc))

    def _ready_address(self, namespace: str, service: str) -> str | None:
        slices = self.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}", _preload_content=False)
        for item in _json(slices).get("items") or []:
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is not False and endpoint.get("addresses"):
                    return str(endpoint["addresses"][0])
        return None


def _json(response: Any) -> dict[str, Any]:
    data = json.loads(response.data) if response.data else {}
    return data if isinstance(data, dict) else {}
