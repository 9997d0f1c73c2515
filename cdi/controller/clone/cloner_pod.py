"""The source side of a host-assisted clone: the cloner pod and its client certificate.

* Pod ``<target PVC UID>-source-pod`` (CDI's name) in the *source* namespace runs
  ``python -m cloner`` from the upload-server image, with the source PVC mounted read-only at
  ``/var/run/cdi/clone/source`` (Filesystem) or attached at ``/dev/cdi-block-volume`` (Block),
  and streams it to the target's upload server (``UPLOAD_URL``) over mutual TLS.
* Secret ``cdi-clone-tls-<target PVC UID>`` beside it: a client certificate whose CN is
  :func:`client_name`, signed by the upload-server CA, and that CA to verify the server with.
  The target's upload server accepts exactly that CN from that CA (``CLIENT_NAME``).

Neither can be owned by the target PVC (owner references do not cross namespaces): the pod
carries the target in an annotation and the clone reconciler deletes it when the clone ends or
the target goes; the Secret is owned by the pod and goes with it.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from uploadproxy.paths import CLONE
from uploadproxy.resolver import service_name

from .. import annotations as ann
from ..certs import Signer
from ..config import ControllerConfig
from ..importer_pod import BLOCK_PATH, CONTAINER_SECURITY, METRICS_PORT, is_block, passthrough_annotations, worker_pod_spec
from ..upload_pod import PORT, SERVICE_LABEL, UploadSettings

SOURCE_PATH = "/var/run/cdi/clone/source"
TLS_PATH = "/etc/cdi-clone"
SOURCE_VOLUME = "cdi-clone-source"
TLS_VOLUME = "cdi-clone-tls"

Body = dict[str, Any]


def pod_name(target: Body) -> str:
    return f"{target['metadata']['uid']}-source-pod"


def secret_name(target: Body) -> str:
    return f"cdi-clone-tls-{target['metadata']['uid']}"


def client_name(target: Body) -> str:
    """The cloner's certificate CN, which the target's upload server insists on (under 64 bytes)."""
    return f"cdi-clone-source.{target['metadata']['uid']}"


def target_reference(target: Body) -> str:
    return f"{target['metadata']['namespace']}/{target['metadata']['name']}"


def upload_url(target: Body) -> str:
    meta = target["metadata"]
    return f"https://{service_name(meta['name'])}.{meta['namespace']}.svc:{PORT}{CLONE}"


def _meta(target: Body, name: str, namespace: str) -> Body:
    return {"name": name, "namespace": namespace,
            "labels": {ann.APP_LABEL: ann.APP, ann.COMPONENT_LABEL: ann.CLONER_COMPONENT},
            "annotations": {ann.CLONE_TARGET: target_reference(target)}}


def render_secret(target: Body, pod: Body, settings: UploadSettings) -> Body:
    """The cloner's identity, owned by its (created) ``pod``."""
    assert settings.server_ca is not None
    identity = Signer(settings.server_ca).issue(client_name(target), client=True)
    data = {"tls.crt": identity.cert, "tls.key": identity.key, "ca.crt": settings.server_ca.cert}
    meta = _meta(target, secret_name(target), pod["metadata"]["namespace"])
    meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                                "uid": pod["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def render_pod(target: Body, source: Body, config: ControllerConfig, settings: UploadSettings,
               owner_uid: str) -> Body:
    """The cloner pod reading ``source`` (a PVC body) for ``target``."""
    annotations = target["metadata"].get("annotations") or {}
    env = {
        "UPLOAD_URL": upload_url(target),
        "CLIENT_CERT_FILE": f"{TLS_PATH}/tls.crt", "CLIENT_KEY_FILE": f"{TLS_PATH}/tls.key",
        "SERVER_CA_FILE": f"{TLS_PATH}/ca.crt",
        "SOURCE_VOLUME_MODE": "Block" if is_block(source) else "Filesystem",
        "CONTENT_TYPE": annotations.get(ann.CONTENT_TYPE) or "kubevirt",
        "OWNER_UID": owner_uid,
        **settings.extra_env,
    }
    container: Body = {
        "name": ann.CLONER_COMPONENT, "image": settings.image, "imagePullPolicy": settings.pull_policy,
        "command": ["python", "-m", "cloner"],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": config.pod_resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": TLS_VOLUME, "mountPath": TLS_PATH, "readOnly": True}],
    }
    if is_block(source):
        container["volumeDevices"] = [{"name": SOURCE_VOLUME, "devicePath": BLOCK_PATH}]
    else:
        container["volumeMounts"].append({"name": SOURCE_VOLUME, "mountPath": SOURCE_PATH, "readOnly": True})
    volumes = [{"name": SOURCE_VOLUME, "persistentVolumeClaim": {"claimName": source["metadata"]["name"],
                                                                 "readOnly": True}},
               {"name": TLS_VOLUME, "secret": {"secretName": secret_name(target), "defaultMode": 0o440}}]
    meta = _meta(target, pod_name(target), source["metadata"]["namespace"])
    meta["labels"][ann.PROMETHEUS_LABEL] = "true"
    meta["annotations"].update(passthrough_annotations(annotations))
    spec = worker_pod_spec(annotations, config, container, volumes)
    spec["affinity"] = _near_upload_server(target)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _near_upload_server(target: Body) -> Body:
    """Prefer the node of the target's upload server (CDI does too): the bytes then never leave it."""
    name = service_name(target["metadata"]["name"])
    return {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchLabels": {SERVICE_LABEL: name}},
                            "namespaces": [target["metadata"]["namespace"]],
                            "topologyKey": "kubernetes.io/hostname"}}]}}
