"""The shared DataVolume reconciler: PVC rendering and creation, then status from the PVC.

One pass reads the DataVolume and its PVC from the cache and converges:

1. no PVC yet: render its spec (``spec.pvc`` verbatim, ``spec.storage`` completed from the
   StorageProfile and inflated for filesystem overhead), let the flow complete it or say what
   it waits for (:meth:`~.flow.Flow.prepare`), and create it, owned by the DataVolume so
   deleting the DataVolume removes the PVC and, through the PVC, the worker pods;
   a ``prePopulated`` DataVolume creates nothing and waits for its PVC;
2. a PVC of that name that the DataVolume does not own: adopted when claim adoption is allowed
   (``cdi.kubevirt.io/allowClaimAdoption`` or the ``DataVolumeClaimAdoption`` feature gate) and
   taken as it is (``prePopulated``): either way the DataVolume has Succeeded; otherwise
   ``ErrResourceExists``;
3. compute ``status``: phase (Pending, WaitForFirstConsumer, PVCBound, then the flow's worker
   phases), Bound/Running/Ready conditions, restartCount and progress, from the PVC's phase and
   the annotations the worker controllers mirror onto it;
4. write the status only if it changed, and record an event per phase change.

Returns the seconds until the DataVolume wants another look (progress polling while the flow's
``progress_phase`` lasts), or None. A :class:`~..errors.PermanentError` raised on the way is
written by :func:`fail` as phase Failed with its reason, once.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .. import annotations as ann
from .. import conditions
from .. import resources as res
from ..context import Context
from ..errors import PermanentError
from ..phases import ConditionType, EventType, Phase, Reason
from ..progress import format_progress, scrape
from ..storage import RenderError, render_pvc_spec
from .flow import Claim, Event, Flow, Wait
from .kinds import flow_for

log = logging.getLogger("cdi.controller.datavolume")

Body = dict[str, Any]
DV_API_VERSION = "cdi.kubevirt.io/v1beta1"
SKIP_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration", ann.CLONE_TOKEN)
CLAIM_ADOPTION_GATE = "DataVolumeClaimAdoption"


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    dv = ctx.cache.get(res.DATAVOLUME, namespace, name)
    if dv is None or dv["metadata"].get("deletionTimestamp"):
        return None
    flow = flow_for(dv, upload_configured=ctx.upload.configured)
    status, before = _status_of(dv)
    refusal = flow.refusal(dv)
    if refusal is not None:
        _pending(status, *refusal)
        _finish(ctx, dv, before, status, flow.component, Event(EventType.WARNING, refusal[0], refusal[1]))
        return None
    pvc = ctx.cache.get(res.PVC, namespace, name)
    if pvc is None:
        if Phase(status.get("phase") or "").terminal:
            return None  # a finished DataVolume whose claim went (a namespace being deleted) stays finished
        if _annotation(dv, ann.PRE_POPULATED):
            _pending(status, Reason.PENDING, f"waiting for the pre-populated PVC {name}")
            _finish(ctx, dv, before, status, flow.component, None)
            return None
        outcome = _create_claim(ctx, dv, flow)
        if isinstance(outcome, Wait):
            _waiting(status, outcome)
            _finish(ctx, dv, before, status, flow.component, Event(outcome.event_type, outcome.reason,
                                                                   outcome.message))
            return outcome.again
        pvc = outcome
    elif not _owned_by(pvc, dv) or _annotation(pvc, ann.POPULATED_FOR) == name:
        return _existing_claim(ctx, dv, pvc, status, before, flow)
    event = _status_from_claim(ctx, dv, pvc, status, flow)
    _finish(ctx, dv, before, status, flow.component, event)
    return ctx.poll_seconds if flow.progress_phase is not None and status.get("phase") == flow.progress_phase.value \
        else None


def fail(ctx: Context, namespace: str, name: str, error: PermanentError) -> None:
    """A DataVolume that cannot converge: phase Failed, the reason on Running, one event."""
    dv = ctx.cache.get(res.DATAVOLUME, namespace, name)
    if dv is None:
        return
    status, before = _status_of(dv)
    status["phase"] = Phase.FAILED.value
    conditions.update(status["conditions"], ConditionType.READY, "False")
    conditions.update(status["conditions"], ConditionType.RUNNING, "False", error.message, error.reason)
    _finish(ctx, dv, before, status, flow_for(dv).component, Event(EventType.WARNING, error.reason, error.message))


def _status_of(dv: Body) -> tuple[Body, Body]:
    status: Body = copy.deepcopy(dv.get("status") or {})
    before = copy.deepcopy(status)
    status.setdefault("progress", "N/A")
    status.setdefault("restartCount", 0)
    status.setdefault("conditions", [])
    return status, before


def _annotation(obj: Body, key: str) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(key)


def _pending(status: Body, reason: str, message: str) -> None:
    _waiting(status, Wait(Phase.PENDING, reason, message))


def _waiting(status: Body, wait: Wait) -> None:
    status["phase"] = wait.phase.value
    conditions.update(status["conditions"], ConditionType.BOUND, "False", wait.message, wait.reason)
    conditions.update(status["conditions"], ConditionType.READY, "False")
    conditions.update(status["conditions"], ConditionType.RUNNING, "False", wait.message, wait.reason)


def _owned_by(pvc: Body, dv: Body) -> bool:
    return any(ref.get("uid") == dv["metadata"]["uid"] for ref in pvc["metadata"].get("ownerReferences") or [])


def _owner_reference(dv: Body) -> Body:
    meta = dv["metadata"]
    return {"apiVersion": DV_API_VERSION, "kind": "DataVolume", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _adoption_allowed(ctx: Context, dv: Body) -> bool:
    value = _annotation(dv, ann.ALLOW_CLAIM_ADOPTION)
    if value is not None:
        return value == "true"
    return CLAIM_ADOPTION_GATE in ctx.config().feature_gates


def _existing_claim(ctx: Context, dv: Body, pvc: Body, status: Body, before: Body, flow: Flow) -> float | None:
    """A PVC the DataVolume did not make: adopt it, take it as pre-populated, or refuse it."""
    name = pvc["metadata"]["name"]
    adopt = _adoption_allowed(ctx, dv)
    populated = _annotation(dv, ann.PRE_POPULATED) is not None or _annotation(pvc, ann.POPULATED_FOR) == name
    if adopt or populated:
        if adopt:
            _adopt(ctx, dv, pvc)
        status["claimName"] = name
        conditions.bound(status["conditions"], pvc)
        status["phase"], status["progress"] = Phase.SUCCEEDED.value, "100.0%"
        conditions.update(status["conditions"], ConditionType.RUNNING, "False", "", "")
        conditions.update(status["conditions"], ConditionType.READY, "True")
        _finish(ctx, dv, before, status, flow.component,
                Event(EventType.NORMAL, "Succeeded", f"PVC {name} {'adopted' if adopt else 'pre-populated'}"))
        return None
    message = f'Resource "{name}" already exists and is not managed by DataVolume'
    _pending(status, Reason.ERR_RESOURCE_EXISTS, message)
    _finish(ctx, dv, before, status, flow.component, Event(EventType.WARNING, Reason.ERR_RESOURCE_EXISTS, message))
    return None


def _adopt(ctx: Context, dv: Body, pvc: Body) -> None:
    """Own the PVC and mark it populated for the DataVolume (CDI's mark), so that later passes,
    which now see a PVC the DataVolume owns, keep it Succeeded rather than wait for an import."""
    meta = pvc["metadata"]
    patch: Body = {}
    if _annotation(pvc, ann.POPULATED_FOR) != meta["name"]:
        patch["annotations"] = {ann.POPULATED_FOR: meta["name"]}
    if not any(ref.get("controller") for ref in meta.get("ownerReferences") or []):
        patch["ownerReferences"] = [*(meta.get("ownerReferences") or []), _owner_reference(dv)]
    if patch:
        ctx.kube.patch(res.PVC, meta["namespace"], meta["name"], {"metadata": patch})


def _worker_pod_annotations(dv: Body) -> dict[str, str]:
    """``spec.priorityClassName`` and ``spec.serviceAccountName`` reach every worker pod through
    the PVC, as CDI's annotations carry them."""
    spec = dv.get("spec") or {}
    out = {}
    if spec.get("priorityClassName"):
        out[ann.POD_PRIORITY_CLASS] = str(spec["priorityClassName"])
    if spec.get("serviceAccountName"):
        out[ann.POD_SERVICE_ACCOUNT] = str(spec["serviceAccountName"])
    return out


def _create_claim(ctx: Context, dv: Body, flow: Flow) -> Body | Wait:
    config = ctx.config()
    try:
        spec = render_pvc_spec(dv, storage_classes=ctx.cache.list(res.STORAGECLASS),
                               profiles={p["metadata"]["name"]: p for p in ctx.cache.list(res.STORAGEPROFILE)},
                               config=config)
    except RenderError as error:
        return Wait(Phase.PENDING, error.reason, error.message, EventType.WARNING, 10.0)
    prepared = flow.prepare(ctx, dv, spec)
    if isinstance(prepared, Wait):
        return prepared
    body = _claim_body(dv, prepared)
    created = ctx.kube.create(res.PVC, body)
    if created is None:  # made by a previous pass the cache hasn't seen yet, or by someone else
        return Wait(Phase.PENDING, Reason.PENDING, f"PVC {body['metadata']['name']} is being created", again=1.0)
    log.info("%s/%s: created PVC", body["metadata"]["namespace"], body["metadata"]["name"])
    return created


def _claim_body(dv: Body, claim: Claim) -> Body:
    meta = dv["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in SKIP_ANNOTATIONS}
    annotations.update(_worker_pod_annotations(dv))
    annotations.update(claim.annotations)
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": {**(meta.get("labels") or {}), ann.APP_LABEL: ann.APP},
                     "annotations": annotations, "ownerReferences": [_owner_reference(dv)]},
        "spec": claim.spec,
    }


