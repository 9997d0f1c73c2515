"""The PVC-level host-assisted clone controller: the source side of a copy.

A target PVC annotated ``k8s.io/CloneRequest: <ns>/<pvc>`` is filled by two pods: the target's
upload server in clone mode (run by :mod:`.pvc_upload`, which accepts only this clone's client
certificate) and a cloner pod in the source namespace that reads the source and streams it
there (:mod:`.clone.cloner_pod`). This reconciler owns the second half:

1. the clone must be authorized (cross-namespace: the controller's extended token on the PVC,
   so a hand-made annotated PVC clones nothing it may not read);
2. the source must exist, be populated and not be in use by another pod (CDI's
   ``CloneSourceInUse``): each wait is written to the PVC's ``condition.source.running``
   annotations, where the DataVolume controller turns it into a condition and an event;
3. once the upload server is ready, the client Secret and the cloner pod are made, and the
   pod's state mirrored (``clone.phase``: CloneScheduled, CloneInProgress);
4. the upload server ends the clone (it verifies the checksum and exits ``Clone Complete``):
   ``clone.phase=Succeeded`` and the cloner's pod and Secret go; a permanent error from the
   cloner (a source that cannot fit) marks the PVC ``fatalError`` and stops both sides.

Temporary cloner failures restart the container (restartPolicy OnFailure), which resumes from
the offset the upload server acknowledged.
"""

from __future__ import annotations

import logging
from typing import Any

from . import annotations as ann
from . import podstatus
from . import resources as res
from .clone import cloner_pod
from .clone.authorization import valid_for_claim
from .clone.readiness import NotReady, ensure_unused, source_object
from .clone.source import CloneSource, SourceKind
from .context import Context
from .errors import PermanentError
from .phases import Phase
from .pvc_import import owner_uid

log = logging.getLogger("cdi.controller.clone")

Body = dict[str, Any]
IN_USE_POLL_SECONDS = 5.0
"""Pods that use the source are not watched (only CDI's own are), so the wait polls."""


def clone_source_of(pvc: Body) -> CloneSource | None:
    namespace, _, name = ((pvc["metadata"].get("annotations") or {}).get(ann.CLONE_REQUEST) or "").partition("/")
    return CloneSource(SourceKind.PVC, namespace, name) if namespace and name else None


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    target = ctx.cache.get(res.PVC, namespace, name)
    if target is None:
        _remove_orphans(ctx, f"{namespace}/{name}")
        return None
    source = clone_source_of(target)
    if source is None:
        return None
    annotations: dict[str, str] = target["metadata"].get("annotations") or {}
    if target["metadata"].get("deletionTimestamp") or annotations.get(ann.FATAL_ERROR) == "true":
        _remove_cloner(ctx, target, source)
        return None
    if annotations.get(ann.POD_PHASE) == "Succeeded":
        _annotate(ctx, target, {ann.CLONE_PHASE: Phase.SUCCEEDED.value})
        _remove_cloner(ctx, target, source)
        return None
    if source.namespace != namespace and not valid_for_claim(ctx.clone_keys, target, source):
        raise PermanentError("CloneNotAuthorized",
                             f"PVC {namespace}/{name} may not clone {source}: no valid extended clone token")
    try:
        source_body = source_object(ctx.cache, source)
        pod = ctx.cache.get(res.POD, source.namespace, cloner_pod.pod_name(target))
        if pod is None:
            ensure_unused(ctx.kube, source)
    except NotReady as waiting:
        _annotate(ctx, target, {ann.CLONE_PHASE: Phase.CLONE_SCHEDULED.value, **_source_condition(
            "false", waiting.message, waiting.reason)})
        return IN_USE_POLL_SECONDS if waiting.reason == "CloneSourceInUse" else None
    if pod is None:
        if annotations.get(ann.POD_READY) != "true":
            _annotate(ctx, target, {ann.CLONE_PHASE: Phase.CLONE_SCHEDULED.value, **_source_condition(
                "false", "waiting for the target's upload server", "Pending")})
            return None
        _start(ctx, target, source_body)
        return None
    _follow(ctx, target, source, pod)
    return None


