"""The importer pod for a PVC, built as CDI's import controller builds it.

Parameters travel as CDI's environment variables (``IMPORTER_*``, ``OWNER_UID``,
``FILESYSTEM_OVERHEAD``, ...), credentials as ``secretKeyRef`` so the controller never reads a
Secret, CA bundles and secret headers as volumes; the volume is mounted at ``/data`` or attached
at ``/dev/cdi-block-volume``; ``restartPolicy: OnFailure`` so kubelet retries temporary errors
with back-off, and the termination message carries the result.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from . import annotations as ann
from .config import ControllerConfig

DATA_VOLUME = "cdi-data-vol"
SCRATCH_VOLUME = "cdi-scratch-vol"
BLOCK_PATH = "/dev/cdi-block-volume"
DATA_PATH = "/data"
SCRATCH_PATH = "/scratch"
CERT_PATH = "/certs"
SECRET_HEADERS_PATH = "/extraheaders"
METRICS_PORT = 8443

SCRATCH_SUFFIX = "-scratch"
WORKER_UID = 107
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
    "runAsUser": WORKER_UID, "seccompProfile": {"type": "RuntimeDefault"}}
"""Worker containers (importer, upload server) run under the restricted Pod Security profile."""


@dataclass(frozen=True)
class ImporterSettings:
    """How this controller runs importer pods (from its Deployment's environment)."""

    image: str = "quay.io/cdi-py/cdi-py-importer:latest"
    pull_policy: str = "IfNotPresent"
    extra_env: dict[str, str] = field(default_factory=dict)
    """Added to every importer pod: tuning knobs such as ``IMPORTER_RETRY_ATTEMPTS``."""


def name_for(prefix: str, pvc_name: str) -> str:
    """``importer-<pvc>``, shortened with a hash suffix to stay a valid pod name."""
    name = f"{prefix}-{pvc_name}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-.')}-{digest}"


def scratch_name(pvc_name: str) -> str:
    return name_for(pvc_name, "scratch") if len(pvc_name) > 55 else f"{pvc_name}{SCRATCH_SUFFIX}"


def needs_scratch(annotations: dict[str, str]) -> bool:
    """Scratch space only once an importer asked for it (``requiresScratch``), as CDI does: our
    readers stream every format from every source, compressed or not, and only a layout none of
    them takes (a VMDK whose grains are out of disk order, a VHD whose size field disagrees with
    its geometry, compressed or without ranges) needs a seekable copy. Guessing from the endpoint's name would give most compressed images
    a scratch PVC they never use."""
    return annotations.get(ann.REQUIRES_SCRATCH) == "true"


def is_block(pvc: dict[str, Any]) -> bool:
    return (pvc.get("spec") or {}).get("volumeMode") == "Block"


def _env(pvc: dict[str, Any], owner_uid: str, config: ControllerConfig, settings: ImporterSettings) -> list[dict[str, Any]]:
    annotations = pvc["metadata"].get("annotations") or {}
    storage_class = (pvc.get("spec") or {}).get("storageClassName")
    size = ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "")
    source = annotations.get(ann.IMPORT_SOURCE, "http")
    env: list[dict[str, Any]] = [
        {"name": "IMPORTER_SOURCE", "value": source},
        {"name": "IMPORTER_ENDPOINT", "value": annotations.get(ann.IMPORT_ENDPOINT, "")},
        {"name": "IMPORTER_CONTENTTYPE", "value": annotations.get(ann.CONTENT_TYPE, "kubevirt")},
        {"name": "IMPORTER_IMAGE_SIZE", "value": str(size)},
        {"name": "OWNER_UID", "value": owner_uid},
        {"name": "FILESYSTEM_OVERHEAD", "value": "0" if is_block(pvc) else config.overhead_for(storage_class)},
        {"name": "INSECURE_TLS", "value": str(_insecure(annotations, config)).lower()},
        {"name": "IMPORTER_CHECKSUM", "value": annotations.get(ann.IMPORT_CHECKSUM, "")},
        {"name": "PREALLOCATION", "value": annotations.get(ann.PREALLOCATION_REQUESTED, "false")},
        {"name": "CACHE_MODE", "value": "TRYNONE" if annotations.get(ann.REQUIRES_DIRECT_IO) == "true" else ""},
    ]
    if annotations.get(ann.IMPORT_REGISTRY_ARCHITECTURE):
        env.append({"name": "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE",
                    "value": annotations[ann.IMPORT_REGISTRY_ARCHITECTURE]})
    secret = annotations.get(ann.IMPORT_SECRET)
    if secret:
        for var, key in (("IMPORTER_ACCESS_KEY_ID", "accessKeyId"), ("IMPORTER_SECRET_KEY", "secretKey")):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if annotations.get(ann.IMPORT_CERT_CONFIG_MAP):
        env.append({"name": "IMPORTER_CERT_DIR", "value": CERT_PATH})
    for index, header in enumerate(_indexed(annotations, ann.IMPORT_EXTRA_HEADERS)):
        env.append({"name": f"IMPORTER_EXTRA_HEADER_{index}", "value": header})
    env += _proxy_env(config)
    env += [{"name": k, "value": v} for k, v in sorted(settings.extra_env.items())]
    return env


def _insecure(annotations: dict[str, str], config: ControllerConfig) -> bool:
    if annotations.get(ann.IMPORT_INSECURE_SKIP_VERIFY) == "true":
        return True
    if annotations.get(ann.IMPORT_SOURCE) != "registry":
        return False
    endpoint = annotations.get(ann.IMPORT_ENDPOINT, "")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    return host in config.insecure_registries


