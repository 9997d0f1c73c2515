"""StorageProfiles and PVC rendering: how a DataVolume's ``storage`` becomes a PVC spec.

A DataVolume may give a full PVC spec (``spec.pvc``, used verbatim with Kubernetes semantics) or
the short ``spec.storage`` form, in which CDI completes what is missing:

1. the StorageClass: the one named, else the default class -- a class marked
   ``storageclass.kubevirt.io/is-default-virt-class`` wins over the Kubernetes default (not for
   ``archive`` content, which is not a VM disk); several defaults -> the newest, as Kubernetes does;
2. access modes and volume mode, from the class's StorageProfile (``status.claimPropertySets``,
   an ordered preference list built from a capabilities table keyed by provisioner, or set by an
   administrator in the profile's spec);
3. the size: raised to the profile's ``cdi.kubevirt.io/minimumSupportedPvcSize``, then, for
   Filesystem volumes only, aligned to 1 MiB and inflated so that the disk image still fits once
   the filesystem has taken its share (CDI's ``GetRequiredSpace``). Block volumes hold the image
   directly and get no inflation.

What cannot be completed raises :class:`RenderError` with CDI's reason and message; the
DataVolume then stays Pending and the user sees why.

Everything here is a pure function of plain JSON dicts. We assume a cluster without
VolumeSnapshotClasses unless told otherwise (``snapshot_capable``), so table entries that advise
snapshot clones fall back to ``copy``, as CDI does when it finds no snapshot class.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime
from typing import Any

from cdi.controller import annotations as ann
from cdi.controller.config import ControllerConfig
from cdi.controller.errors import Explained
from importer.quantity import parse_quantity

JSON = dict[str, Any]

MIB = 1024 * 1024
"""CDI's ``DefaultAlignBlockSize``: a multiple of every known hardware block size."""

CLAIM_NOT_VALID = "ErrClaimNotValid"
"""CDI's event/condition reason for a DataVolume whose PVC cannot be rendered."""

MSG_NO_CLASS = "PVC spec is missing accessMode and no storageClass to choose profile"
MSG_NO_SIZE = "PVC Spec is not valid - missing storage size"
MSG_TOO_SMALL = "PVC Spec is not valid - storage size should be at least 1MiB"
MSG_ARCHIVE_BLOCK = "ContentType Archive cannot have block volumeMode"
MSG_PVC_OR_STORAGE = "datavolume one of {pvc, storage} field is required"

FROM_STORAGE_PROFILE = "FromStorageProfile"
FILESYSTEM = "Filesystem"
BLOCK = "Block"
RWO, ROX, RWX = "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"

CLONE_STRATEGY_ANNOTATION = f"{ann.PREFIX}/clone-strategy"
"""Per-StorageClass clone strategy override (not in ``annotations.py``, defined here)."""

_RBD = [(RWX, BLOCK), (RWO, BLOCK), (RWO, FILESYSTEM)]
_RWO_BOTH = [(RWO, BLOCK), (RWO, FILESYSTEM)]

CAPABILITIES: dict[str, list[tuple[str, str]]] = {
    # a few entries of CDI's pkg/storagecapabilities table, same keys and order of preference
    "kubevirt.io.hostpath-provisioner": [(RWO, FILESYSTEM)],
    "kubevirt.io/hostpath-provisioner": [(RWO, FILESYSTEM)],
    "k8s.io/minikube-hostpath": [(RWO, FILESYSTEM)],
    "nfs.csi.k8s.io": [(RWX, FILESYSTEM)],
    "rbd.csi.ceph.com": _RBD,
    "rook-ceph.rbd.csi.ceph.com": _RBD,
    "openshift-storage.rbd.csi.ceph.com": _RBD,
    "cephfs.csi.ceph.com": [(RWX, FILESYSTEM)],
    "ebs.csi.aws.com": [(RWO, BLOCK)],
    "ebs.csi.aws.com/io1": [(RWO, BLOCK)],
    "ebs.csi.aws.com/io2": [(RWX, BLOCK), (RWO, BLOCK), (RWO, FILESYSTEM)],
    "ebs.csi.aws.com/gp": [(RWO, BLOCK)],
    "disk.csi.azure.com": [(RWO, BLOCK)],
    "file.csi.azure.com": [(RWX, FILESYSTEM)],
    "pd.csi.storage.gke.io": [(RWO, BLOCK)],
    "pd.csi.storage.gke.io/hyperdisk": [(RWX, BLOCK), (RWO, BLOCK), (RWO, FILESYSTEM)],
    "topolvm.io": _RWO_BOTH,
    "cinder.csi.openstack.org": _RWO_BOTH,
    "csi.vsphere.vmware.com": _RWO_BOTH,
    "driver.longhorn.io": [(RWO, BLOCK)],
}
"""(access mode, volume mode) pairs per provisioner key, most preferred first."""

