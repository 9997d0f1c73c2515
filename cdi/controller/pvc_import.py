"""The PVC-level import controller: one importer pod per annotated PVC, its state mirrored back.

Any PVC carrying ``cdi.kubevirt.io/storage.import.endpoint`` or ``.import.source`` is an import
target (a DataVolume's PVC, or a bare annotated PVC as CDI allows). The controller starts the
importer once the claim can be used, copies the pod's phase, restarts and running condition onto
the PVC, and acts on how a run ended:

* success: ``pod.phase=Succeeded``, preallocation and image labels recorded, pod removed
  (unless ``retainAfterCompletion``);
* scratch needed: the pod is replaced by one with a scratch PVC (CDI's restart-for-scratch;
  we usually decided up front from the endpoint, so this is the rare case);
* permanent error (the importer says ``fatalError``) or ``max_attempts`` failed runs: the PVC is
  marked ``import.fatalError`` and the pod removed, so nothing retries a hopeless import;
* a temporary error: kubelet restarts the container with back-off and the importer resumes.
"""

from __future__ import annotations

import logging
from typing import Any

from . import resources as res
from . import annotations as ann
from . import importer_pod, podstatus
from .context import Context

log = logging.getLogger("cdi.controller.import")


def is_import_claim(pvc: dict[str, Any]) -> bool:
    annotations = pvc["metadata"].get("annotations") or {}
    return ann.IMPORT_ENDPOINT in annotations or ann.IMPORT_SOURCE in annotations


def is_done(annotations: dict[str, str]) -> bool:
    return annotations.get(ann.POD_PHASE) == "Succeeded" or annotations.get(ann.FATAL_ERROR) == "true"


def can_start(pvc: dict[str, Any]) -> bool:
    """Bound, or the importer itself is to be the first consumer of a WaitForFirstConsumer claim."""
    annotations = pvc["metadata"].get("annotations") or {}
    phase = (pvc.get("status") or {}).get("phase")
    return phase == "Bound" or (phase == "Pending" and (ann.BIND_IMMEDIATE in annotations
                                                        or ann.SELECTED_NODE in annotations))


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    pvc = ctx.cache.get(res.PVC, namespace, name)
    if pvc is None or not is_import_claim(pvc):
        return None
    annotations: dict[str, str] = pvc["metadata"].get("annotations") or {}
    pod_name = annotations.get(ann.IMPORT_POD_NAME) or importer_pod.name_for("importer", name)
    pod = ctx.cache.get(res.POD, namespace, pod_name)
    if pvc["metadata"].get("deletionTimestamp"):
        # the claim's protection finalizer waits for the pod, and the garbage collector waits for
        # the claim to be gone before it removes the pod: only we can break the wait
        if pod is not None:
            ctx.kube.delete(res.POD, namespace, pod_name)
        return None
    if is_done(annotations):
        if pod is not None and annotations.get(ann.RETAIN_AFTER_COMPLETION) != "true":
            ctx.kube.delete(res.POD, namespace, pod_name)
        return None
    if pod is None:
        if can_start(pvc):
            _start(ctx, pvc, pod_name)
        return None
    return _follow(ctx, pvc, pod)


def owner_uid(pvc: dict[str, Any]) -> str:
    """The DataVolume's UID (the progress metric's label), else the PVC's own."""
    for ref in pvc["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "DataVolume":
            return str(ref["uid"])
    return str(pvc["metadata"]["uid"])


def _start(ctx: Context, pvc: dict[str, Any], pod_name: str) -> None:
    annotations = pvc["metadata"].get("annotations") or {}
    config = ctx.config()
    scratch = importer_pod.scratch_name(pvc["metadata"]["name"]) if importer_pod.needs_scratch(annotations) \
        else None
    body = importer_pod.render(pvc, owner_uid=owner_uid(pvc), config=config, settings=ctx.importer, scratch=scratch)
    created = ctx.kube.create(res.POD, body)
    if created is not None:
        log.info("%s/%s: started %s%s", pvc["metadata"]["namespace"], pvc["metadata"]["name"], pod_name,
                 " with scratch space" if scratch else "")
        if scratch:
            ctx.kube.create(res.PVC, importer_pod.render_scratch_claim(pvc, created, config))
    if annotations.get(ann.IMPORT_POD_NAME) != pod_name:
        ctx.kube.patch(res.PVC, pvc["metadata"]["namespace"], pvc["metadata"]["name"],
                       {"metadata": {"annotations": {ann.IMPORT_POD_NAME: pod_name}}})


def _follow(ctx: Context, pvc: dict[str, Any], pod: dict[str, Any]) -> float | None:
    meta = pvc["metadata"]
    annotations: dict[str, str] = meta.get("annotations") or {}
    update = podstatus.pod_annotations(pod, annotations)
    outcome = podstatus.last_run(pod)
    labels: dict[str, str] = {}
    delete_pod = False
    attempts = outcome.failed_runs
    if outcome.finished and outcome.succeeded and update[ann.POD_PHASE] == "Succeeded":
        update[ann.PREALLOCATION_APPLIED] = str(outcome.preallocation_applied).lower()
        labels = outcome.labels
        delete_pod = annotations.get(ann.RETAIN_AFTER_COMPLETION) != "true"
    elif outcome.scratch_required:
        update[ann.REQUIRES_SCRATCH] = "true"
        update[ann.POD_PHASE] = "Pending"
        delete_pod = True
    elif outcome.fatal or (attempts >= ctx.max_attempts and not outcome.scratch_required):
        update[ann.FATAL_ERROR] = "true"
        update[ann.RUNNING_CONDITION] = "false"
        update[ann.RUNNING_CONDITION_REASON] = outcome.reason if outcome.fatal else "Error"
        update[ann.RUNNING_CONDITION_MESSAGE] = outcome.message if outcome.fatal else \
            f"{outcome.message} (gave up after {attempts} failed attempts)"
        delete_pod = annotations.get(ann.RETAIN_AFTER_COMPLETION) != "true"
    changed = {k: v for k, v in update.items() if annotations.get(k) != v}
    current_labels = meta.get("labels") or {}
    new_labels = {k: v for k, v in labels.items() if current_labels.get(k) != v}
    if changed or new_labels:
        patch: dict[str, Any] = {"metadata": {"annotations": changed}}
        if new_labels:
            patch["metadata"]["labels"] = new_labels
        ctx.kube.patch(res.PVC, meta["namespace"], meta["name"], patch)
    if delete_pod:
        ctx.kube.delete(res.POD, meta["namespace"], pod["metadata"]["name"])
    return None
