"""The shared DataVolume reconciler: PVC rendering and creation, then status from the PVC.

One pass reads the DataVolume and its PVC from the cache and converges:

1. no PVC yet: render its spec (``spec.pvc`` verbatim, ``spec.storage`` completed from the
   StorageProfile and inflated for filesystem overhead) and create it, owned by the DataVolume
   so deleting the DataVolume removes the PVC and, through the PVC, the worker pods;
2. compute ``status``: phase (Pending, WaitForFirstConsumer, PVCBound, then the flow's worker
   phases), Bound/Running/Ready conditions, restartCount and progress, from the PVC's phase and
   the annotations the worker controller mirrors onto it;
3. write the status only if it changed, and record an event per phase change.

Returns the seconds until the DataVolume wants another look (progress polling while the flow's
``progress_phase`` lasts), or None.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .. import annotations as ann
from .. import conditions
from ..context import Context
from ..progress import format_progress, scrape
from ..storage import RenderError, render_pvc_spec
from .flow import Event
from .kinds import flow_for

log = logging.getLogger("cdi.controller.datavolume")

DV_API_VERSION = "cdi.kubevirt.io/v1beta1"
TERMINAL = ("Succeeded", "Failed")
SKIP_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    dv = ctx.cache.get("dv", namespace, name)
    if dv is None or dv["metadata"].get("deletionTimestamp"):
        return None
    flow = flow_for(dv, upload_configured=ctx.upload.configured)
    status: dict[str, Any] = copy.deepcopy(dv.get("status") or {})
    before = copy.deepcopy(status)
    status.setdefault("progress", "N/A")
    status.setdefault("restartCount", 0)
    status.setdefault("conditions", [])
    refusal = flow.refusal(dv)
    if refusal is not None:
        _pending(status, *refusal)
        _finish(ctx, dv, before, status, flow.component, Event("Warning", refusal[0], refusal[1]))
        return None
    pvc = ctx.cache.get("pvc", namespace, name)
    if pvc is None:
        if status.get("phase") == "Failed":
            return None
        pvc, problem = _create_claim(ctx, dv, flow)
        if pvc is None:
            assert problem is not None
            _pending(status, *problem)
            _finish(ctx, dv, before, status, flow.component, Event("Warning", problem[0], problem[1]))
            return 10.0  # look again: the class/profile may appear, or the cache catch up
    elif not _owned_by(pvc, dv):
        message = f'Resource "{name}" already exists and is not managed by DataVolume'
        _pending(status, "ErrResourceExists", message)
        _finish(ctx, dv, before, status, flow.component, Event("Warning", "ErrResourceExists", message))
        return None
    event = _status_from_claim(ctx, dv, pvc, status, flow)
    _finish(ctx, dv, before, status, flow.component, event)
    return ctx.poll_seconds if status.get("phase") == flow.progress_phase else None


def _pending(status: dict[str, Any], reason: str, message: str) -> None:
    status["phase"] = "Pending"
    conditions.update(status["conditions"], conditions.BOUND, "False", message, reason)
    conditions.update(status["conditions"], conditions.READY, "False")
    conditions.update(status["conditions"], conditions.RUNNING, "False", message, reason)


def _owned_by(pvc: dict[str, Any], dv: dict[str, Any]) -> bool:
    return any(ref.get("uid") == dv["metadata"]["uid"] for ref in pvc["metadata"].get("ownerReferences") or [])


def _create_claim(ctx: Context, dv: dict[str, Any], flow: Any) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    config = ctx.config()
    try:
        spec = render_pvc_spec(dv, storage_classes=ctx.cache.list("storageclass"),
                               profiles={p["metadata"]["name"]: p for p in ctx.cache.list("storageprofile")},
                               config=config)
    except RenderError as error:
        return None, (error.reason, error.message)
    meta = dv["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in SKIP_ANNOTATIONS}
    annotations.update(flow.claim_annotations(dv, config))
    body = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"],
            "labels": {**(meta.get("labels") or {}), ann.APP_LABEL: ann.APP},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": DV_API_VERSION, "kind": "DataVolume", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }
    created = ctx.kube.create("pvc", body)
    if created is None:  # made by a previous pass the cache hasn't seen yet, or by someone else
        return None, ("Pending", f"PVC {meta['name']} is being created")
    log.info("%s/%s: created PVC", meta["namespace"], meta["name"])
    return created, None


def _waits_for_consumer(ctx: Context, pvc: dict[str, Any]) -> bool:
    annotations = pvc["metadata"].get("annotations") or {}
    if ann.BIND_IMMEDIATE in annotations or ann.SELECTED_NODE in annotations:
        return False
    class_name = (pvc.get("spec") or {}).get("storageClassName")
    storage_class = ctx.cache.get("storageclass", "", class_name) if class_name else None
    return storage_class is not None and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer"


def _status_from_claim(ctx: Context, dv: dict[str, Any], pvc: dict[str, Any], status: dict[str, Any],
                       flow: Any) -> Event | None:
    name = pvc["metadata"]["name"]
    annotations: dict[str, str] = pvc["metadata"].get("annotations") or {}
    status["claimName"] = name
    conds = status["conditions"]
    conditions.bound(conds, pvc)
    claim_phase = (pvc.get("status") or {}).get("phase")
    event: Event | None = None
    if claim_phase == "Bound":
        status["phase"], event = "PVCBound", Event("Normal", "Bound", f"PVC {name} Bound")
    elif _waits_for_consumer(ctx, pvc):
        status["phase"], event = "WaitForFirstConsumer", Event(
            "Normal", "WaitForFirstConsumer", f"PVC {name} is waiting for its first consumer before it binds")
    else:
        status["phase"], event = "Pending", Event("Normal", "Pending", f"PVC {name} Pending")
    worker = flow.worker_phase(annotations, name)
    if worker is not None:
        status["phase"], event = worker
    conditions.running(conds, annotations)
    status["restartCount"] = int(annotations.get(ann.POD_RESTARTS) or 0)
    if status["phase"] == "Succeeded":
        status["progress"] = "100.0%"
        conditions.update(conds, conditions.READY, "True")
    elif status["phase"] == flow.progress_phase:
        _read_progress(ctx, dv, pvc, status, flow.pod_annotation)
    return event


def _read_progress(ctx: Context, dv: dict[str, Any], pvc: dict[str, Any], status: dict[str, Any],
                   pod_annotation: str) -> None:
    pod_name = (pvc["metadata"].get("annotations") or {}).get(pod_annotation)
    pod = ctx.cache.get("pod", pvc["metadata"]["namespace"], pod_name) if pod_name else None
    pod_ip = ((pod or {}).get("status") or {}).get("podIP")
    if not pod_ip:
        return
    percent = scrape(pod_ip, dv["metadata"]["uid"])
    if percent is not None:
        status["progress"] = format_progress(percent)


def _finish(ctx: Context, dv: dict[str, Any], before: dict[str, Any], status: dict[str, Any], component: str,
            event: Event | None) -> None:
    """Write the status if it changed; one event per phase change (and per new refusal)."""
    if status == before:
        return
    meta = dv["metadata"]
    ctx.kube.patch_status("dv", meta["namespace"], meta["name"], status)
    changed_phase = before.get("phase") != status.get("phase")
    new_reason = _running_message(before) != _running_message(status)
    if event is not None and (changed_phase or (event.type == "Warning" and new_reason)):
        ctx.kube.event(dv, "DataVolume", event.type, event.reason, event.message, component)
    if new_reason and status.get("phase") not in TERMINAL:
        running = conditions.find(status["conditions"], conditions.RUNNING) or {}
        if running.get("status") == "False" and running.get("reason") == "Error" and running.get("message"):
            ctx.kube.event(dv, "DataVolume", "Warning", "Error", running["message"], component)


def _running_message(status: dict[str, Any]) -> tuple[str, str]:
    running = conditions.find(status.get("conditions") or [], conditions.RUNNING) or {}
    return str(running.get("reason", "")), str(running.get("message", ""))

