"""The upload server pod of a PVC, its Service and its TLS Secret, built as CDI's upload controller
builds them.

* Pod ``cdi-upload-<pvc>`` runs ``python -m uploadproxy.server`` on :8443 with the volume at
  ``/data`` (or ``/dev/cdi-block-volume``), CDI's environment (``DESTINATION``,
  ``UPLOAD_IMAGE_SIZE``, ``FILESYSTEM_OVERHEAD``, ``PREALLOCATION``, ``CLIENT_NAME``, the TLS
  files) and a readiness probe on ``/healthz``; the PVC's ``pod.ready`` annotation follows that
  probe, and it is what virtctl and the proxy wait for.
* Service ``cdi-upload-<pvc>`` (port 8443) selects exactly that pod: the proxy dials
  ``https://cdi-upload-<pvc>.<ns>.svc:8443``.
* Scratch space is an ``emptyDir`` at ``/scratch``, as large as the volume at most: most uploads
  stream straight to the volume and never touch it; only formats qemu-img must convert from a
  seekable file (VMDK, VHD(X), VDI) spill there. CDI instead makes a scratch PVC for every upload.
* Secret ``cdi-upload-tls-<pvc uid>`` holds the pod's serving certificate (for the Service's DNS
  names, signed by the upload-server CA the proxy trusts) and the CA of the proxy's client
  certificate. It is owned by the PVC; the controller only ever creates it (it may not read
  Secrets), and a pod restarted after a crash mounts the same one.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any

from uploadproxy.resolver import service_name

from . import annotations as ann
from .certs import CertificatePem, Signer
from .config import ControllerConfig
from .importer_pod import (BLOCK_PATH, CONTAINER_SECURITY, DATA_PATH, DATA_VOLUME, is_block, passthrough_annotations,
                           worker_pod_spec)

PORT = 8443
TLS_PATH = "/etc/cdi-upload"
TLS_VOLUME = "cdi-upload-tls"
SCRATCH_VOLUME = "cdi-scratch-vol"
SCRATCH_PATH = "/scratch"
PROXY_CLIENT_NAME = "client.upload-server.cdi.kubevirt.io"
"""The CN of the proxy's client certificate; CDI's name, which its upload servers insist on."""
COMPONENT = ann.UPLOAD_SERVER_COMPONENT
SERVICE_LABEL = "cdi.kubevirt.io/uploadServer"
"""Set on the pod to the Service's name; the Service selects it."""


@dataclass(frozen=True)
class UploadSettings:
    """How this controller runs upload servers (from its Deployment's environment)."""

    image: str = "quay.io/cdi-py/cdi-py-uploadserver:latest"
    pull_policy: str = "IfNotPresent"
    server_ca: CertificatePem | None = None
    """The upload-server signer (cert and key); without it upload volumes wait, saying why."""
    client_ca_pem: bytes = b""
    """The CA of the proxy's client certificate, which upload servers accept."""
    proxy_url: str = ""
    """Where users reach the upload proxy; CDIConfig ``status.uploadProxyURL`` unless overridden."""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        return self.server_ca is not None and bool(self.client_ca_pem)


def pod_name(pvc_name: str) -> str:
    """The pod is named like its Service, which the proxy derives from the PVC name alone."""
    return service_name(pvc_name)


def secret_name(pvc: dict[str, Any]) -> str:
    return f"cdi-upload-tls-{pvc['metadata']['uid']}"


def dns_names(pvc: dict[str, Any]) -> tuple[str, ...]:
    service, namespace = service_name(pvc["metadata"]["name"]), pvc["metadata"]["namespace"]
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local")


def _owned_by_claim(pvc: dict[str, Any], name: str) -> dict[str, Any]:
    meta = pvc["metadata"]
    return {"name": name, "namespace": meta["namespace"],
            "labels": {ann.APP_LABEL: ann.APP, ann.COMPONENT_LABEL: COMPONENT},
            "ownerReferences": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]}


@dataclass(frozen=True)
class Client:
    """Who may send bytes to an upload server: the CN of its certificate and the CA that signed it."""

    name: str
    ca_pem: bytes


