"""The cluster-scoped bookkeeping CDI's controller does besides DataVolumes:

* one StorageProfile per StorageClass (created when the class appears; its ``status`` says
  which access and volume modes PVC rendering will pick; users tune it through ``spec``);
* the singleton CDIConfig ``config``: created if missing, its ``status`` resolved from its
  ``spec`` and the StorageClasses (filesystem overhead per class, pod resources, ...).
"""

from __future__ import annotations

from typing import Any

from . import resources as res
from ..api.v1beta1 import API_VERSION
from .clone.planner import snapshot_class_for
from .config import config_status
from .context import CONFIG_NAME, Context
from .storage import storage_profile


def reconcile_profile(ctx: Context, _namespace: str, class_name: str) -> float | None:
    storage_class = ctx.cache.get(res.STORAGECLASS, "", class_name)
    existing = ctx.cache.get(res.STORAGEPROFILE, "", class_name)
    if storage_class is None:
        return None  # the profile is owned by the class and goes with it
    snapshot_class = snapshot_class_for(str(storage_class.get("provisioner") or ""),
                                        ctx.cache.list(res.VOLUMESNAPSHOTCLASS))
    desired = storage_profile(storage_class, existing, snapshot_class=snapshot_class)
    if existing is None:
        body = {k: v for k, v in desired.items() if k != "status"}
        existing = ctx.kube.create(res.STORAGEPROFILE, body)
        if existing is None:
            return 1.0  # the cache has not seen it yet
    if existing.get("status") != desired.get("status"):
        ctx.kube.patch_status(res.STORAGEPROFILE, "", class_name, desired.get("status") or {})
    return None


def reconcile_config(ctx: Context, _namespace: str, name: str) -> float | None:
    if name != CONFIG_NAME:
        return None
    current = ctx.cache.get(res.CDICONFIG, "", CONFIG_NAME)
    if current is None:
        body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "CDIConfig",
                                "metadata": {"name": CONFIG_NAME}, "spec": {}}
        current = ctx.kube.create(res.CDICONFIG, body)
        if current is None:
            return 1.0
    status = config_status(ctx.config(), default_upload_proxy_url=ctx.upload.proxy_url)
    if current.get("status") != status:  # CDIConfig has no status subresource, as in CDI
        ctx.kube.patch(res.CDICONFIG, "", CONFIG_NAME, {"status": status})
    return None
