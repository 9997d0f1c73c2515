"""The clone flow: DataVolumes with ``source.pvc``, ``source.snapshot`` or ``sourceRef``.

Before the target PVC exists: resolve the source (through a DataSource), check the clone is
authorized (:mod:`..clone.authorization`) and its source ready (:mod:`..clone.readiness`), size
the target from the source when ``storage`` gives no size (for a copy of a Filesystem
source, from its image's virtual size: :mod:`..clone.size_detection`), and plan the strategy
(:mod:`..clone.planner`), recorded on the DataVolume as ``cdi.kubevirt.io/cloneType`` (with
``cloneFallbackReason`` and a ``CloneFallback`` event when a smart clone could not be had).
Then:

* ``copy``: the target PVC is created annotated ``k8s.io/CloneRequest``; the upload server and
  the cloner pod (:mod:`..pvc_clone`) fill it; phases CloneScheduled, CloneInProgress (with
  progress from the cloner's metric), Succeeded;
* ``snapshot``/``csi-clone``: the temporary snapshot is made first
  (SnapshotForSmartCloneInProgress), then the target is created with it (or the source PVC)
  as ``dataSource`` (SmartClonePVCInProgress / CSICloneInProgress) and the clone has succeeded
  once the target is Bound and the temporary objects are gone;
* a snapshot source the target's driver cannot restore is first restored into a temporary PVC
  in the snapshot's namespace (CloneFromSnapshotSourceInProgress) and then copied.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import annotations as ann
from .. import resources as res
from ..clone import planner, size_detection, smart
from ..clone.authorization import NotAuthorized, authorize
from ..clone.planner import Plan, Strategy, Volume, claim_size
from ..clone.readiness import NotReady, ensure_unused, source_object
from ..clone.source import CloneSource, SourceKind, Unresolved, clone_source
from ..context import Context
from ..errors import PermanentError
from ..phases import EventType, Phase, Reason
from ..storage import FILESYSTEM, format_quantity, required_space
from .flow import Claim, Event, Wait
from importer.quantity import parse_quantity

log = logging.getLogger("cdi.controller.datavolume.clone")

Body = dict[str, Any]
SMALLER_THAN_SOURCE = "target resources requests storage size is smaller than the source"
"""CDI's message when a clone's target cannot hold the source."""


class CloneFlow:
    component = "datavolume-clone-controller"
    progress_phase: Phase | None = Phase.CLONE_IN_PROGRESS

    def refusal(self, dv: Body) -> tuple[str, str] | None:
        return None

    # -- before the target exists -----------------------------------------------------------

    def prepare(self, ctx: Context, dv: Body, spec: Body) -> Claim | Wait:
        try:
            source = clone_source(dv, ctx.cache)
            extended = authorize(ctx.clone_keys, source, dv)
            source_body = source_object(ctx.cache, source)
        except Unresolved as error:
            return Wait(Phase.PENDING, error.reason, error.message)
        except NotAuthorized as error:
            return Wait(Phase.PENDING, error.reason, error.message, EventType.WARNING)
        except NotReady as error:
            return Wait(Phase.PENDING, error.reason, _through_data_source(dv, error.message))
        if extended:
            ctx.kube.patch(res.DATAVOLUME, dv["metadata"]["namespace"], dv["metadata"]["name"],
                           {"metadata": {"annotations": {ann.EXTENDED_CLONE_TOKEN: extended}}})
            dv["metadata"].setdefault("annotations", {})[ann.EXTENDED_CLONE_TOKEN] = extended
        asked = _requested(spec)
        spec = _sized(ctx, dv, spec, source, source_body)
        plan = _recorded_plan(ctx, dv, source, source_body, spec)
        try:
            if plan.strategy is Strategy.COPY:
                spec = _sized_from_image(ctx, dv, spec, asked, source, source_body)
        except size_detection.Detecting as detecting:
            return Wait(Phase.PENDING, detecting.reason, detecting.message)
        try:
            return self._execute(ctx, dv, spec, source, source_body, plan)
        except (smart.Pending, NotReady) as waiting:
            phase = waiting.phase if isinstance(waiting, smart.Pending) else Phase.CLONE_SCHEDULED
            again = 5.0 if waiting.reason in (Reason.CLONE_SOURCE_IN_USE, Reason.SMART_CLONE_SOURCE_IN_USE) else None
            kind = EventType.WARNING if again else EventType.NORMAL
            return Wait(phase, waiting.reason, waiting.message, kind, again)

    def _execute(self, ctx: Context, dv: Body, spec: Body, source: CloneSource, source_body: Body,
                 plan: Plan) -> Claim:
        annotations = _claim_annotations(ctx, dv, plan)
        if plan.strategy is Strategy.COPY:
            copied = source if source.kind is SourceKind.PVC else _restored_for_copy(ctx, dv, source, spec)
            annotations[ann.CLONE_REQUEST] = str(copied)
            return Claim(spec, annotations)
        if source.kind is SourceKind.SNAPSHOT:
            name = smart.snapshot_in_target_namespace(ctx, dv, source_body, Phase.CLONE_FROM_SNAPSHOT_SOURCE_IN_PROGRESS)
            return Claim(smart.restore_from(spec, name), annotations)
        if ctx.cache.get(res.VOLUMESNAPSHOT, source.namespace, smart.temp_name(dv)) is None:
            _ensure_unused(ctx, source)  # a live pod list: only until the storage has taken its copy
        if plan.strategy is Strategy.CSI_CLONE:
            return Claim(smart.clone_of(spec, source), annotations)
        snapshot = smart.source_snapshot(ctx, dv, source, plan.snapshot_class)
        name = smart.snapshot_in_target_namespace(ctx, dv, snapshot, Phase.SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS)
        return Claim(smart.restore_from(spec, name), annotations)

    # -- once the target exists -------------------------------------------------------------

    def follow(self, ctx: Context, dv: Body, pvc: Body) -> tuple[Phase, Event] | None:
        annotations: dict[str, str] = pvc["metadata"].get("annotations") or {}
        name = pvc["metadata"]["name"]
        if annotations.get(ann.CLONE_TYPE, Strategy.COPY.value) != Strategy.COPY.value:
            return _follow_smart(ctx, dv, pvc, annotations.get(ann.CLONE_TYPE, ""))
        if annotations.get(ann.FATAL_ERROR) == "true":
            why = annotations.get(ann.SOURCE_RUNNING_CONDITION_MESSAGE) or annotations.get(
                ann.RUNNING_CONDITION_MESSAGE, "")
            return Phase.FAILED, Event(EventType.WARNING, Reason.CLONE_FAILED, f"Clone into {name} failed: {why}")
        if annotations.get(ann.POD_PHASE) == "Succeeded" or annotations.get(ann.CLONE_PHASE) == Phase.SUCCEEDED.value:
            _remove_restored_copy_source(ctx, dv)
            return Phase.SUCCEEDED, Event(EventType.NORMAL, Reason.CLONE_SUCCEEDED, f"Successfully cloned into {name}")
        if annotations.get(ann.CLONE_PHASE) == Phase.CLONE_IN_PROGRESS.value:
            return Phase.CLONE_IN_PROGRESS, Event(EventType.NORMAL, Reason.CLONE_IN_PROGRESS,
                                                  f"Cloning into {name} in progress")
        reason = annotations.get(ann.SOURCE_RUNNING_CONDITION_REASON, "")
        if reason == Reason.CLONE_SOURCE_IN_USE:
            return Phase.CLONE_SCHEDULED, Event(EventType.WARNING, Reason.CLONE_SOURCE_IN_USE,
                                                annotations.get(ann.SOURCE_RUNNING_CONDITION_MESSAGE, ""))
        if annotations.get(ann.CLONE_PHASE) or ann.UPLOAD_POD_NAME in annotations:
            return Phase.CLONE_SCHEDULED, Event(EventType.NORMAL, Reason.CLONE_SCHEDULED, f"Cloning into {name} scheduled")
        return None

    def running_annotations(self, annotations: dict[str, str]) -> dict[str, str]:
        """A clone's Running condition is its source side's (the cloner pod), as CDI's."""
        if annotations.get(ann.CLONE_TYPE, Strategy.COPY.value) != Strategy.COPY.value:
            return {}
        out = dict(annotations)
        for key, source_key in ((ann.RUNNING_CONDITION, ann.SOURCE_RUNNING_CONDITION),
                                (ann.RUNNING_CONDITION_MESSAGE, ann.SOURCE_RUNNING_CONDITION_MESSAGE),
                                (ann.RUNNING_CONDITION_REASON, ann.SOURCE_RUNNING_CONDITION_REASON)):
            out[key] = annotations.get(source_key, "")
        return out

    def progress_pod(self, pvc: Body) -> tuple[str, str] | None:
        namespace, _, name = ((pvc["metadata"].get("annotations") or {}).get(ann.CLONE_SOURCE_POD) or "").partition("/")
        return (namespace, name) if namespace and name else None


