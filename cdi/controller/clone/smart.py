"""Smart clones: let the storage copy the volume (a snapshot and a restore, or a CSI clone).

``snapshot`` strategy, as CDI runs it, with one difference in how the snapshot crosses
namespaces:

1. a VolumeSnapshot ``cdi-tmp-<DataVolume UID>`` of the source PVC, in the source namespace,
   with the planned VolumeSnapshotClass (phase SnapshotForSmartCloneInProgress);
2. when the target is in another namespace, the snapshot is made visible there the way
   Kubernetes documents for pre-provisioned snapshots: a VolumeSnapshotContent with the same
   ``snapshotHandle`` and ``deletionPolicy: Retain`` bound to a VolumeSnapshot of the same name
   in the target namespace (CDI instead restores in the source namespace and moves the PV over
   with an ObjectTransfer; ours needs no PV rebinding and leaves no window where the volume
   belongs to no claim);
3. the target PVC is created with that snapshot as its ``dataSource`` (the provisioner
   restores it, at the requested size, which must be at least the snapshot's restore size);
4. once the target is Bound the temporary snapshots go: the target namespace's first (its
   content is retained), then the imported content, then the source namespace's.

``csi-clone``: the target PVC's ``dataSource`` is the source PVC itself (same namespace only, as
Kubernetes requires; the planner never picks it across namespaces).
"""

from __future__ import annotations

import logging
from typing import Any

from .. import annotations as ann
from .. import resources as res
from ..context import Context
from ..errors import Explained
from ..phases import Phase, Reason
from .source import CloneSource

log = logging.getLogger("cdi.controller.smartclone")

Body = dict[str, Any]


class Pending(Explained):
    """A temporary object is not ready yet: the DataVolume shows ``phase`` and waits for its watch."""

    def __init__(self, phase: Phase, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.phase = phase


def temp_name(dv: Body) -> str:
    return f"cdi-tmp-{dv['metadata']['uid']}"


def _dv_reference(dv: Body) -> str:
    return f"{dv['metadata']['namespace']}/{dv['metadata']['name']}"


def _meta(dv: Body, namespace: str = "") -> Body:
    meta: Body = {"name": temp_name(dv), "labels": {ann.APP_LABEL: ann.APP},
                  "annotations": {ann.CLONE_FOR_DATAVOLUME: _dv_reference(dv)}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _ready(snapshot: Body) -> bool:
    return bool((snapshot.get("status") or {}).get("readyToUse"))


def _error(snapshot: Body) -> str:
    return str(((snapshot.get("status") or {}).get("error") or {}).get("message") or "")


def source_snapshot(ctx: Context, dv: Body, source: CloneSource, snapshot_class: str) -> Body:
    """Step 1: the ready VolumeSnapshot of the source PVC (made if missing)."""
    snapshot = ctx.cache.get(res.VOLUMESNAPSHOT, source.namespace, temp_name(dv))
    if snapshot is None:
        body = {"apiVersion": res.VOLUMESNAPSHOT.api_version, "kind": "VolumeSnapshot",
                "metadata": _meta(dv, source.namespace),
                "spec": {"volumeSnapshotClassName": snapshot_class,
                         "source": {"persistentVolumeClaimName": source.name}}}
        snapshot = ctx.kube.create(res.VOLUMESNAPSHOT, body) or body
        log.info("%s: snapshotting %s for a smart clone", _dv_reference(dv), source)
    if not _ready(snapshot):
        raise Pending(Phase.SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS, Reason.SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS,
                      _error(snapshot) or f"Creating snapshot of {source} for a smart clone")
    return snapshot


def snapshot_in_target_namespace(ctx: Context, dv: Body, snapshot: Body, phase: Phase) -> str:
    """Step 2: the name of a ready snapshot of the same data in the DataVolume's namespace."""
    namespace = dv["metadata"]["namespace"]
    if snapshot["metadata"]["namespace"] == namespace:
        return str(snapshot["metadata"]["name"])
    imported = ctx.cache.get(res.VOLUMESNAPSHOT, namespace, temp_name(dv))
    if imported is None:
        content = _content_of(ctx, snapshot, phase)
        ctx.kube.create(res.VOLUMESNAPSHOTCONTENT, _imported_content(dv, content))
        body = {"apiVersion": res.VOLUMESNAPSHOT.api_version, "kind": "VolumeSnapshot",
                "metadata": _meta(dv, namespace),
                "spec": {"source": {"volumeSnapshotContentName": temp_name(dv)}}}
        imported = ctx.kube.create(res.VOLUMESNAPSHOT, body) or body
    if not _ready(imported):
        raise Pending(phase, str(phase), _error(imported) or "Making the snapshot available in the target namespace")
    return temp_name(dv)


def _content_of(ctx: Context, snapshot: Body, phase: Phase) -> Body:
    name = (snapshot.get("status") or {}).get("boundVolumeSnapshotContentName")
    content = ctx.kube.get(res.VOLUMESNAPSHOTCONTENT, "", name) if name else None
    if content is None or not (content.get("status") or {}).get("snapshotHandle"):
        raise Pending(phase, str(phase), "waiting for the snapshot's content to have a handle")
    return content


def _imported_content(dv: Body, content: Body) -> Body:
    spec = content.get("spec") or {}
    return {"apiVersion": res.VOLUMESNAPSHOTCONTENT.api_version, "kind": "VolumeSnapshotContent",
            "metadata": _meta(dv),
            "spec": {"deletionPolicy": "Retain", "driver": spec.get("driver"),
                     "source": {"snapshotHandle": (content.get("status") or {}).get("snapshotHandle")},
                     "volumeSnapshotClassName": spec.get("volumeSnapshotClassName"),
                     "volumeSnapshotRef": {"namespace": dv["metadata"]["namespace"], "name": temp_name(dv)}}}


def restore_from(spec: Body, snapshot_name: str) -> Body:
    out = dict(spec)
    out["dataSource"] = {"apiGroup": res.SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": snapshot_name}
    return out


def clone_of(spec: Body, source: CloneSource) -> Body:
    out = dict(spec)
    out["dataSource"] = {"kind": "PersistentVolumeClaim", "name": source.name}
    return out


def cleanup(ctx: Context, dv: Body, source_namespace: str) -> None:
    """Step 4: remove the temporary snapshots (idempotent; what is gone is fine)."""
    name, namespace = temp_name(dv), dv["metadata"]["namespace"]
    if namespace != source_namespace:
        if ctx.cache.get(res.VOLUMESNAPSHOT, namespace, name) is not None:
            ctx.kube.delete(res.VOLUMESNAPSHOT, namespace, name)
        ctx.kube.delete(res.VOLUMESNAPSHOTCONTENT, "", name)
    if ctx.cache.get(res.VOLUMESNAPSHOT, source_namespace, name) is not None:
        ctx.kube.delete(res.VOLUMESNAPSHOT, source_namespace, name)
