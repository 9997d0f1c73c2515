"""CDIConfig resolution: what CDI's config controller computes from ``CDIConfig.spec``.

CDI's controller never reads the spec directly when it works: the config controller first
resolves it into ``CDIConfig.status`` (defaults filled in, invalid values dropped, one filesystem
overhead per *existing* StorageClass), and every other controller reads the status. We keep the
same split: :func:`resolve_config` turns the spec and the StorageClasses into a frozen
:class:`ControllerConfig` the DataVolume controller passes around, and :func:`config_status`
writes it back as the status JSON, so ``kubectl get cdiconfig config -o yaml`` reads as on CDI.

Pure functions of plain JSON dicts (the shapes the apiserver returns), no API calls.

Decisions that differ from CDI on purpose:

* an invalid per-class overhead makes CDI's reconcile fail (the whole status stays stale); here
  that one class falls back to the global overhead and the rest is still resolved;
* the upload proxy URL only comes from ``uploadProxyURLOverride`` (CDI also looks at Ingresses
  and OpenShift Routes, which this project does not create).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

DEFAULT_OVERHEAD = "0.06"
"""CDI's ``common.DefaultGlobalOverhead``: 6 % of a Filesystem volume is kept for the filesystem."""

_OVERHEAD = re.compile(r"^(0(?:\.\d{1,3})?|1)$")
"""CDI's ``validOverhead`` regex (also the CRD pattern of ``Percent``): 0, 1 or 0.x with 1-3 digits."""

DEFAULT_POD_RESOURCES: dict[str, dict[str, str]] = {
    "limits": {"cpu": "750m", "memory": "600M"},
    "requests": {"cpu": "100m", "memory": "60M"},
}
"""CDI's defaults for worker pods (``config-controller.go``); spec values override per key."""

_POD_RESOURCE_KEYS = ("cpu", "memory")
"""The only resources CDI takes from ``podResourceRequirements``; others are ignored."""

_EMPTY_PROXY = {"HTTPProxy": "", "HTTPSProxy": "", "noProxy": "", "trustedCAProxy": ""}
"""What CDI writes to ``status.importProxy`` when no proxy is configured (off OpenShift)."""


@dataclass(frozen=True)
class ControllerConfig:
    """The resolved CDIConfig: everything the DataVolume controller needs from it."""

    filesystem_overhead_global: str
    """Fraction of a Filesystem volume reserved for the filesystem, e.g. ``"0.06"``."""
    filesystem_overhead_by_class: dict[str, str]
    """One entry per existing StorageClass: its override, else the global value."""
    preallocation: bool
    """Default for DataVolumes that don't say ``spec.preallocation``."""
    pod_resources: dict[str, Any]
    """``ResourceRequirements`` JSON for worker pods."""
    insecure_registries: list[str]
    """``host[:port]`` of registries whose TLS is not verified."""
    import_proxy: dict[str, Any] | None
    """``importProxy`` as configured (HTTPProxy, HTTPSProxy, noProxy, trustedCAProxy), or None."""
    scratch_storage_class: str | None
    """``scratchSpaceStorageClass`` if that class exists; None means: use the target PVC's class."""
    upload_proxy_url: str | None
    """``uploadProxyURLOverride``, the URL virtctl uploads to."""
    image_pull_secrets: list[dict[str, Any]]
    """``LocalObjectReference`` JSON of the pull secrets for worker pod images."""
    feature_gates: tuple[str, ...] = ()
    """``featureGates`` (e.g. ``DataVolumeClaimAdoption``)."""

    def overhead_for(self, storage_class: str | None) -> str:
        """The overhead for volumes of ``storage_class``: its own entry, else the global one."""
        if storage_class is None:
            return self.filesystem_overhead_global
        return self.filesystem_overhead_by_class.get(storage_class, self.filesystem_overhead_global)


def valid_overhead(value: object) -> TypeGuard[str]:
    """Whether ``value`` is an overhead CDI accepts (a string matching CDI's regex)."""
    return isinstance(value, str) and _OVERHEAD.match(value) is not None