def _through_data_source(dv: Body, message: str) -> str:
    """A DataVolume cloning through ``sourceRef`` names the DataSource it waits for."""
    ref = (dv.get("spec") or {}).get("sourceRef") or {}
    if not ref:
        return message
    namespace = ref.get("namespace") or dv["metadata"]["namespace"]
    return f"DataSource {namespace}/{ref.get('name')} is not ready: {message}"


def _ensure_unused(ctx: Context, source: CloneSource) -> None:
    try:
        ensure_unused(ctx.kube, source)
    except NotReady as busy:
        raise NotReady(Reason.SMART_CLONE_SOURCE_IN_USE, busy.message) from None


def _claim_annotations(ctx: Context, dv: Body, plan: Plan) -> dict[str, str]:
    spec = dv.get("spec") or {}
    preallocation = spec.get("preallocation")
    out = {ann.CLONE_TYPE: plan.strategy.value,
           ann.CONTENT_TYPE: spec.get("contentType") or "kubevirt",
           ann.PREALLOCATION_REQUESTED: str(ctx.config().preallocation if preallocation is None
                                            else bool(preallocation)).lower()}
    token = (dv["metadata"].get("annotations") or {}).get(ann.EXTENDED_CLONE_TOKEN)
    if token:
        out[ann.EXTENDED_CLONE_TOKEN] = token
    if plan.fallback is not None:
        out[ann.CLONE_FALLBACK_REASON] = plan.fallback.value
    return out