def _indexed(annotations: dict[str, str], prefix: str) -> list[str]:
    found = [(int(k.rsplit(".", 1)[1]), v) for k, v in annotations.items()
             if k.startswith(prefix + ".") and k.rsplit(".", 1)[1].isdigit()]
    return [v for _, v in sorted(found)]


def _proxy_env(config: ControllerConfig) -> list[dict[str, Any]]:
    proxy = config.import_proxy or {}
    pairs = (("http_proxy", proxy.get("HTTPProxy")), ("https_proxy", proxy.get("HTTPSProxy")),
             ("no_proxy", proxy.get("noProxy")))
    return [{"name": name, "value": value} for name, value in pairs if value]


def _volumes(pvc: dict[str, Any], scratch: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pod's volumes, and the container's mounts/devices for them."""
    annotations = pvc["metadata"].get("annotations") or {}
    name = pvc["metadata"]["name"]
    volumes: list[dict[str, Any]] = [{"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": name}}]
    mounts: list[dict[str, Any]] = []
    container: dict[str, Any] = {}
    if is_block(pvc):
        container["volumeDevices"] = [{"name": DATA_VOLUME, "devicePath": BLOCK_PATH}]
    else:
        mounts.append({"name": DATA_VOLUME, "mountPath": DATA_PATH})
    if scratch:
        volumes.append({"name": SCRATCH_VOLUME, "persistentVolumeClaim": {"claimName": scratch}})
        mounts.append({"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH})
    if annotations.get(ann.IMPORT_CERT_CONFIG_MAP):
        volumes.append({"name": "cdi-cert-vol", "configMap": {"name": annotations[ann.IMPORT_CERT_CONFIG_MAP]}})
        mounts.append({"name": "cdi-cert-vol", "mountPath": CERT_PATH})
    for index, secret in enumerate(_indexed(annotations, ann.IMPORT_SECRET_EXTRA_HEADERS)):
        volumes.append({"name": f"cdi-extra-headers-vol-{index}", "secret": {"secretName": secret}})
        mounts.append({"name": f"cdi-extra-headers-vol-{index}", "mountPath": f"{SECRET_HEADERS_PATH}/secret-{index}"})
    if mounts:
        container["volumeMounts"] = mounts
    return volumes, container


def passthrough_annotations(annotations: dict[str, str]) -> dict[str, str]:
    """What a worker pod inherits from its PVC (network, mesh sidecars), over CDI's defaults."""
    out = dict(ann.POD_PASSTHROUGH_DEFAULTS)
    out.update({k: v for k, v in annotations.items() if k in ann.POD_PASSTHROUGH})
    return out


def worker_pod_spec(annotations: dict[str, str], config: ControllerConfig, container: dict[str, Any],
                    volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod spec every worker (importer, upload server) shares: retried on failure, no service
    links, the volume group, and the PVC's priority class and service account."""
    spec: dict[str, Any] = {
        "restartPolicy": "OnFailure", "enableServiceLinks": False, "containers": [container],
        "volumes": volumes, "securityContext": {"fsGroup": WORKER_UID},
    }
    if annotations.get(ann.POD_PRIORITY_CLASS):
        spec["priorityClassName"] = annotations[ann.POD_PRIORITY_CLASS]
    if annotations.get(ann.POD_SERVICE_ACCOUNT):
        spec["serviceAccountName"] = annotations[ann.POD_SERVICE_ACCOUNT]
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = config.image_pull_secrets
    return spec


def render(pvc: dict[str, Any], *, owner_uid: str, config: ControllerConfig, settings: ImporterSettings,
           scratch: str | None) -> dict[str, Any]:
    """The importer pod for ``pvc``; ``scratch`` names a scratch PVC to mount at /scratch."""
    meta = pvc["metadata"]
    annotations = meta.get("annotations") or {}
    volumes, mounts = _volumes(pvc, scratch)
    container: dict[str, Any] = {
        "name": "importer", "image": settings.image, "imagePullPolicy": settings.pull_policy,
        "env": _env(pvc, owner_uid, config, settings),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": config.pod_resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        **mounts,
    }
    spec = worker_pod_spec(annotations, config, container, volumes)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name_for("importer", meta["name"]), "namespace": meta["namespace"],
            "labels": {ann.APP_LABEL: ann.APP, ann.COMPONENT_LABEL: ann.IMPORTER_COMPONENT, ann.PROMETHEUS_LABEL: "true"},
            "annotations": passthrough_annotations(annotations),
            "ownerReferences": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }


def render_scratch_claim(pvc: dict[str, Any], pod: dict[str, Any], config: ControllerConfig) -> dict[str, Any]:
    """A Filesystem scratch PVC as big as the target's request, owned by the pod so it goes with it."""
    spec = pvc.get("spec") or {}
    storage_class = config.scratch_storage_class or spec.get("storageClassName")
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                                  "resources": {"requests": dict((spec.get("resources") or {}).get("requests") or {})}}
    if storage_class:
        claim_spec["storageClassName"] = storage_class
    meta = pod["metadata"]
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": scratch_name(pvc["metadata"]["name"]), "namespace": meta["namespace"],
                     "labels": {ann.APP_LABEL: ann.APP},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": claim_spec,
    }
