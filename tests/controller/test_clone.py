"""Clones end to end: the deployed controller on the real cluster, the CSI driver's snapshots and
clones, and (for host-assisted copies) the cloner and upload-server pods from our images.

Behaviours under test (CDI's, ref section 5, and issue 11):
- a snapshot clone and a csi-clone in one namespace, with ``storage`` giving no size: the target
  is sized from the source, has the source's bytes, records ``cloneType``, and the temporary
  snapshot is gone afterwards;
- a copy with no size is sized from its source's image, measured by one size-detection pod
  and cached on the source PVC (CDI's annotations), so the next clone runs none;
- a snapshot clone across namespaces (the snapshot imported through a retained content);
- a clone whose source does not exist yet waits (``CloneWithoutSource``) and runs once it does;
- a source used by a running pod makes a smart clone wait with ``SmartCloneSourceInUse``;
- a target smaller than its source fails at once with CDI's message (a permanent error);
- a DataVolume over an existing PVC with ``allowClaimAdoption`` adopts it and Succeeds, and one
  marked ``prePopulated`` Succeeds without touching it;
- ``sourceRef`` to a DataSource clones what the DataSource names;
- StorageProfiles report the VolumeSnapshotClass of their driver and the snapshot strategy.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cdi.controller.storage import format_quantity, required_space
from kubeenv.cluster import Cluster
from kubeenv.node import csi
from tests.controller.conftest import GROUP, VERSION, Controller, wait_for
from tests.controller.dvs import as_user, bind, condition, create_dv, events_for, get_dv, sha256_prefix, volume_path
from tests.kube.fixtures import make_namespace
from tests.servers.images import Image
from tests.servers.nginx import Nginx

A = "cdi.kubevirt.io"
IMAGE = "disk.qcow2"


def succeeded(custom: client.CustomObjectsApi, ns: str, name: str, controller: Controller,
              timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        dv = get_dv(custom, ns, name)
        status = (dv or {}).get("status") or {}
        assert status.get("phase") != "Failed", status
        return dv if status.get("phase") == "Succeeded" else None
    try:
        result: dict[str, Any] = wait_for(f"{name} Succeeded", done, timeout, controller)
    except AssertionError as timed_out:  # say where it stopped, not only that it did
        raise AssertionError(f"{timed_out}\nlast status: {(get_dv(custom, ns, name) or {}).get('status')}") from None
    return result


def set_strategy(custom: client.CustomObjectsApi, strategy: str | None) -> None:
    """What an admin does to pick a clone strategy for a class: the StorageProfile's spec."""
    custom.patch_cluster_custom_object(GROUP, VERSION, "storageprofiles", csi.CLASS_IMMEDIATE,
                                       {"spec": {"cloneStrategy": strategy}})
    wanted = strategy or "snapshot"
    wait_for(f"profile strategy {wanted}", lambda: custom.get_cluster_custom_object(
        GROUP, VERSION, "storageprofiles", csi.CLASS_IMMEDIATE).get("status", {}).get("cloneStrategy") == wanted, 30)


@pytest.fixture
def strategy(custom: client.CustomObjectsApi) -> Iterator[Any]:
    yield lambda value: set_strategy(custom, value)
    set_strategy(custom, None)