def _waits_for_consumer(ctx: Context, pvc: Body) -> bool:
    annotations = pvc["metadata"].get("annotations") or {}
    if ann.BIND_IMMEDIATE in annotations or ann.SELECTED_NODE in annotations:
        return False
    class_name = (pvc.get("spec") or {}).get("storageClassName")
    storage_class = ctx.cache.get(res.STORAGECLASS, "", class_name) if class_name else None
    return storage_class is not None and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer"


def _status_from_claim(ctx: Context, dv: Body, pvc: Body, status: Body, flow: Flow) -> Event | None:
    name = pvc["metadata"]["name"]
    annotations: dict[str, str] = pvc["metadata"].get("annotations") or {}
    status["claimName"] = name
    conds = status["conditions"]
    conditions.bound(conds, pvc)
    claim_phase = (pvc.get("status") or {}).get("phase")
    event: Event | None
    if claim_phase == "Bound":
        phase, event = Phase.PVC_BOUND, Event(EventType.NORMAL, "Bound", f"PVC {name} Bound")
    elif _waits_for_consumer(ctx, pvc):
        phase, event = Phase.WAIT_FOR_FIRST_CONSUMER, Event(
            EventType.NORMAL, "WaitForFirstConsumer", f"PVC {name} is waiting for its first consumer before it binds")
    else:
        phase, event = Phase.PENDING, Event(EventType.NORMAL, "Pending", f"PVC {name} Pending")
    worker = flow.follow(ctx, dv, pvc)
    if worker is not None:
        phase, event = worker
    status["phase"] = phase.value
    conditions.running(conds, flow.running_annotations(annotations))
    status["restartCount"] = int(annotations.get(ann.POD_RESTARTS) or 0)
    if phase is Phase.SUCCEEDED:
        status["progress"] = "100.0%"
        conditions.update(conds, ConditionType.READY, "True")
    elif phase is flow.progress_phase:
        _read_progress(ctx, dv, pvc, status, flow)
    return event


