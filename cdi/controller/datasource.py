"""The DataSource controller: resolve what a DataSource names and say whether it can be cloned.

A DataSource points at a PVC, a VolumeSnapshot, or one more DataSource in its namespace (CDI's
chain depth of one). ``status.source`` is what it resolves to, and condition ``Ready`` is True
only when that source exists and holds its data (a PVC whose DataVolume has Succeeded, a
snapshot that is ready to use). Otherwise Ready is False with a reason and a message that say
what is missing (CDI's users meet "DataSource never becomes ready" with no reason at all).
DataVolumes that clone through ``sourceRef`` read the same resolution (:mod:`.clone.source`).
"""

from __future__ import annotations

import copy
from typing import Any

from . import conditions
from . import resources as res
from .clone.readiness import NotReady, source_object
from .clone.source import CloneSource, SourceKind, Unresolved, resolve_data_source
from .context import Context
from .phases import Reason

Body = dict[str, Any]
READY = "Ready"
NOT_FOUND = "NotFound"
NOT_READY = "NotReady"


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    data_source = ctx.cache.get(res.DATASOURCE, namespace, name)
    if data_source is None or data_source["metadata"].get("deletionTimestamp"):
        return None
    before: Body = copy.deepcopy(data_source.get("status") or {})
    status = copy.deepcopy(before)
    status.setdefault("conditions", [])
    try:
        source = resolve_data_source(ctx.cache, namespace, name)
    except Unresolved as error:
        status.pop("source", None)
        conditions.update(status["conditions"], READY, "False", error.message, error.reason)
    else:
        status["source"] = _status_source(source)
        ready, reason, message = _readiness(ctx, source)
        conditions.update(status["conditions"], READY, ready, message, reason)
    if status != before:
        ctx.kube.patch(res.DATASOURCE, namespace, name, {"status": status})
    return None


def _status_source(source: CloneSource) -> Body:
    key = "pvc" if source.kind is SourceKind.PVC else "snapshot"
    return {key: {"namespace": source.namespace, "name": source.name}}


def _readiness(ctx: Context, source: CloneSource) -> tuple[str, str, str]:
    try:
        source_object(ctx.cache, source)
    except NotReady as waiting:
        reason = NOT_FOUND if waiting.reason == Reason.CLONE_WITHOUT_SOURCE else NOT_READY
        return "False", reason, waiting.message
    what = "PVC" if source.kind is SourceKind.PVC else "VolumeSnapshot"
    return "True", READY, f"{what} {source} is ready to be cloned"