@pytest.fixture
def golden(core: client.CoreV1Api, custom: client.CustomObjectsApi, pod_nginx: Nginx, controller: Controller
           ) -> Iterator[str]:
    """A namespace holding an imported disk ``disk`` (the golden image)."""
    name = make_namespace(core, "golden")
    core.patch_namespace(name, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    create_dv(custom, name, "disk", {"http": {"url": f"{pod_nginx.http}/{IMAGE}"}}, size="64Mi")
    succeeded(custom, name, "disk", controller)
    yield name
    core.delete_namespace(name)


def same_bytes(core: client.CoreV1Api, images: dict[str, Image], ns: str, claim: str) -> bool:
    image = images[IMAGE]
    return sha256_prefix(volume_path(core, ns, claim), image.raw_size) == image.raw_sha256


def snapshots(custom: client.CustomObjectsApi, ns: str) -> list[str]:
    listing = custom.list_namespaced_custom_object("snapshot.storage.k8s.io", "v1", ns, "volumesnapshots")
    return [item["metadata"]["name"] for item in listing["items"]]


def test_profile_reports_the_snapshot_class_and_strategy(custom: client.CustomObjectsApi, controller: Controller) -> None:
    status = wait_for("profile snapshot class", lambda: (p := custom.get_cluster_custom_object(
        GROUP, VERSION, "storageprofiles", csi.CLASS_IMMEDIATE).get("status", {})).get("snapshotClass") and p, 30)
    assert status["snapshotClass"] == csi.SNAPSHOT_CLASS and status["cloneStrategy"] == "snapshot"


def test_snapshot_clone_in_one_namespace_sized_from_the_source(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, images: dict[str, Image],
        controller: Controller, strategy: Any) -> None:
    strategy("snapshot")
    create_dv(custom, golden, "copy", {"pvc": {"namespace": golden, "name": "disk"}}, storage={})
    dv = succeeded(custom, golden, "copy", controller)
    assert dv["status"]["progress"] == "100.0%" and condition(dv, "Ready")["status"] == "True"
    pvc = core.read_namespaced_persistent_volume_claim("copy", golden)
    source = core.read_namespaced_persistent_volume_claim("disk", golden)
    assert pvc.metadata.annotations[f"{A}/cloneType"] == "snapshot"
    assert pvc.spec.data_source.kind == "VolumeSnapshot"
    assert pvc.spec.resources.requests["storage"] == source.spec.resources.requests["storage"]
    assert same_bytes(core, images, golden, "copy")
    wait_for("the temporary snapshot removed", lambda: snapshots(custom, golden) == [], 60)
    assert "CloneSucceeded" in [reason for _, reason, _ in events_for(core, golden, "copy")]


def test_copy_with_no_size_holds_the_source_image_measured_once(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, images: dict[str, Image],
        controller: Controller, strategy: Any) -> None:
    """CDI's size detection: a copy of a Filesystem source with no size is sized from the virtual
    size of its ``disk.img`` (plus the target's overhead), found by one pod and then cached on the
    source PVC, so a second clone runs no pod."""
    strategy("copy")
    create_dv(custom, golden, "first", {"pvc": {"namespace": golden, "name": "disk"}}, storage={})
    succeeded(custom, golden, "first", controller)
    image = volume_path(core, golden, "disk").stat().st_size
    source = core.read_namespaced_persistent_volume_claim("disk", golden)
    assert source.metadata.annotations["cdi.Kubervirt.io/virtualSize"] == str(image)
    assert source.metadata.annotations["cdi.Kubervirt.io/sourceCapacity"] == source.status.capacity["storage"]
    config = custom.get_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config")["status"]["filesystemOverhead"]
    overhead = (config.get("storageClass") or {}).get(csi.CLASS_IMMEDIATE, config["global"])
    target = core.read_namespaced_persistent_volume_claim("first", golden)
    assert target.spec.resources.requests["storage"] == format_quantity(required_space(overhead, image))
    assert "SizeDetectionPodCreated" in [r for _, r, _ in events_for(core, golden, "first")]
    assert same_bytes(core, images, golden, "first")
    create_dv(custom, golden, "second", {"pvc": {"namespace": golden, "name": "disk"}}, storage={})
    succeeded(custom, golden, "second", controller)
    assert "SizeDetectionPodCreated" not in [r for _, r, _ in events_for(core, golden, "second")]
    assert core.list_namespaced_pod(golden, label_selector="cdi.kubevirt.io=size-detection").items == []


def test_csi_clone(custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, images: dict[str, Image],
                   controller: Controller, strategy: Any) -> None:
    strategy("csi-clone")
    create_dv(custom, golden, "cloned", {"pvc": {"namespace": golden, "name": "disk"}}, size="64Mi")
    succeeded(custom, golden, "cloned", controller)
    pvc = core.read_namespaced_persistent_volume_claim("cloned", golden)
    assert pvc.metadata.annotations[f"{A}/cloneType"] == "csi-clone"
    assert pvc.spec.data_source.kind == "PersistentVolumeClaim" and pvc.spec.data_source.name == "disk"
    assert same_bytes(core, images, golden, "cloned")


def test_snapshot_clone_across_namespaces(custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str,
                                          ns: str, images: dict[str, Image], controller: Controller,
                                          strategy: Any, golden_reader: str) -> None:
    """Refused with CDI's message until the user may read the golden namespace's volumes, then
    cloned by snapshot, the snapshot crossing namespaces through a retained content."""
    strategy("snapshot")
    user = f"tenant-{uuid.uuid4().hex[:6]}"
    bind(custom, ns, user, "edit")
    tenant = as_user(custom, user)
    source = {"pvc": {"namespace": golden, "name": "disk"}}
    with pytest.raises(client.ApiException) as refused:
        create_dv(tenant, ns, "vm-root", source, size="64Mi")
    assert f"User {user} has insufficient permissions in clone source namespace {golden}" in refused.value.body
    bind(custom, golden, user, golden_reader)
    wait_for("the grant to take effect", lambda: _may_create(tenant, ns, source), 30)
    succeeded(custom, ns, "vm-root", controller)
    assert core.read_namespaced_persistent_volume_claim("vm-root", ns).metadata.annotations[f"{A}/cloneType"] == \
        "snapshot"
    assert same_bytes(core, images, ns, "vm-root")
    wait_for("temporary snapshots removed", lambda: snapshots(custom, golden) == [] and snapshots(custom, ns) == [], 60)
    contents = custom.list_cluster_custom_object("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents")["items"]
    assert not [c for c in contents if c["metadata"]["name"].startswith("cdi-tmp-")]


def _may_create(tenant: client.CustomObjectsApi, ns: str, source: dict[str, Any]) -> bool:
    try:
        create_dv(tenant, ns, "vm-root", source, size="64Mi")
    except client.ApiException as error:
        if error.status == 403:
            return False
        raise
    return True


def test_clone_waits_for_its_source(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                    pod_nginx: Nginx, images: dict[str, Image], controller: Controller) -> None:
    create_dv(custom, ns, "early", {"pvc": {"namespace": ns, "name": "later"}}, size="64Mi")
    dv = wait_for("waiting for the source", lambda: (d := get_dv(custom, ns, "early")) and
                  condition(d, "Running").get("reason") == "CloneWithoutSource" and d, 60, controller)
    assert dv["status"]["phase"] == "Pending" and "later" in condition(dv, "Running")["message"]
    assert core.list_namespaced_persistent_volume_claim(ns).items == []
    create_dv(custom, ns, "later", {"http": {"url": f"{pod_nginx.http}/{IMAGE}"}}, size="64Mi")
    succeeded(custom, ns, "early", controller)
    assert same_bytes(core, images, ns, "early")


def test_smart_clone_waits_while_the_source_is_in_use(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, cluster: Cluster,
        images: dict[str, Image], controller: Controller, strategy: Any) -> None:
    strategy("snapshot")
    core.create_namespaced_pod(golden, user_of("disk", cluster.images["pause"]))
    wait_for("the user pod running", lambda: core.read_namespaced_pod("vm", golden).status.phase == "Running", 60)
    create_dv(custom, golden, "busy", {"pvc": {"namespace": golden, "name": "disk"}}, size="64Mi")
    wait_for("SmartCloneSourceInUse", lambda: condition(get_dv(custom, golden, "busy") or {}, "Running")
             .get("reason") == "SmartCloneSourceInUse", 60, controller)
    assert ("Warning", "SmartCloneSourceInUse") in [(t, r) for t, r, _ in events_for(core, golden, "busy")]
    assert snapshots(custom, golden) == []
    core.delete_namespaced_pod("vm", golden, grace_period_seconds=0)
    succeeded(custom, golden, "busy", controller)
    assert same_bytes(core, images, golden, "busy")


def user_of(claim: str, image: str) -> dict[str, Any]:
    """A pod that keeps ``claim`` mounted (a stand-in for a running VM), fit for ``restricted``."""
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                "runAsUser": 107, "seccompProfile": {"type": "RuntimeDefault"}}
    return {"metadata": {"name": "vm"},
            "spec": {"containers": [{"name": "vm", "image": image, "securityContext": security,
                                     "volumeMounts": [{"name": "disk", "mountPath": "/disk"}]}],
                     "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": claim}}]}}