def resolve_config(cdiconfig: dict[str, Any] | None, storage_classes: list[dict[str, Any]]) -> ControllerConfig:
    """Resolve a CDIConfig object (or None: all defaults) against the existing StorageClasses."""
    spec: dict[str, Any] = (cdiconfig or {}).get("spec") or {}
    class_names = [_name(sc) for sc in storage_classes]
    overhead = spec.get("filesystemOverhead") or {}
    global_overhead = _global_overhead(overhead)
    return ControllerConfig(
        filesystem_overhead_global=global_overhead,
        filesystem_overhead_by_class=_class_overheads(overhead, class_names, global_overhead),
        preallocation=spec.get("preallocation") is True,
        pod_resources=_pod_resources(spec.get("podResourceRequirements")),
        insecure_registries=list(spec.get("insecureRegistries") or []),
        import_proxy=copy.deepcopy(spec["importProxy"]) if spec.get("importProxy") else None,
        scratch_storage_class=_scratch_class(spec.get("scratchSpaceStorageClass"), class_names),
        upload_proxy_url=spec.get("uploadProxyURLOverride") or None,
        image_pull_secrets=copy.deepcopy(list(spec.get("imagePullSecrets") or [])),
        feature_gates=tuple(str(g) for g in spec.get("featureGates") or []),
    )


def config_status(config: ControllerConfig, default_upload_proxy_url: str = "") -> dict[str, Any]:
    """The ``CDIConfig.status`` JSON, field for field as CDI's config controller writes it.

    ``uploadProxyURL`` is the spec's override, else where this installation exposes its upload
    proxy (CDI reads it from the proxy's Ingress or Route; we are told at start-up).

    Unset optional fields are omitted (Go's ``omitempty``); ``importProxy`` is always present,
    with empty strings when no proxy is configured, because CDI's importer env code expects it.
    """
    status: dict[str, Any] = {
        "filesystemOverhead": {"global": config.filesystem_overhead_global,
                               "storageClass": dict(config.filesystem_overhead_by_class)},
        "defaultPodResourceRequirements": copy.deepcopy(config.pod_resources),
        "preallocation": config.preallocation,
        "importProxy": copy.deepcopy(config.import_proxy) if config.import_proxy else dict(_EMPTY_PROXY),
    }
    if config.scratch_storage_class:
        status["scratchSpaceStorageClass"] = config.scratch_storage_class
    if config.upload_proxy_url or default_upload_proxy_url:
        status["uploadProxyURL"] = config.upload_proxy_url or default_upload_proxy_url
    if config.image_pull_secrets:
        status["imagePullSecrets"] = copy.deepcopy(config.image_pull_secrets)
    return status


def _name(obj: dict[str, Any]) -> str:
    """``metadata.name`` of an object ('' if it has none)."""
    return str((obj.get("metadata") or {}).get("name") or "")


def _global_overhead(overhead: dict[str, Any]) -> str:
    """The spec's global overhead if CDI would accept it, else the default (as CDI does)."""
    value = overhead.get("global")
    return value if valid_overhead(value) else DEFAULT_OVERHEAD


def _class_overheads(overhead: dict[str, Any], class_names: list[str], global_overhead: str) -> dict[str, str]:
    """One overhead per existing class; classes named in the spec but absent are dropped."""
    per_class: dict[str, Any] = overhead.get("storageClass") or {}
    resolved: dict[str, str] = {}
    for name in class_names:
        value = per_class.get(name)
        resolved[name] = value if valid_overhead(value) else global_overhead
    return resolved


def _pod_resources(spec_resources: dict[str, Any] | None) -> dict[str, Any]:
    """CDI's default worker-pod resources with the spec's cpu/memory limits and requests on top."""
    resources = copy.deepcopy(DEFAULT_POD_RESOURCES)
    for section in ("limits", "requests"):
        given = (spec_resources or {}).get(section) or {}
        for key in _POD_RESOURCE_KEYS:
            if key in given:
                resources[section][key] = str(given[key])
    return resources


def _scratch_class(wanted: str | None, class_names: list[str]) -> str | None:
    """The configured scratch class if it exists; otherwise scratch PVCs inherit the target's."""
    return wanted if wanted and wanted in class_names else None