def _read_progress(ctx: Context, dv: Body, pvc: Body, status: Body, flow: Flow) -> None:
    where = flow.progress_pod(pvc)
    pod = ctx.cache.get(res.POD, *where) if where else None
    pod_ip = ((pod or {}).get("status") or {}).get("podIP")
    if not pod_ip:
        return
    percent = scrape(pod_ip, dv["metadata"]["uid"])
    if percent is not None:
        status["progress"] = format_progress(percent)


def _finish(ctx: Context, dv: Body, before: Body, status: Body, component: str, event: Event | None) -> None:
    """Write the status if it changed; one event per phase change (and per new refusal)."""
    if status == before:
        return
    meta = dv["metadata"]
    ctx.kube.patch_status(res.DATAVOLUME, meta["namespace"], meta["name"], status)
    changed_phase = before.get("phase") != status.get("phase")
    new_reason = _running_message(before) != _running_message(status)
    if event is not None and (changed_phase or (event.type is EventType.WARNING and new_reason)):
        ctx.kube.event(dv, "DataVolume", event.type, event.reason, event.message, component)
    if new_reason and not Phase(status.get("phase") or "").terminal:
        running = conditions.find(status["conditions"], ConditionType.RUNNING) or {}
        if running.get("status") == "False" and running.get("reason") == "Error" and running.get("message"):
            ctx.kube.event(dv, "DataVolume", EventType.WARNING, "Error", running["message"], component)


def _running_message(status: Body) -> tuple[str, str]:
    running = conditions.find(status.get("conditions") or [], ConditionType.RUNNING) or {}
    return str(running.get("reason", "")), str(running.get("message", ""))