CLONE_STRATEGIES: dict[str, str] = {
    "rook-ceph.rbd.csi.ceph.com": "csi-clone",
    "openshift-storage.rbd.csi.ceph.com": "csi-clone",
    "cephfs.csi.ceph.com": "csi-clone",
    "topolvm.io": "copy",
    "pd.csi.storage.gke.io": "snapshot",
    "pd.csi.storage.gke.io/hyperdisk": "snapshot",
}
SOURCE_FORMATS: dict[str, str] = {
    "rook-ceph.rbd.csi.ceph.com": "snapshot",
    "openshift-storage.rbd.csi.ceph.com": "snapshot",
    "pd.csi.storage.gke.io": "snapshot",
    "pd.csi.storage.gke.io/hyperdisk": "snapshot",
}
MINIMUM_SIZES: dict[str, str] = {
    "pd.csi.storage.gke.io/hyperdisk": "4Gi",
    "ebs.csi.aws.com/io1": "4Gi",
    "ebs.csi.aws.com/io2": "4Gi",
    "ebs.csi.aws.com/gp": "1Gi",
}
_EBS_TYPES = {"io1": "ebs.csi.aws.com/io1", "io2": "ebs.csi.aws.com/io2",
              "gp2": "ebs.csi.aws.com/gp", "gp3": "ebs.csi.aws.com/gp"}
_HYPERDISK_TYPES = ("hyperdisk-balanced", "hyperdisk-balanced-high-availability")
_SI_SUFFIX = {0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}

PROFILE_LABELS = {
    ann.APP_LABEL: ann.APP,
    ann.COMPONENT_LABEL: "",
    "app.kubernetes.io/managed-by": "cdi-controller",
    "app.kubernetes.io/component": "storage",
}
"""Labels CDI puts on every StorageProfile (``MakeEmptyStorageProfileSpec`` + recommended labels)."""


class RenderError(Explained):
    """Why a DataVolume's PVC can't be rendered yet; the DV stays Pending with this reason/message."""



# --- StorageClasses ----------------------------------------------------------------------------

def default_storage_class(storage_classes: list[JSON], *, archive: bool = False) -> JSON | None:
    """The class a claim without ``storageClassName`` gets: virt default, else Kubernetes default.

    ``archive`` content skips the virt default, as CDI does (a tar is not a VM disk).
    """
    keys = [ann.DEFAULT_CLASS] if archive else [ann.DEFAULT_VIRT_CLASS, ann.DEFAULT_CLASS]
    for key in keys:
        marked = [sc for sc in storage_classes if _annotations(sc).get(key) == "true"]
        if marked:
            return min(marked, key=_newest_first)
    return None


def storage_class_named(name: str | None, storage_classes: list[JSON]) -> JSON | None:
    """The class called ``name``, or None when there is no such class."""
    return next((sc for sc in storage_classes if _name(sc) == name), None) if name else None


def _newest_first(sc: JSON) -> tuple[float, str]:
    """Sort key of Kubernetes' default-class choice: newest creationTimestamp, then name."""
    stamp = (sc.get("metadata") or {}).get("creationTimestamp")
    try:
        when = datetime.fromisoformat(str(stamp)).timestamp() if stamp else -math.inf
    except ValueError:
        when = -math.inf
    return (-when, _name(sc))


def provisioner_key(storage_class: JSON) -> str:
    """The capabilities-table key: the provisioner, refined by parameters where CDI does so."""
    provisioner = str(storage_class.get("provisioner") or "")
    params = storage_class.get("parameters") or {}
    if provisioner == "ebs.csi.aws.com":
        return _EBS_TYPES.get(str(params.get("type")), provisioner)
    if provisioner == "pd.csi.storage.gke.io" and params.get("type") in _HYPERDISK_TYPES:
        return "pd.csi.storage.gke.io/hyperdisk"
    return provisioner