def test_target_smaller_than_source_fails_once_with_cdis_message(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, controller: Controller) -> None:
    create_dv(custom, golden, "tiny", {"pvc": {"namespace": golden, "name": "disk"}}, size="16Mi")
    dv = wait_for("tiny Failed", lambda: (d := get_dv(custom, golden, "tiny")) and
                  (d.get("status") or {}).get("phase") == "Failed" and d, 60, controller)
    running = condition(dv, "Running")
    assert running["reason"] == "CloneValidationFailed"
    assert running["message"] == "target resources requests storage size is smaller than the source"
    assert [r for _, r, _ in events_for(core, golden, "tiny")].count("CloneValidationFailed") == 1
    assert core.list_namespaced_persistent_volume_claim(golden, field_selector="metadata.name=tiny").items == []


def bare_claim(core: client.CoreV1Api, ns: str, name: str, annotations: dict[str, str] | None = None) -> None:
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": csi.CLASS_IMMEDIATE,
                 "resources": {"requests": {"storage": "16Mi"}}}})


def test_claim_adoption_and_prepopulated(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                         controller: Controller) -> None:
    bare_claim(core, ns, "adopted")
    bare_claim(core, ns, "mine", {f"{A}/storage.populatedFor": "mine"})  # CDI's mark of a pre-populated PVC
    bare_claim(core, ns, "taken")
    create_dv(custom, ns, "adopted", {"blank": {}}, annotations={f"{A}/allowClaimAdoption": "true"})
    create_dv(custom, ns, "mine", {"blank": {}}, annotations={f"{A}/storage.prePopulated": "true"})
    with pytest.raises(client.ApiException) as refused:  # the validating webhook, as CDI's
        create_dv(custom, ns, "taken", {"blank": {}})
    assert f"Destination PVC {ns}/taken already exists" in refused.value.body
    dv = succeeded(custom, ns, "adopted", controller)
    assert dv["status"]["claimName"] == "adopted"
    owners = core.read_namespaced_persistent_volume_claim("adopted", ns).metadata.owner_references
    assert [(o.kind, o.name) for o in owners] == [("DataVolume", "adopted")]
    annotations = core.read_namespaced_persistent_volume_claim("adopted", ns).metadata.annotations
    assert annotations[f"{A}/storage.populatedFor"] == "adopted"  # CDI's mark: later passes keep it Succeeded
    succeeded(custom, ns, "mine", controller)
    assert not core.read_namespaced_persistent_volume_claim("mine", ns).metadata.owner_references
    assert core.list_namespaced_pod(ns).items == []


