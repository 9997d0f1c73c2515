"""The DataVolumes a DataImportCron makes, one per version of its source, and their collection.

Each version is imported into ``<managedDataSource>-<first 12 hex of its digest>`` (CDI's name),
labelled with the cron's name so the cron finds its imports again. They are owned by the cron
only with ``retentionPolicy: None`` (deleting the cron then deletes them); with ``All`` (the
default) they outlive it, as CDI keeps them. ``garbageCollect: Outdated`` (the default) deletes
all but the newest ``importsToKeep`` (default 3), never the one the DataSource points to.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .. import resources as res
from ..context import Context
from .poll import Version

log = logging.getLogger("cdi.controller.cron")

Body = dict[str, Any]
CRON_LABEL = "cdi.kubevirt.io/dataImportCron"
DIGEST_ANNOTATION = "cdi.kubevirt.io/storage.import.sourceDesiredDigest"
DEFAULT_IMPORTS_TO_KEEP = 3


def import_name(cron: Body, digest: str) -> str:
    managed = str((cron.get("spec") or {}).get("managedDataSource") or cron["metadata"]["name"])
    return f"{managed}-{digest.split(':', 1)[-1][:12]}"


def create_import(ctx: Context, cron: Body, version: Version) -> str:
    """The DataVolume importing ``version`` (made unless it exists); its name."""
    meta, spec = cron["metadata"], cron.get("spec") or {}
    template: Body = copy.deepcopy(spec.get("template") or {})
    name = import_name(cron, version.digest)
    if ctx.cache.get(res.DATAVOLUME, meta["namespace"], name) is not None:
        return name
    template_meta = template.get("metadata") or {}
    body: Body = {
        "apiVersion": res.DATAVOLUME.api_version, "kind": "DataVolume",
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {**(template_meta.get("labels") or {}), CRON_LABEL: meta["name"]},
                     "annotations": {**(template_meta.get("annotations") or {}), DIGEST_ANNOTATION: version.digest}},
        "spec": {**(template.get("spec") or {}), "source": version.source},
    }
    if spec.get("retentionPolicy") == "None":
        body["metadata"]["ownerReferences"] = [{"apiVersion": res.DATAIMPORTCRON.api_version, "kind": "DataImportCron",
                                                "name": meta["name"], "uid": meta["uid"], "controller": True,
                                                "blockOwnerDeletion": True}]
    ctx.kube.create(res.DATAVOLUME, body)
    log.info("%s/%s: importing %s into %s", meta["namespace"], meta["name"], version.digest, name)
    return name


def collect_garbage(ctx: Context, cron: Body, keep_names: set[str]) -> list[str]:
    """Delete outdated imports (DataVolumes, or snapshots for the snapshot format) beyond
    ``importsToKeep``; the names deleted."""
    spec = cron.get("spec") or {}
    if spec.get("garbageCollect", "Outdated") != "Outdated":
        return []
    keep = int(spec.get("importsToKeep", DEFAULT_IMPORTS_TO_KEEP))
    return [*_collect(ctx, cron, res.DATAVOLUME, keep, keep_names), *_collect(ctx, cron, res.VOLUMESNAPSHOT, keep,
                                                                             keep_names)]


def _collect(ctx: Context, cron: Body, resource: res.Resource, keep: int, keep_names: set[str]) -> list[str]:
    meta = cron["metadata"]
    mine = [ctx.cache.get(resource, ns, name) for ns, name in ctx.cache.select(
        resource, lambda d: ((d.get("metadata") or {}).get("labels") or {}).get(CRON_LABEL) == meta["name"])
        if ns == meta["namespace"]]
    newest_first = sorted((d for d in mine if d), key=lambda d: str(d["metadata"].get("creationTimestamp") or ""),
                          reverse=True)
    deleted = []
    for index, dv in enumerate(newest_first):
        name = dv["metadata"]["name"]
        if index >= keep and name not in keep_names:
            ctx.kube.delete(resource, meta["namespace"], name)
            deleted.append(name)
    if deleted:
        log.info("%s/%s: garbage-collected %s", meta["namespace"], meta["name"], ", ".join(deleted))
    return deleted