# --- StorageProfiles ---------------------------------------------------------------------------

def storage_profile(storage_class: JSON, existing: JSON | None, *, snapshot_capable: bool = False,
                    snapshot_class: str = "") -> JSON:
    """The desired StorageProfile for ``storage_class``.

    The spec is the user's (kept from ``existing``); the status is ours: the spec's claim property
    sets if any, else the capabilities table's (none for an unknown provisioner). ``snapshot_class``
    is a VolumeSnapshotClass of the class's driver, if the cluster has one: it makes the class
    snapshot-capable and is reported as ``status.snapshotClass`` unless the spec names one.
    Ownership and resourceVersion are left to the caller.
    """
    snapshot_capable = snapshot_capable or bool(snapshot_class)
    spec: JSON = copy.deepcopy((existing or {}).get("spec") or {})
    key = provisioner_key(storage_class)
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "StorageProfile",
        "metadata": _profile_metadata(storage_class, existing, key),
        "spec": spec,
        "status": _profile_status(storage_class, spec, key, snapshot_capable, snapshot_class),
    }


def _profile_metadata(storage_class: JSON, existing: JSON | None, key: str) -> JSON:
    """Name = class name; CDI's labels over the existing ones; minimum size from the table unless set."""
    old = (existing or {}).get("metadata") or {}
    metadata: JSON = {"name": _name(storage_class), "labels": {**(old.get("labels") or {}), **PROFILE_LABELS}}
    annotations = dict(old.get("annotations") or {})
    if key in MINIMUM_SIZES:
        annotations.setdefault(ann.MINIMUM_PVC_SIZE, MINIMUM_SIZES[key])
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _profile_status(storage_class: JSON, spec: JSON, key: str, snapshot_capable: bool, snapshot_class: str) -> JSON:
    """Status as CDI's storage-profile controller computes it."""
    status: JSON = {"storageClass": _name(storage_class), "provisioner": storage_class.get("provisioner", "")}
    sets = copy.deepcopy(spec.get("claimPropertySets")) or _table_sets(key)
    if sets:
        status["claimPropertySets"] = sets
    status["cloneStrategy"] = spec.get("cloneStrategy") or _clone_strategy(storage_class, key, snapshot_capable)
    status["dataImportCronSourceFormat"] = spec.get("dataImportCronSourceFormat") or _source_format(
        key, snapshot_capable)
    if spec.get("snapshotClass") or snapshot_class:
        status["snapshotClass"] = spec.get("snapshotClass") or snapshot_class
    return status


def _table_sets(key: str) -> list[JSON]:
    """Claim property sets from the capabilities table, one access mode per set as CDI writes them."""
    return [{"accessModes": [mode], "volumeMode": volume_mode} for mode, volume_mode in CAPABILITIES.get(key, [])]


def _clone_strategy(storage_class: JSON, key: str, snapshot_capable: bool) -> str:
    """The class's clone-strategy annotation, else the table's advice, else snapshot-or-copy."""
    override = _annotations(storage_class).get(CLONE_STRATEGY_ANNOTATION)
    if override in ("copy", "snapshot", "csi-clone"):
        return str(override)
    strategy = CLONE_STRATEGIES.get(key, "snapshot" if snapshot_capable else "copy")
    return "copy" if strategy == "snapshot" and not snapshot_capable else strategy


def _source_format(key: str, snapshot_capable: bool) -> str:
    """DataImportCron source format: the table's advice, but snapshots only with a snapshot class."""
    advised = SOURCE_FORMATS.get(key, "pvc")
    return advised if advised != "snapshot" or snapshot_capable else "pvc"


# --- PVC rendering -----------------------------------------------------------------------------

def render_pvc_spec(dv: JSON, *, storage_classes: list[JSON], profiles: dict[str, JSON],
                    config: ControllerConfig) -> JSON:
    """The PVC ``.spec`` for a DataVolume (metadata and owner references are the caller's).

    ``profiles`` maps class names to StorageProfiles; a class without one gets the profile
    :func:`storage_profile` would create, so rendering need not wait for the profile controller.
    """
    spec: JSON = dv.get("spec") or {}
    if spec.get("pvc") is not None:
        return copy.deepcopy(spec["pvc"])
    if spec.get("storage") is None:
        raise RenderError(CLAIM_NOT_VALID, MSG_PVC_OR_STORAGE)
    pvc = _storage_as_pvc(spec["storage"])
    _apply_content_type(pvc, _is_archive(spec))
    profile = _apply_storage_class(pvc, storage_classes, profiles, _is_archive(spec))
    pvc.setdefault("volumeMode", FILESYSTEM)
    _render_size(pvc, profile, config, clone=_is_clone(spec))
    return pvc


