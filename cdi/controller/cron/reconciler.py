"""The DataImportCron reconciler: poll on schedule, import new versions, repoint the DataSource.

One pass:

1. if a poll is due (:mod:`.schedule`), read the source's digest (:mod:`.poll`); a new digest
   makes a new import DataVolume (:mod:`.imports`) and becomes ``currentImports``; a failed poll
   sets ``UpToDate=False`` with its reason and changes nothing else;
2. follow the current import: while it runs ``Progressing=True``; once it has Succeeded the
   managed DataSource points at its PVC, ``lastImportedPVC`` and ``lastImportTimestamp`` move,
   ``UpToDate=True``, and outdated imports are collected; a failed import sets
   ``UpToDate=False`` (reason ``ImportFailed``) and the DataSource keeps the last good one;
3. look again when the schedule next fires (DataVolume events wake it sooner).

The clock is the context's (:attr:`~..context.Context.clock`), so tests can move time.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .. import conditions
from .. import resources as res
from ..context import Context
from ..phases import Phase
from . import imports, schedule
from .poll import POLL_FAILURES, PollFailed, current_version

log = logging.getLogger("cdi.controller.cron")

Body = dict[str, Any]
LAST_CRON_TIME = "cdi.kubevirt.io/storage.import.lastCronTime"
UP_TO_DATE, PROGRESSING = "UpToDate", "Progressing"


def reconcile(ctx: Context, namespace: str, name: str) -> float | None:
    cron = ctx.cache.get(res.DATAIMPORTCRON, namespace, name)
    if cron is None or cron["metadata"].get("deletionTimestamp"):
        return None
    before: Body = copy.deepcopy(cron.get("status") or {})
    status = copy.deepcopy(before)
    status.setdefault("conditions", [])
    again = _poll_if_due(ctx, cron, status)
    _follow_current(ctx, cron, status)
    if status != before:
        ctx.kube.patch(res.DATAIMPORTCRON, namespace, name, {"status": status})
    return again


def _poll_if_due(ctx: Context, cron: Body, status: Body) -> float | None:
    spec = cron.get("spec") or {}
    now = ctx.clock()
    requested = schedule.parse_time((cron["metadata"].get("annotations") or {}).get(LAST_CRON_TIME))
    try:
        poll_now, wait = schedule.due(str(spec.get("schedule") or ""), schedule.parse_time(
            status.get("lastExecutionTimestamp")), requested, now)
    except schedule.BadSchedule as error:
        conditions.update(status["conditions"], UP_TO_DATE, "False", str(error), "InvalidSchedule")
        return None
    if not poll_now:
        return wait
    status["lastExecutionTimestamp"] = schedule.format_time(now)
    try:
        version = current_version(spec.get("template") or {}, ctx.config().insecure_registries)
    except PollFailed as failed:
        conditions.update(status["conditions"], UP_TO_DATE, "False", failed.message, failed.reason)
        return wait
    current = (status.get("currentImports") or [{}])[0]
    if current.get("Digest") != version.digest:
        name = imports.create_import(ctx, cron, version)
        status["currentImports"] = [{"DataVolumeName": name, "Digest": version.digest}]
    elif _condition(status, UP_TO_DATE).get("reason") in POLL_FAILURES:  # the source is back
        conditions.update(status["conditions"], UP_TO_DATE, "False", "Source reachable again", "Polled")
    return wait


def _condition(status: Body, kind: str) -> Body:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _follow_current(ctx: Context, cron: Body, status: Body) -> None:
    current = (status.get("currentImports") or [{}])[0]
    name = current.get("DataVolumeName")
    if not name:
        return
    namespace = cron["metadata"]["namespace"]
    conds = status["conditions"]
    snapshot = ctx.cache.get(res.VOLUMESNAPSHOT, namespace, name)
    if snapshot is not None and (snapshot.get("status") or {}).get("readyToUse"):
        _imported(ctx, cron, status, name, {"snapshot": {"namespace": namespace, "name": name}}, "snapshot")
        ctx.kube.delete(res.DATAVOLUME, namespace, name)  # the snapshot is the golden image; its PVC goes
        return
    dv = ctx.cache.get(res.DATAVOLUME, namespace, name)
    phase = ((dv or {}).get("status") or {}).get("phase") or ""
    if phase == Phase.SUCCEEDED.value and dv is not None:
        snapshot_class = _snapshot_format_class(ctx, dv)
        if not snapshot_class:
            _imported(ctx, cron, status, name, {"pvc": {"namespace": namespace, "name": name}}, "pvc")
            return
        if snapshot is None:
            ctx.kube.create(res.VOLUMESNAPSHOT, _golden_snapshot(cron, name, snapshot_class))
        conditions.update(conds, PROGRESSING, "True", f"Snapshotting import {name}", "SnapshotInProgress")
    elif phase == Phase.FAILED.value:
        running: Body = next((c for c in (dv or {}).get("status", {}).get("conditions", [])
                              if c.get("type") == "Running"), {})
        conditions.update(conds, PROGRESSING, "False", "", "ImportFailed")
        conditions.update(conds, UP_TO_DATE, "False", f"Import {name} failed: {running.get('message', '')}",
                          "ImportFailed")
    else:
        conditions.update(conds, PROGRESSING, "True", f"Import {name} is {phase or 'being created'}", phase or "Pending")
        conditions.update(conds, UP_TO_DATE, "False", f"Import {name} in progress", "ImportProgressing")


def _imported(ctx: Context, cron: Body, status: Body, name: str, source: Body, source_format: str) -> None:
    """The current import is the golden image now: the DataSource, the status and the collection follow."""
    namespace, conds = cron["metadata"]["namespace"], status["conditions"]
    conditions.update(conds, PROGRESSING, "False", "No current import", "NoImport")
    if status.get("lastImportedPVC") != {"namespace": namespace, "name": name}:
        status["lastImportedPVC"] = {"namespace": namespace, "name": name}
        status["lastImportTimestamp"] = schedule.format_time(ctx.clock())
    status["sourceFormat"] = source_format
    _point_data_source(ctx, cron, source)
    if _condition(status, UP_TO_DATE).get("reason") not in POLL_FAILURES:  # a failed poll says so until one succeeds
        conditions.update(conds, UP_TO_DATE, "True", "Latest import is up to date", "UpToDate")
    imports.collect_garbage(ctx, cron, {name})


def _snapshot_format_class(ctx: Context, dv: Body) -> str:
    """The VolumeSnapshotClass to keep the golden image in, when the import's StorageProfile says
    ``dataImportCronSourceFormat: snapshot``; else ''."""
    claim = ctx.cache.get(res.PVC, dv["metadata"]["namespace"], dv["metadata"]["name"]) or {}
    class_name = str((claim.get("spec") or {}).get("storageClassName") or "")
    profile = (ctx.cache.get(res.STORAGEPROFILE, "", class_name) or {}).get("status") or {}
    if profile.get("dataImportCronSourceFormat") != "snapshot":
        return ""
    return str(profile.get("snapshotClass") or "")


def _golden_snapshot(cron: Body, name: str, snapshot_class: str) -> Body:
    return {"apiVersion": res.VOLUMESNAPSHOT.api_version, "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": cron["metadata"]["namespace"],
                         "labels": {imports.CRON_LABEL: cron["metadata"]["name"]}},
            "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": name}}}


def _point_data_source(ctx: Context, cron: Body, wanted: Body) -> None:
    meta = cron["metadata"]
    managed = str((cron.get("spec") or {}).get("managedDataSource") or "")
    if not managed:
        return
    existing = ctx.cache.get(res.DATASOURCE, meta["namespace"], managed)
    if existing is None:
        ctx.kube.create(res.DATASOURCE, {
            "apiVersion": res.DATASOURCE.api_version, "kind": "DataSource",
            "metadata": {"name": managed, "namespace": meta["namespace"],
                         "labels": {imports.CRON_LABEL: meta["name"]}},
            "spec": {"source": wanted}})
    elif (existing.get("spec") or {}).get("source") != wanted:
        # a merge patch of ``source`` merges: null the kinds not wanted (a user's, or the other format's)
        source = {"pvc": None, "snapshot": None, "dataSource": None, **wanted}
        ctx.kube.patch(res.DATASOURCE, meta["namespace"], managed, {"spec": {"source": source}})
        log.info("%s/%s: DataSource %s now points at %s", meta["namespace"], meta["name"], managed, wanted)