def test_sourceref_clones_what_the_datasource_names(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, images: dict[str, Image],
        controller: Controller, strategy: Any) -> None:
    strategy("csi-clone")
    custom.create_namespaced_custom_object(GROUP, VERSION, golden, "datasources", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataSource", "metadata": {"name": "fedora"},
        "spec": {"source": {"pvc": {"namespace": golden, "name": "disk"}}}})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume", "metadata": {"name": f"vm-{uuid.uuid4().hex[:6]}"},
            "spec": {"sourceRef": {"kind": "DataSource", "name": "fedora"},
                     "storage": {"resources": {"requests": {"storage": "64Mi"}}}}}
    name = custom.create_namespaced_custom_object(GROUP, VERSION, golden, "datavolumes", body)["metadata"]["name"]
    succeeded(custom, golden, name, controller)
    assert same_bytes(core, images, golden, name)


# -- host-assisted copies: the cloner and upload-server pods ------------------------------------------

GIB, MIB, EXTENT = 1 << 30, 1 << 20, 64 << 10


def filled_volume(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str, name: str, controller: Controller,
                  mode: str = "Filesystem", size: str = "1Gi", every: int = MIB, seed: int = 1) -> Path:
    """A blank volume with random 64 KiB extents written every ``every`` bytes (holes between),
    written on the host into the CSI volume, as a guest would have left its disk."""
    create_dv(custom, ns, name, {"blank": {}}, storage={"volumeMode": mode, "resources": {"requests": {"storage": size}}})
    succeeded(custom, ns, name, controller)
    path = volume_path(core, ns, name)
    rng = random.Random(seed)
    with path.open("r+b") as disk:
        length = disk.seek(0, os.SEEK_END)
        for offset in range(0, length - EXTENT, every):
            disk.seek(offset)
            disk.write(rng.randbytes(EXTENT))
    return path


