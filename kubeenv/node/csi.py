"""Storage through a real CSI driver: ``hostpathplugin`` (our own small hostpath driver in Go,
``tools/node/hostpath``: the Go module proxy here does not serve csi-driver-host-path) and the
upstream sidecars a cluster runs beside it, as processes on the node (not pods: they need no
image, and the host is the node).

- ``hostpathplugin`` serves the CSI Identity, Controller and Node services on a unix socket;
  volumes are directories (Filesystem) or sparse files attached as loop devices (Block) under its
  state directory; snapshots, clones and restores are sparse copies (csi-sanity passes);
- ``csi-node-driver-registrar`` (ours: the upstream module is not served here) registers the driver
  with kubelet's plugin watcher;
- ``csi-provisioner``, ``csi-resizer``, ``csi-snapshotter`` watch claims, resizes and
  VolumeSnapshotContents and call the driver; ``snapshot-controller`` (with the VolumeSnapshot
  CRDs) binds VolumeSnapshots to contents.

They authenticate as the cluster admin (a test cluster's host components, like the control
plane's own). The cluster objects: the CSIDriver (no attach step, as the driver needs none), two
StorageClasses (Immediate, the default, and WaitForFirstConsumer; each serves Filesystem and Block
claims) and a VolumeSnapshotClass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubeenv.node.layout import NodeLayout

DRIVER = "hostpath.csi.k8s.io"
CLASS_IMMEDIATE = "csi-hostpath"
CLASS_WFFC = "csi-hostpath-wffc"
SNAPSHOT_CLASS = "csi-hostpath-snapclass"
Manifest = dict[str, Any]


def socket(layout: NodeLayout) -> Path:
    """Where kubelet expects the driver: ``<root-dir>/plugins/<driver>/csi.sock``."""
    return layout.kubelet_dir / "plugins" / DRIVER / "csi.sock"


def state_dir(layout: NodeLayout) -> Path:
    return layout.csi_dir / "state"


def volume_path(state: Path, handle: str) -> Path:
    """A volume's data on the host: the driver keeps each under its state directory by ID (a
    directory for Filesystem, a file it attaches as a loop device for Block)."""
    return state / handle


def commands(bin_dir: Path, layout: NodeLayout, node: str, kubeconfig: Path) -> dict[str, list[str]]:
    """name -> argv of every CSI process, the driver first."""
    sock = socket(layout)
    address = f"--csi-address={sock}"
    common = [f"--kubeconfig={kubeconfig}", "--leader-election=false", "--v=2"]
    state = state_dir(layout)
    return {
        "hostpathplugin": [str(bin_dir / "hostpathplugin"), f"--endpoint=unix://{sock}", f"--nodeid={node}",
                           f"--drivername={DRIVER}", f"--statedir={state}", "--maxvolumespernode=0",
                           "--enable-volume-expansion=true", "--v=2"],
        "csi-node-driver-registrar": [str(bin_dir / "csi-node-driver-registrar"), address,
                                      f"--kubelet-registration-path={sock}",
                                      f"--plugin-registration-path={layout.kubelet_dir / 'plugins_registry'}"],
        "csi-provisioner": [str(bin_dir / "csi-provisioner"), address, *common, "--feature-gates=Topology=true",
                            "--extra-create-metadata", "--timeout=60s"],
        "csi-resizer": [str(bin_dir / "csi-resizer"), address, *common],
        "csi-snapshotter": [str(bin_dir / "csi-snapshotter"), address, *common],
        "snapshot-controller": [str(bin_dir / "snapshot-controller"), *common],
    }


def crds(bin_dir: Path) -> list[Manifest]:
    """The VolumeSnapshot CRDs that ``scripts/node-build`` copied from external-snapshotter."""
    docs: list[Manifest] = []
    for path in sorted((bin_dir / "crds").glob("snapshot.storage.k8s.io_*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def objects() -> list[Manifest]:
    """The CSIDriver, the StorageClasses and the VolumeSnapshotClass."""
    def storage_class(name: str, binding: str, default: bool) -> Manifest:
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
        return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": name, "annotations": annotations}, "provisioner": DRIVER,
                "reclaimPolicy": "Delete", "volumeBindingMode": binding, "allowVolumeExpansion": True}
    return [
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER},
         "spec": {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "File",
                  "volumeLifecycleModes": ["Persistent", "Ephemeral"]}},
        storage_class(CLASS_IMMEDIATE, "Immediate", True),
        storage_class(CLASS_WFFC, "WaitForFirstConsumer", False),
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
         "metadata": {"name": SNAPSHOT_CLASS,
                      "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
         "driver": DRIVER, "deletionPolicy": "Delete"},
    ]
