"""The PVC-level upload controller: one upload server per PVC marked ``storage.upload.target``.

A DataVolume's PVC or a bare PVC (``virtctl image-upload pvc``) gets, once it can be used, a TLS
Secret, the Service ``cdi-upload-<pvc>`` and the pod behind it (:mod:`.upload_pod`). The pod's
state is mirrored onto the PVC (``pod.phase``, ``pod.ready``, ``uploadPodName``, the running
condition) where virtctl, the proxy and the DataVolume controller read it. How a run ends:

* ``Upload Complete`` (exit 0): ``pod.phase=Succeeded``; pod and Service are removed (unless
  ``retainAfterCompletion``) and the volume takes no more uploads;
* ``Deadline Passed`` (exit 0, no upload came in time): the pod is replaced by a fresh one;
* a failed upload (exit 1): kubelet restarts the container, and the server is ready again.
"""

from __future__ import annotations

import logging
from typing import Any

from uploadproxy.resolver import service_name

from . import resources as res
from . import annotations as ann
from . import podstatus, upload_pod
from .clone import cloner_pod
from .context import Context
from .pvc_import import can_start, owner_uid

log = logging.getLogger("cdi.controller.upload")


def is_upload_claim(pvc: dict[str, Any]) -> bool:
    """Uploads' targets, and host-assisted clones' (whose bytes come from a cloner pod)."""
    annotations = pvc["metadata"].get("annotations") or {}
    return ann.UPLOAD_TARGET in annotations or ann.CLONE_REQUEST in annotations


def _client(pvc: dict[str, Any], settings: upload_pod.UploadSettings) -> upload_pod.Client:
    """A clone target's server takes bytes from its cloner only (a certificate the controller
    issued with the upload-server CA); an upload target's from the proxy."""
    if ann.CLONE_REQUEST in (pvc["metadata"].get("annotations") or {}):
        assert settings.server_ca is not None
        return upload_pod.Client(cloner_pod.client_name(pvc), settings.server_ca.cert)
    return upload_pod.proxy_client(settings)


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    pvc = ctx.cache.get(res.PVC, namespace, name)
    if pvc is None or not is_upload_claim(pvc):
        return None
    annotations: dict[str, str] = pvc["metadata"].get("annotations") or {}
    pod_name = annotations.get(ann.UPLOAD_POD_NAME) or upload_pod.pod_name(name)
    pod = ctx.cache.get(res.POD, namespace, pod_name)
    if pvc["metadata"].get("deletionTimestamp"):
        if pod is not None:  # the claim's protection finalizer waits for it
            ctx.kube.delete(res.POD, namespace, pod_name)
        return None
    if annotations.get(ann.POD_PHASE) == "Succeeded" or annotations.get(ann.FATAL_ERROR) == "true":
        if annotations.get(ann.RETAIN_AFTER_COMPLETION) != "true":
            if pod is not None:
                ctx.kube.delete(res.POD, namespace, pod_name)
            ctx.kube.delete(res.SERVICE, namespace, service_name(name))
        return None
    if not ctx.upload.configured:
        return None
    if pod is None:
        if can_start(pvc):
            _start(ctx, pvc, pod_name)
        return None
    _follow(ctx, pvc, pod)
    return None


def _start(ctx: Context, pvc: dict[str, Any], pod_name: str) -> None:
    meta = pvc["metadata"]
    # a restarted controller may find these made already: create answers None, and that is fine
    client = _client(pvc, ctx.upload)
    ctx.kube.create(res.SECRET, upload_pod.render_secret(pvc, ctx.upload, client))
    ctx.kube.create(res.SERVICE, upload_pod.render_service(pvc))
    pod = upload_pod.render_pod(pvc, ctx.config(), ctx.upload, owner_uid=owner_uid(pvc), client_name=client.name)
    if ctx.kube.create(res.POD, pod) is not None:
        log.info("%s/%s: started upload server %s", meta["namespace"], meta["name"], pod_name)
    annotations = meta.get("annotations") or {}
    if annotations.get(ann.UPLOAD_POD_NAME) != pod_name:
        ctx.kube.patch(res.PVC, meta["namespace"], meta["name"],
                       {"metadata": {"annotations": {ann.UPLOAD_POD_NAME: pod_name}}})


def _deadline_passed(pod: dict[str, Any]) -> bool:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        payload = podstatus.termination_payload(terminated.get("message")) or {}
        if payload.get("deadlinePassed"):
            return True
    return False


def _follow(ctx: Context, pvc: dict[str, Any], pod: dict[str, Any]) -> None:
    meta = pvc["metadata"]
    annotations: dict[str, str] = meta.get("annotations") or {}
    update = podstatus.pod_annotations(pod, annotations)
    replace_pod = False
    if update[ann.POD_PHASE] == "Succeeded":
        if _deadline_passed(pod):
            update.update({ann.POD_PHASE: "Pending", ann.POD_READY: "false"})
            replace_pod = True
        else:
            update[ann.RUNNING_CONDITION_MESSAGE] = "Clone Complete" if ann.CLONE_REQUEST in annotations \
                else "Upload Complete"
    changed = {k: v for k, v in update.items() if annotations.get(k) != v}
    if changed:
        ctx.kube.patch(res.PVC, meta["namespace"], meta["name"], {"metadata": {"annotations": changed}})
    if replace_pod:
        log.info("%s/%s: upload server deadline passed; starting a fresh one", meta["namespace"], meta["name"])
        ctx.kube.delete(res.POD, meta["namespace"], pod["metadata"]["name"])