def digest(path: Path, length: int) -> str:
    return sha256_prefix(path, length)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture
def copy_strategy(strategy: Any) -> None:
    strategy("copy")


def test_copy_clone_of_a_sparse_gigabyte(custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str,
                                         controller: Controller, copy_strategy: None) -> None:
    source = filled_volume(custom, core, golden, "sparse", controller)
    length = source.stat().st_size
    create_dv(custom, golden, "sparse-copy", {"pvc": {"namespace": golden, "name": "sparse"}}, storage={})
    dv = succeeded(custom, golden, "sparse-copy", controller, timeout=300)
    assert dv["status"]["progress"] == "100.0%"
    target = volume_path(core, golden, "sparse-copy")
    assert target.stat().st_size == length and digest(target, length) == digest(source, length)
    assert allocated(target) <= allocated(source), (allocated(target), allocated(source))
    pvc = core.read_namespaced_persistent_volume_claim("sparse-copy", golden)
    assert pvc.metadata.annotations[f"{A}/cloneType"] == "copy"
    assert pvc.metadata.annotations["k8s.io/CloneRequest"] == f"{golden}/sparse"
    reasons = [r for _, r, _ in events_for(core, golden, "sparse-copy")]
    assert "CloneScheduled" in reasons and "CloneSucceeded" in reasons
    wait_for("the cloner and upload pods gone", lambda: not core.list_namespaced_pod(golden).items, 60)
    assert not [s for s in core.list_namespaced_secret(golden).items if s.metadata.name.startswith("cdi-clone-tls-")]


def test_copy_between_volume_modes_falls_back_from_snapshot(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str, controller: Controller,
        strategy: Any) -> None:
    """Filesystem to Block, Block to Filesystem, Block to Block. With the snapshot strategy the two
    mode-changing clones fall back to a copy and say why; Block to Block is a snapshot clone."""
    strategy("snapshot")
    files = filled_volume(custom, core, golden, "fs-src", controller, size="256Mi", every=4 * MIB, seed=2)
    block = filled_volume(custom, core, golden, "blk-src", controller, mode="Block", size="256Mi", every=4 * MIB,
                          seed=3)
    cases = {"fs-to-blk": ("fs-src", "Block", files), "blk-to-fs": ("blk-src", "Filesystem", block),
             "blk-to-blk": ("blk-src", "Block", block)}
    for name, (source, mode, _) in cases.items():
        create_dv(custom, golden, name, {"pvc": {"namespace": golden, "name": source}},
                  storage={"volumeMode": mode, "resources": {"requests": {"storage": "300Mi"}}})
    for name, (_, _, source_path) in cases.items():
        succeeded(custom, golden, name, controller, timeout=300)
        length = source_path.stat().st_size if source_path.is_file() else 0
        length = min(length, volume_path(core, golden, name).stat().st_size)
        assert digest(volume_path(core, golden, name), length) == digest(source_path, length), name
    notes = {name: core.read_namespaced_persistent_volume_claim(name, golden).metadata.annotations for name in cases}
    assert notes["fs-to-blk"][f"{A}/cloneFallbackReason"] == "IncompatibleVolumeModes"
    assert notes["blk-to-fs"][f"{A}/cloneType"] == "copy"
    assert "IncompatibleVolumeModes" in [r for _, r, _ in events_for(core, golden, "blk-to-fs")]
    assert notes["blk-to-blk"][f"{A}/cloneType"] == "snapshot"


