"""Which strategy copies a clone's bytes, chosen as CDI's planner chooses it.

The wanted strategy is the CDI CR's ``cloneStrategyOverride``, else the target StorageProfile's
``status.cloneStrategy`` (its spec, the class's ``cdi.kubevirt.io/clone-strategy`` annotation or
the capabilities table), else ``snapshot``. A smart strategy (``snapshot``, ``csi-clone``) is
used only where the storage can honour it; otherwise the clone falls back to ``copy``
(host-assisted, which works everywhere) and says why, with CDI's reason names:

* ``NoVolumeSnapshotClass``: no VolumeSnapshotClass for the target's CSI driver;
* ``IncompatibleProvisioners``: source and target are on different drivers;
* ``IncompatibleVolumeModes``: Filesystem on one side, Block on the other;
* ``NoVolumeExpansion``: the target is larger than the source and its class cannot expand;
* ``NoProvisionerMatch``: a snapshot source whose driver is not the target's.

A pure function of the bodies it is given, so every rule is checked without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from importer.quantity import parse_quantity

Body = dict[str, Any]


class Strategy(str, Enum):
    COPY = "copy"
    SNAPSHOT = "snapshot"
    CSI_CLONE = "csi-clone"

    def __str__(self) -> str:
        return self.value


class Fallback(str, Enum):
    NO_VOLUME_SNAPSHOT_CLASS = "NoVolumeSnapshotClass"
    INCOMPATIBLE_PROVISIONERS = "IncompatibleProvisioners"
    INCOMPATIBLE_VOLUME_MODES = "IncompatibleVolumeModes"
    NO_VOLUME_EXPANSION = "NoVolumeExpansion"
    NO_PROVISIONER_MATCH = "NoProvisionerMatch"
    NO_STORAGE_CLASS = "NoStorageClass"


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    snapshot_class: str = ""
    fallback: Fallback | None = None
    message: str = ""


@dataclass(frozen=True)
class Volume:
    """What the planner needs to know of one side of a clone."""

    provisioner: str
    volume_mode: str
    size: int
    allow_expansion: bool = False


def wanted_strategy(cdi: Body | None, profile: Body | None) -> Strategy:
    for value in (((cdi or {}).get("spec") or {}).get("cloneStrategyOverride"),
                  ((profile or {}).get("status") or {}).get("cloneStrategy")):
        if value in {s.value for s in Strategy}:
            return Strategy(value)
    return Strategy.SNAPSHOT


def snapshot_class_for(driver: str, classes: list[Body], preferred: str = "") -> str:
    """The profile's ``snapshotClass`` if it serves ``driver``; else the driver's default class;
    else any of its classes (by name, for a stable choice); else ''."""
    mine = sorted((c for c in classes if c.get("driver") == driver), key=lambda c: c["metadata"]["name"])
    for candidate in mine:
        if candidate["metadata"]["name"] == preferred:
            return preferred
    for candidate in mine:
        annotations = candidate["metadata"].get("annotations") or {}
        if annotations.get("snapshot.storage.kubernetes.io/is-default-class") == "true":
            return str(candidate["metadata"]["name"])
    return str(mine[0]["metadata"]["name"]) if mine else ""


def plan_pvc_clone(wanted: Strategy, source: Volume, target: Volume, snapshot_classes: list[Body],
                   preferred_snapshot_class: str = "") -> Plan:
    """The strategy for a clone from a PVC."""
    if wanted is Strategy.COPY:
        return Plan(Strategy.COPY)
    if not target.provisioner:
        return _fallback(Fallback.NO_STORAGE_CLASS, "the target has no storage class to plan a smart clone for")
    if source.provisioner != target.provisioner:
        return _fallback(Fallback.INCOMPATIBLE_PROVISIONERS,
                         f"source provisioner {source.provisioner or '(none)'} differs from target provisioner "
                         f"{target.provisioner}")
    if source.volume_mode != target.volume_mode:
        return _fallback(Fallback.INCOMPATIBLE_VOLUME_MODES,
                         f"source volume mode {source.volume_mode} differs from target volume mode {target.volume_mode}")
    if target.size > source.size and not target.allow_expansion:
        return _fallback(Fallback.NO_VOLUME_EXPANSION,
                         "the target is larger than the source and its storage class does not allow volume expansion")
    if wanted is Strategy.CSI_CLONE:
        return Plan(Strategy.CSI_CLONE)
    snapshot_class = snapshot_class_for(target.provisioner, snapshot_classes, preferred_snapshot_class)
    if not snapshot_class:
        return _fallback(Fallback.NO_VOLUME_SNAPSHOT_CLASS, f"no VolumeSnapshotClass for driver {target.provisioner}")
    return Plan(Strategy.SNAPSHOT, snapshot_class=snapshot_class)


def plan_snapshot_clone(snapshot_driver: str, restore_size: int, target: Volume) -> Plan:
    """A snapshot source restores straight into the target when the target's driver made it and
    the target can hold it; otherwise it is restored into a temporary PVC and copied."""
    if snapshot_driver != target.provisioner:
        return _fallback(Fallback.NO_PROVISIONER_MATCH,
                         f"the snapshot was taken by {snapshot_driver or '(unknown)'}, the target is provisioned by "
                         f"{target.provisioner or '(none)'}")
    if target.size > restore_size and not target.allow_expansion:
        return _fallback(Fallback.NO_VOLUME_EXPANSION,
                         "the target is larger than the snapshot and its storage class does not allow volume expansion")
    return Plan(Strategy.SNAPSHOT)


def _fallback(reason: Fallback, message: str) -> Plan:
    return Plan(Strategy.COPY, fallback=reason, message=message)


def claim_size(pvc: Body) -> int:
    """The PVC's size: its bound capacity, else its request (0 if neither parses)."""
    for value in (((pvc.get("status") or {}).get("capacity") or {}).get("storage"),
                  (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")):
        if value is not None:
            try:
                return parse_quantity(str(value))
            except ValueError:
                continue
    return 0