def _requested(spec: Body) -> int | None:
    value = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    return None if value is None else parse_quantity(str(value))


def _source_size(source: CloneSource, source_body: Body) -> int:
    if source.kind is SourceKind.SNAPSHOT:
        restore = (source_body.get("status") or {}).get("restoreSize")
        return parse_quantity(str(restore)) if restore else 0
    return claim_size(source_body)


def _sized(ctx: Context, dv: Body, spec: Body, source: CloneSource, source_body: Body) -> Body:
    """The target's size: what was asked (at least the source's, unless ``permissiveClone``), or,
    with ``storage`` and no size, the source's, inflated for a Filesystem target of a Block source."""
    source_size = _source_size(source, source_body)
    requested = _requested(spec)
    if requested is None:
        size = source_size
        if spec.get("volumeMode", FILESYSTEM) == FILESYSTEM and source.kind is SourceKind.PVC and \
                (source_body.get("spec") or {}).get("volumeMode") == "Block":
            size = required_space(ctx.config().overhead_for(spec.get("storageClassName")), size)
        return _with_size(spec, size)
    if requested < source_size and not _permissive(dv) and not _image_may_fit(spec, source, source_body):
        raise PermanentError(Reason.CLONE_VALIDATION_FAILED, SMALLER_THAN_SOURCE)
    return spec


def _permissive(dv: Body) -> bool:
    return (dv["metadata"].get("annotations") or {}).get(ann.PERMISSIVE_CLONE) == "true"


def _image_may_fit(spec: Body, source: CloneSource, source_body: Body) -> bool:
    """A Block target smaller than a Filesystem source PVC may still hold its ``disk.img`` (the
    PVC's size counts the filesystem's overhead): the image's size decides, as in CDI."""
    return spec.get("volumeMode") == "Block" and source.kind is SourceKind.PVC and size_detection.applies(source_body)