def proxy_client(settings: UploadSettings) -> Client:
    """Uploads come through the upload proxy, with CDI's client name."""
    return Client(PROXY_CLIENT_NAME, settings.client_ca_pem)


def render_secret(pvc: dict[str, Any], settings: UploadSettings, client: Client | None = None) -> dict[str, Any]:
    """A fresh serving certificate for the pod, with the client CA beside it."""
    assert settings.server_ca is not None
    client = client or proxy_client(settings)
    served = Signer(settings.server_ca).issue(service_name(pvc["metadata"]["name"]), dns_names=dns_names(pvc))
    data = {"tls.crt": served.cert, "tls.key": served.key, "client-ca.crt": client.ca_pem}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _owned_by_claim(pvc, secret_name(pvc)),
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def render_service(pvc: dict[str, Any]) -> dict[str, Any]:
    name = service_name(pvc["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "Service", "metadata": _owned_by_claim(pvc, name),
            "spec": {"selector": {SERVICE_LABEL: name},
                     "ports": [{"name": "uploadserver", "protocol": "TCP", "port": PORT, "targetPort": PORT}]}}


def _env(pvc: dict[str, Any], config: ControllerConfig, settings: UploadSettings,
         owner_uid: str, client_name: str) -> list[dict[str, Any]]:
    annotations = pvc["metadata"].get("annotations") or {}
    spec = pvc.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "")
    block = is_block(pvc)
    values = {
        "TLS_CERT_FILE": f"{TLS_PATH}/tls.crt", "TLS_KEY_FILE": f"{TLS_PATH}/tls.key",
        "CLIENT_CERT_FILE": f"{TLS_PATH}/client-ca.crt", "CLIENT_NAME": client_name,
        "DESTINATION": BLOCK_PATH if block else f"{DATA_PATH}/disk.img",
        "UPLOAD_IMAGE_SIZE": str(size),
        "FILESYSTEM_OVERHEAD": "0" if block else config.overhead_for(spec.get("storageClassName")),
        "PREALLOCATION": annotations.get(ann.PREALLOCATION_REQUESTED, str(config.preallocation).lower()),
        "UPLOAD_SERVER_PORT": str(PORT),
        "SCRATCH_DIR": SCRATCH_PATH,
        "OWNER_UID": owner_uid,
        **settings.extra_env,
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def _scratch_limit(pvc: dict[str, Any]) -> dict[str, Any]:
    size = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    return {"sizeLimit": size} if size else {}


def render_pod(pvc: dict[str, Any], config: ControllerConfig, settings: UploadSettings,
               owner_uid: str = "", client_name: str = PROXY_CLIENT_NAME) -> dict[str, Any]:
    """``owner_uid`` labels the progress metric (the DataVolume's UID, else the PVC's);
    ``client_name`` is the one certificate CN the server accepts (the proxy's, or a cloner's)."""
    meta = pvc["metadata"]
    annotations = meta.get("annotations") or {}
    name = pod_name(meta["name"])
    container: dict[str, Any] = {
        "name": "cdi-upload-server", "image": settings.image, "imagePullPolicy": settings.pull_policy,
        "env": _env(pvc, config, settings, owner_uid or pvc["metadata"]["uid"], client_name),
        "ports": [{"name": "uploadserver", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT, "scheme": "HTTPS"},
                           "initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 1},
        "resources": config.pod_resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": TLS_VOLUME, "mountPath": TLS_PATH, "readOnly": True},
                         {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}],
    }
    if is_block(pvc):
        container["volumeDevices"] = [{"name": DATA_VOLUME, "devicePath": BLOCK_PATH}]
    else:
        container["volumeMounts"].append({"name": DATA_VOLUME, "mountPath": DATA_PATH})
    body_meta = _owned_by_claim(pvc, name)
    body_meta["labels"][SERVICE_LABEL] = name
    body_meta["annotations"] = passthrough_annotations(annotations)
    volumes = [{"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": meta["name"]}},
               {"name": TLS_VOLUME, "secret": {"secretName": secret_name(pvc), "defaultMode": 0o440}},
               {"name": SCRATCH_VOLUME, "emptyDir": _scratch_limit(pvc)}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": body_meta,
            "spec": worker_pod_spec(annotations, config, container, volumes)}