def test_copy_waits_while_the_source_is_in_use(custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str,
                                               cluster: Cluster, images: dict[str, Image], controller: Controller,
                                               copy_strategy: None) -> None:
    core.create_namespaced_pod(golden, user_of("disk", cluster.images["pause"]))
    wait_for("the user pod running", lambda: core.read_namespaced_pod("vm", golden).status.phase == "Running", 60)
    create_dv(custom, golden, "busy-copy", {"pvc": {"namespace": golden, "name": "disk"}}, size="64Mi")
    dv = wait_for("CloneSourceInUse", lambda: (d := get_dv(custom, golden, "busy-copy")) and
                  condition(d, "Running").get("reason") == "CloneSourceInUse" and d, 90, controller)
    assert dv["status"]["phase"] == "CloneScheduled" and "vm" in condition(dv, "Running")["message"]
    assert ("Warning", "CloneSourceInUse") in [(t, r) for t, r, _ in events_for(core, golden, "busy-copy")]
    core.delete_namespaced_pod("vm", golden, grace_period_seconds=0)
    succeeded(custom, golden, "busy-copy", controller)
    assert same_bytes(core, images, golden, "busy-copy")


def in_progress(custom: client.CustomObjectsApi, ns: str, name: str, controller: Controller) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        dv = get_dv(custom, ns, name) or {}
        phase = (dv.get("status") or {}).get("phase")
        assert phase != "Succeeded", "the clone ended before the test could interrupt it"
        return dv if phase == "CloneInProgress" else None
    found: dict[str, Any] = wait_for(f"{name} CloneInProgress", check, 120, controller)
    return found


def test_copy_resumes_after_its_pod_is_killed(custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str,
                                              controller: Controller, copy_strategy: None) -> None:
    source = filled_volume(custom, core, golden, "dense", controller, size="512Mi", every=EXTENT, seed=4)
    create_dv(custom, golden, "resumed", {"pvc": {"namespace": golden, "name": "dense"}}, storage={},
              annotations={f"{A}/storage.pod.retainAfterCompletion": "true"})
    in_progress(custom, golden, "resumed", controller)
    first = f"{core.read_namespaced_persistent_volume_claim('resumed', golden).metadata.uid}-source-pod"  # CDI's name
    first_uid = core.read_namespaced_pod(first, golden).metadata.uid
    core.delete_namespaced_pod(first, golden, grace_period_seconds=0)
    succeeded(custom, golden, "resumed", controller, timeout=300)
    length = source.stat().st_size
    assert digest(volume_path(core, golden, "resumed"), length) == digest(source, length)
    second = core.read_namespaced_pod(first, golden)
    assert second.metadata.uid != first_uid
    log = core.read_namespaced_pod_log(first, golden)
    offsets = [int(m) for m in re.findall(r"from offset (\d+) of", log)]
    assert offsets and offsets[0] > 0, log[-2000:]


def test_deleting_a_dv_mid_clone_cleans_up(custom: client.CustomObjectsApi, core: client.CoreV1Api, golden: str,
                                           ns: str, controller: Controller, copy_strategy: None) -> None:
    filled_volume(custom, core, golden, "dense2", controller, size="512Mi", every=EXTENT, seed=5)
    create_dv(custom, golden, "doomed", {"pvc": {"namespace": golden, "name": "dense2"}}, storage={})
    in_progress(custom, golden, "doomed", controller)
    custom.delete_namespaced_custom_object(GROUP, VERSION, golden, "datavolumes", "doomed")
    wait_for("the clone's pods, Secrets and PVC gone", lambda: not [
        p for p in core.list_namespaced_pod(golden).items] and not [
        s for s in core.list_namespaced_secret(golden).items if s.metadata.name.startswith(("cdi-clone", "cdi-upload"))]
        and not core.list_namespaced_persistent_volume_claim(golden, field_selector="metadata.name=doomed").items,
        120, controller)