def _sized_from_image(ctx: Context, dv: Body, spec: Body, asked: int | None, source: CloneSource,
                      source_body: Body) -> Body:
    """A copy from a Filesystem source: with no size asked, the target holds the source's image
    (its virtual size, plus the target filesystem's overhead) rather than the source PVC's size;
    a Block target asked smaller than the source PVC must hold at least the image."""
    if source.kind is not SourceKind.PVC or not size_detection.applies(source_body):
        return spec
    block = spec.get("volumeMode") == "Block"
    if asked is None:
        image = size_detection.virtual_size(ctx, source_body)
        size = image if block else required_space(ctx.config().overhead_for(spec.get("storageClassName")), image)
        return _with_size(spec, size)
    if asked < _source_size(source, source_body) and not _permissive(dv) and \
            asked < size_detection.virtual_size(ctx, source_body):
        raise PermanentError(Reason.CLONE_VALIDATION_FAILED, SMALLER_THAN_SOURCE)
    return spec


def _with_size(spec: Body, size: int) -> Body:
    out = dict(spec)
    requests = {**((spec.get("resources") or {}).get("requests") or {}), "storage": format_quantity(size)}
    out["resources"] = {**(spec.get("resources") or {}), "requests": requests}
    return out


def _volume(ctx: Context, spec: Body, size: int) -> Volume:
    class_name = spec.get("storageClassName")
    storage_class = ctx.cache.get(res.STORAGECLASS, "", class_name) if class_name else None
    return Volume(provisioner=str((storage_class or {}).get("provisioner") or ""),
                  volume_mode=str(spec.get("volumeMode") or FILESYSTEM), size=size,
                  allow_expansion=bool((storage_class or {}).get("allowVolumeExpansion")))


def _plan(ctx: Context, dv: Body, source: CloneSource, source_body: Body, spec: Body) -> Plan:
    target = _volume(ctx, spec, _requested(spec) or 0)
    if source.kind is SourceKind.SNAPSHOT:
        driver = _snapshot_driver(ctx, source_body)
        return planner.plan_snapshot_clone(driver, _source_size(source, source_body), target)
    profile = ctx.cache.get(res.STORAGEPROFILE, "", str(spec.get("storageClassName") or ""))
    cdis = ctx.cache.list(res.CDI)
    wanted = planner.wanted_strategy(cdis[0] if cdis else None, profile)
    if wanted is Strategy.CSI_CLONE and source.namespace != dv["metadata"]["namespace"]:
        wanted = Strategy.SNAPSHOT  # a PVC dataSource must be in the claim's namespace
    source_spec = source_body.get("spec") or {}
    source_volume = _volume(ctx, {"storageClassName": source_spec.get("storageClassName"),
                                  "volumeMode": source_spec.get("volumeMode")}, claim_size(source_body))
    return planner.plan_pvc_clone(wanted, source_volume, target, ctx.cache.list(res.VOLUMESNAPSHOTCLASS),
                                  str(((profile or {}).get("status") or {}).get("snapshotClass") or ""))


def _snapshot_driver(ctx: Context, snapshot: Body) -> str:
    class_name = (snapshot.get("spec") or {}).get("volumeSnapshotClassName")
    snapshot_class = ctx.cache.get(res.VOLUMESNAPSHOTCLASS, "", class_name) if class_name else None
    return str((snapshot_class or {}).get("driver") or "")