def requested_image_size(dv: JSON) -> str | None:
    """The size the DataVolume asked for (``storage`` or ``pvc`` ``resources.requests.storage``).

    CDI hands its importer the *PVC's* request as ``IMPORTER_IMAGE_SIZE`` (for Filesystem that
    is the inflated size); this is the size before rendering, for callers that want the user's
    number.
    """
    spec: JSON = dv.get("spec") or {}
    claim = spec.get("storage") if spec.get("pvc") is None else spec.get("pvc")
    size = (((claim or {}).get("resources") or {}).get("requests") or {}).get("storage")
    return None if size is None else str(size)


def required_space(overhead: str, requested: int) -> int:
    """Bytes a Filesystem PVC needs so that ``requested`` bytes of image fit (CDI ``GetRequiredSpace``).

    Align up to 1 MiB, then count the overhead as a share of the *whole* volume: divide by
    (1 - overhead) and round up. Float arithmetic on purpose, to give CDI's exact numbers.
    """
    fraction = float(overhead)
    if fraction >= 1:
        raise ValueError(f"filesystem overhead {overhead} leaves no room for data")
    aligned = -(-requested // MIB) * MIB
    return int(math.ceil(float(aligned) / (1 - fraction)))


def format_quantity(size: int) -> str:
    """A byte count as the apiserver writes a decimal quantity back: ``1142278537``, ``131072k``, ``2G``.

    CDI builds the request with ``resource.NewScaledQuantity(bytes, 0)``; emitting the same
    canonical form means a read-back PVC compares equal to what we rendered.
    """
    exponent, mantissa = 0, size
    while mantissa and mantissa % 1000 == 0 and exponent < 18:
        mantissa //= 1000
        exponent += 3
    return f"{mantissa}{_SI_SUFFIX[exponent]}"


def _storage_as_pvc(storage: JSON) -> JSON:
    """The fields of a ``StorageSpec`` that a PVC spec has, deep-copied (CDI ``copyStorageAsPvc``)."""
    keys = ("accessModes", "selector", "resources", "volumeName", "storageClassName", "volumeMode",
            "dataSource", "dataSourceRef")
    pvc = {key: copy.deepcopy(storage[key]) for key in keys if storage.get(key) is not None}
    if pvc.get("volumeMode") in (FROM_STORAGE_PROFILE, ""):
        del pvc["volumeMode"]  # "take it from the profile" is the same as not giving one
    return pvc


def _apply_content_type(pvc: JSON, archive: bool) -> None:
    """A tar is extracted into a filesystem: archive DataVolumes are always Filesystem."""
    if not archive:
        return
    if pvc.get("volumeMode") == BLOCK:
        raise RenderError(CLAIM_NOT_VALID, MSG_ARCHIVE_BLOCK)
    pvc["volumeMode"] = FILESYSTEM


def _apply_storage_class(pvc: JSON, storage_classes: list[JSON], profiles: dict[str, JSON],
                         archive: bool) -> JSON | None:
    """Pick the class, fill modes from its profile; returns the profile (None without a class).

    Without any class CDI still accepts a spec that names its access modes (it may bind to a
    static PV); only a spec that also lacks access modes is refused.
    """
    name = pvc.get("storageClassName")
    if name is None:
        sc = default_storage_class(storage_classes, archive=archive)
    else:
        sc = storage_class_named(name, storage_classes)
    if sc is None:
        if not pvc.get("accessModes"):
            raise RenderError(CLAIM_NOT_VALID, MSG_NO_CLASS)
        return None
    pvc["storageClassName"] = _name(sc)
    profile = profiles.get(_name(sc)) or storage_profile(sc, None)
    _apply_profile_modes(pvc, profile)
    return profile


def _apply_profile_modes(pvc: JSON, profile: JSON) -> None:
    """Fill missing access modes / volume mode from the profile's claim property sets."""
    sets: list[JSON] = list((profile.get("status") or {}).get("claimPropertySets") or [])
    name = _name(profile)
    if not pvc.get("accessModes"):
        chosen = _set_for_volume_mode(sets, pvc.get("volumeMode"), name)
        pvc["accessModes"] = list(chosen["accessModes"])
        if not pvc.get("volumeMode") and chosen.get("volumeMode"):
            pvc["volumeMode"] = chosen["volumeMode"]
    elif not pvc.get("volumeMode"):
        match = next((s for s in sets if set(s.get("accessModes") or []) & set(pvc["accessModes"])), None)
        if match and match.get("volumeMode"):
            pvc["volumeMode"] = match["volumeMode"]


def _set_for_volume_mode(sets: list[JSON], volume_mode: str | None, profile_name: str) -> JSON:
    """The first usable set (with that volume mode, when one is asked for), or CDI's refusal."""
    missing = RenderError(CLAIM_NOT_VALID, f"no accessMode specified in StorageProfile {profile_name}")
    if volume_mode is None:
        if not sets or not sets[0].get("accessModes"):
            raise missing
        return sets[0]
    usable = [s for s in sets if s.get("accessModes")]
    if not usable:
        raise missing
    match = next((s for s in usable if s.get("volumeMode") == volume_mode), None)
    if match is None:
        raise RenderError(CLAIM_NOT_VALID, f"no matching accessMode specified in StorageProfile {profile_name}")
    return match


def _render_size(pvc: JSON, profile: JSON | None, config: ControllerConfig, *, clone: bool) -> None:
    """Set ``resources.requests.storage``: minimum size, then Filesystem overhead (CDI's order)."""
    resources = pvc.setdefault("resources", {})
    requests = resources.setdefault("requests", {})
    if requests.get("storage") is None:
        if not clone:
            raise RenderError(CLAIM_NOT_VALID, MSG_NO_SIZE)
        requests.pop("storage", None)  # the clone controller sizes it from the source
        return
    size = max(_parse_size(requests["storage"]), _minimum_size(profile))
    if pvc.get("volumeMode") == FILESYSTEM:
        size = _inflate(size, _overhead(pvc.get("storageClassName"), config))
    requests["storage"] = format_quantity(size)


def _parse_size(value: object) -> int:
    """Bytes of the requested size; under 1 MiB is refused, as KubeVirt can't use such a disk."""
    try:
        size = parse_quantity(str(value))
    except ValueError:
        raise RenderError(CLAIM_NOT_VALID, f"PVC Spec is not valid - invalid storage size {value!r}") from None
    if size < MIB:
        raise RenderError(CLAIM_NOT_VALID, MSG_TOO_SMALL)
    return size


def _minimum_size(profile: JSON | None) -> int:
    """The profile's ``minimumSupportedPvcSize`` in bytes; 0 when absent or unparsable (as CDI)."""
    value = _annotations(profile or {}).get(ann.MINIMUM_PVC_SIZE)
    try:
        return parse_quantity(str(value)) if value else 0
    except ValueError:
        return 0


def _overhead(class_name: str | None, config: ControllerConfig) -> str:
    """The class's overhead; an explicit empty class name (static binding) gets none, as in CDI."""
    return "0" if class_name == "" else config.overhead_for(class_name)


def _inflate(size: int, overhead: str) -> int:
    """:func:`required_space`, with a bad overhead reported on the DataVolume instead of raised."""
    try:
        return required_space(overhead, size)
    except ValueError as error:
        raise RenderError(CLAIM_NOT_VALID, str(error)) from None


def _is_archive(spec: JSON) -> bool:
    """Whether the DataVolume carries a tar to extract rather than a disk image."""
    return spec.get("contentType") == "archive"


def _is_clone(spec: JSON) -> bool:
    """Clones (from a PVC, a snapshot, or a DataSource) may omit the size: the source gives it."""
    source = spec.get("source") or {}
    return bool(source.get("pvc") or source.get("snapshot") or spec.get("sourceRef"))


def _name(obj: JSON) -> str:
    """``metadata.name`` ('' if missing)."""
    return str((obj.get("metadata") or {}).get("name") or "")


def _annotations(obj: JSON) -> dict[str, str]:
    """``metadata.annotations`` (empty if missing)."""
    return dict((obj.get("metadata") or {}).get("annotations") or {})