def fail(ctx: Context, namespace: str, name: str, error: PermanentError) -> None:
    """A clone that cannot go on: the PVC says why (the DataVolume fails from it)."""
    target = ctx.cache.get(res.PVC, namespace, name)
    if target is not None:
        _annotate(ctx, target, {ann.FATAL_ERROR: "true", ann.CLONE_PHASE: Phase.FAILED.value,
                                **_source_condition("false", error.message, error.reason)})


def _source_condition(value: str, message: str, reason: str) -> dict[str, str]:
    return {ann.SOURCE_RUNNING_CONDITION: value, ann.SOURCE_RUNNING_CONDITION_MESSAGE: message,
            ann.SOURCE_RUNNING_CONDITION_REASON: reason}


def _annotate(ctx: Context, target: Body, wanted: dict[str, str]) -> None:
    current = target["metadata"].get("annotations") or {}
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    if changed:
        meta = target["metadata"]
        ctx.kube.patch(res.PVC, meta["namespace"], meta["name"], {"metadata": {"annotations": changed}})


def _start(ctx: Context, target: Body, source: Body) -> None:
    """The pod first, then its Secret owned by it (kubelet waits for the Secret to mount it), so
    the garbage collector removes the Secret with the pod and the controller never deletes Secrets."""
    body = cloner_pod.render_pod(target, source, ctx.config(), ctx.upload, owner_uid=owner_uid(target))
    pod = ctx.kube.create(res.POD, body)
    if pod is not None:
        ctx.kube.create(res.SECRET, cloner_pod.render_secret(target, pod, ctx.upload))
        log.info("%s/%s: started cloner %s/%s", target["metadata"]["namespace"], target["metadata"]["name"],
                 body["metadata"]["namespace"], body["metadata"]["name"])
    _annotate(ctx, target, {ann.CLONE_SOURCE_POD: f"{body['metadata']['namespace']}/{body['metadata']['name']}",
                            ann.CLONE_PHASE: Phase.CLONE_SCHEDULED.value})


def _follow(ctx: Context, target: Body, source: CloneSource, pod: Body) -> None:
    mirrored = podstatus.pod_annotations(pod, {})
    outcome = podstatus.last_run(pod)
    update = _source_condition(mirrored[ann.RUNNING_CONDITION], mirrored[ann.RUNNING_CONDITION_MESSAGE],
                               mirrored[ann.RUNNING_CONDITION_REASON])
    phase = mirrored[ann.POD_PHASE]
    update[ann.CLONE_PHASE] = Phase.CLONE_IN_PROGRESS.value if phase in ("Running", "Succeeded") \
        else Phase.CLONE_SCHEDULED.value
    if outcome.finished and outcome.succeeded:
        update.update(_source_condition("false", "Clone Complete", "Completed"))
    elif outcome.fatal:
        update.update({ann.FATAL_ERROR: "true", ann.CLONE_PHASE: Phase.FAILED.value,
                       **_source_condition("false", outcome.message, outcome.reason)})
    _annotate(ctx, target, update)
    if outcome.fatal:
        _remove_cloner(ctx, target, source)


def _remove_cloner(ctx: Context, target: Body, source: CloneSource) -> None:
    """The cloner's pod goes when the clone ends (kept with ``retainAfterCompletion``, as the
    upload server is, unless the target itself is going)."""
    annotations = target["metadata"].get("annotations") or {}
    if annotations.get(ann.RETAIN_AFTER_COMPLETION) == "true" and not target["metadata"].get("deletionTimestamp"):
        return
    if ctx.cache.get(res.POD, source.namespace, cloner_pod.pod_name(target)) is not None:
        ctx.kube.delete(res.POD, source.namespace, cloner_pod.pod_name(target))  # its Secret goes with it


def _remove_orphans(ctx: Context, target_reference: str) -> None:
    """The target is gone (its DataVolume was deleted mid-clone): its cloner must go too."""
    def serves(pod: Body) -> bool:
        return ((pod.get("metadata") or {}).get("annotations") or {}).get(ann.CLONE_TARGET) == target_reference
    for namespace, name in ctx.cache.select(res.POD, serves):
        ctx.kube.delete(res.POD, namespace, name)