def _recorded_plan(ctx: Context, dv: Body, source: CloneSource, source_body: Body, spec: Body) -> Plan:
    """Plan once and record it on the DataVolume, so later passes (and users) see one strategy."""
    annotations = dv["metadata"].get("annotations") or {}
    recorded = annotations.get(ann.CLONE_TYPE)
    if recorded in {s.value for s in Strategy}:
        snapshot_class = ""
        if recorded == Strategy.SNAPSHOT.value and source.kind is SourceKind.PVC:
            snapshot_class = _plan(ctx, dv, source, source_body, spec).snapshot_class
        fallback = annotations.get(ann.CLONE_FALLBACK_REASON)
        return Plan(Strategy(recorded), snapshot_class,
                    planner.Fallback(fallback) if fallback in {f.value for f in planner.Fallback} else None)
    plan = _plan(ctx, dv, source, source_body, spec)
    patch = {ann.CLONE_TYPE: plan.strategy.value}
    if plan.fallback is not None:
        patch[ann.CLONE_FALLBACK_REASON] = plan.fallback.value
        ctx.kube.event(dv, "DataVolume", EventType.WARNING, plan.fallback.value,
                       f"Falling back to host-assisted copy: {plan.message}", CloneFlow.component)
    ctx.kube.patch(res.DATAVOLUME, dv["metadata"]["namespace"], dv["metadata"]["name"],
                   {"metadata": {"annotations": patch}})
    log.info("%s/%s: clone of %s by %s%s", dv["metadata"]["namespace"], dv["metadata"]["name"], source,
             plan.strategy.value, f" ({plan.fallback.value})" if plan.fallback else "")
    return plan


# -- a snapshot source copied through a temporary restore --------------------------------------

def _restored_for_copy(ctx: Context, dv: Body, source: CloneSource, spec: Body) -> CloneSource:
    """A PVC restored from the snapshot in its namespace, bound and ready to be copied."""
    name = smart.temp_name(dv)
    restored = ctx.cache.get(res.PVC, source.namespace, name)
    if restored is None:
        claim_spec = smart.restore_from({k: v for k, v in spec.items() if k in ("accessModes", "resources")},
                                        source.name)
        snapshot = ctx.cache.get(res.VOLUMESNAPSHOT, source.namespace, source.name) or {}
        driver_class = _class_for_driver(ctx, _snapshot_driver(ctx, snapshot))
        if driver_class:
            claim_spec["storageClassName"] = driver_class
        claim_spec["resources"] = {"requests": {"storage": format_quantity(_source_size(source, snapshot))}}
        body: Body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": source.namespace, "labels": {ann.APP_LABEL: ann.APP},
                             "annotations": {ann.CLONE_FOR_DATAVOLUME: f"{dv['metadata']['namespace']}/"
                                                                       f"{dv['metadata']['name']}",
                                             ann.BIND_IMMEDIATE: ""}},
                "spec": claim_spec}
        restored = ctx.kube.create(res.PVC, body) or body
    if (restored.get("status") or {}).get("phase") != "Bound":
        raise smart.Pending(Phase.CLONE_FROM_SNAPSHOT_SOURCE_IN_PROGRESS, Reason.CLONE_FROM_SNAPSHOT_SOURCE_IN_PROGRESS,
                            f"Restoring snapshot {source} into a temporary PVC to copy from")
    return CloneSource(SourceKind.PVC, source.namespace, name)


def _class_for_driver(ctx: Context, driver: str) -> str:
    names = sorted(c["metadata"]["name"] for c in ctx.cache.list(res.STORAGECLASS) if c.get("provisioner") == driver)
    return names[0] if names else ""


def _remove_restored_copy_source(ctx: Context, dv: Body) -> None:
    try:
        source = clone_source(dv, ctx.cache)
    except Unresolved:
        return
    if source.kind is SourceKind.SNAPSHOT and ctx.cache.get(res.PVC, source.namespace, smart.temp_name(dv)):
        ctx.kube.delete(res.PVC, source.namespace, smart.temp_name(dv))


def _follow_smart(ctx: Context, dv: Body, pvc: Body, strategy: str) -> tuple[Phase, Event] | None:
    name = pvc["metadata"]["name"]
    if (pvc.get("status") or {}).get("phase") != "Bound":
        phase = Phase.CSI_CLONE_IN_PROGRESS if strategy == Strategy.CSI_CLONE.value \
            else Phase.SMART_CLONE_PVC_IN_PROGRESS
        return phase, Event(EventType.NORMAL, str(phase), f"Cloning into {name} by {strategy}")
    try:
        source = clone_source(dv, ctx.cache)
    except Unresolved:
        source = None
    if source is not None and strategy == Strategy.SNAPSHOT.value:
        smart.cleanup(ctx, dv, source.namespace)
    return Phase.SUCCEEDED, Event(EventType.NORMAL, Reason.CLONE_SUCCEEDED, f"Successfully cloned into {name}")
