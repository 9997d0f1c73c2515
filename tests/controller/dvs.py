"""Small helpers the controller tests share: make DataVolumes, read them, read a volume's bytes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeenv.node import csi
from tests.servers.images import sha256_file

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"


def create_dv(custom: client.CustomObjectsApi, ns: str, name: str, source: dict[str, Any], size: str = "64Mi",
              annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"source": source, **spec},
    }
    if "pvc" not in spec and "storage" not in spec:
        body["spec"]["storage"] = {"resources": {"requests": {"storage": size}}}
    result: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    return result


def get_dv(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        return result
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def phase(custom: client.CustomObjectsApi, ns: str, name: str) -> str:
    dv = get_dv(custom, ns, name) or {}
    return str((dv.get("status") or {}).get("phase", ""))


def condition(dv: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (dv.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


_CSI_STATE: list[Path] = []
"""Where the session's CSI driver keeps volumes (set once by the controller tests' ``csi_state``
fixture: the node's directory is made per session)."""


def use_csi_state(directory: Path) -> None:
    _CSI_STATE[:] = [directory]


def volume_path(core: client.CoreV1Api, ns: str, claim: str) -> Path:
    """The host file behind a bound claim: ``disk.img`` in a Filesystem volume, or the block image."""
    pvc = core.read_namespaced_persistent_volume_claim(claim, ns)
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    path = csi.volume_path(_CSI_STATE[0], pv.spec.csi.volume_handle)
    return path if pvc.spec.volume_mode == "Block" else path / "disk.img"


def sha256_prefix(path: Path, size: int) -> str:
    return sha256_file(path, size)


def events_for(core: client.CoreV1Api, ns: str, name: str) -> list[tuple[str, str, str]]:
    items = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message) for e in items]


def bind(custom: client.CustomObjectsApi, ns: str, user: str, cluster_role: str) -> None:
    client.RbacAuthorizationV1Api(custom.api_client).create_namespaced_role_binding(ns, {
        "metadata": {"name": f"{cluster_role}-{uuid.uuid4().hex[:6]}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def as_user(custom: client.CustomObjectsApi, user: str) -> client.CustomObjectsApi:
    impersonating = client.ApiClient(custom.api_client.configuration)
    impersonating.set_default_header("Impersonate-User", user)
    return client.CustomObjectsApi(impersonating)
