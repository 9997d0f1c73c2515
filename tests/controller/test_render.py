"""StorageProfiles and PVC rendering (``cdi.controller.storage``), as CDI's renderPvcSpec does it.

Behaviours under test:

* filesystem overhead (CDI ``GetRequiredSpace``): align up to 1 MiB, divide by (1 - overhead),
  round up -- 1Gi at 0.06 / 0.055 / 0, odd sizes; Block volumes are not inflated;
* quantities written in the apiserver's canonical decimal form (plain bytes, ``k``, ``G``...);
* ``spec.pvc`` returned verbatim (a copy), no defaults, no overhead;
* the default class: virt default over Kubernetes default, newest of several, name as tie
  breaker, archive content ignores the virt default;
* access modes / volume mode from the profile: first set; the set matching a given volume mode;
  ``FromStorageProfile``; the volume mode of the set matching given access modes; Filesystem when
  nothing matches; both given -> untouched; archive forces Filesystem;
* RenderError reasons and CDI's messages: no class, empty profile, no matching set, missing size,
  size under 1 MiB, archive on Block, neither pvc nor storage, unparsable size;
* clones (pvc, snapshot, sourceRef) may omit the size;
* the profile's minimum size, enforced before the overhead; bad minimum ignored;
* a class with no StorageProfile yet uses the profile that would be created;
* ``requested_image_size``;
* ``storage_profile``: known and unknown provisioners, user spec kept and obeyed, labels,
  clone strategy and source format without/with snapshot support, minimum-size annotation.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cdi.api.schema import from_json, to_json
from cdi.api.v1beta1 import StorageProfile
from cdi.controller.config import resolve_config
from cdi.controller.storage import (MSG_ARCHIVE_BLOCK, MSG_NO_CLASS, MSG_NO_SIZE,
                                    MSG_PVC_OR_STORAGE, MSG_TOO_SMALL, RenderError, default_storage_class,
                                    format_quantity, render_pvc_spec, requested_image_size, required_space,
                                    storage_profile)

GI, MI = 1024**3, 1024**2
VIRT_DEFAULT = {"storageclass.kubevirt.io/is-default-virt-class": "true"}
K8S_DEFAULT = {"storageclass.kubernetes.io/is-default-class": "true"}
RBD_SETS = [{"accessModes": ["ReadWriteMany"], "volumeMode": "Block"},
            {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"},
            {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}]


def sc(name: str, provisioner: str = "kubevirt.io.hostpath-provisioner", annotations: dict[str, str] | None = None,
       created: str | None = None, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "annotations": annotations or {}}
    if created:
        metadata["creationTimestamp"] = created
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": metadata,
            "provisioner": provisioner, **extra}


def profile(name: str, sets: list[dict[str, Any]] | None, annotations: dict[str, str] | None = None
            ) -> dict[str, Any]:
    status: dict[str, Any] = {"storageClass": name}
    if sets is not None:
        status["claimPropertySets"] = sets
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": {}, "status": status}


def dv(storage: dict[str, Any] | None = None, size: str | None = "1Gi", **spec: Any) -> dict[str, Any]:
    if storage is not None:
        storage = copy.deepcopy(storage)
        if size is not None:
            storage.setdefault("resources", {}).setdefault("requests", {})["storage"] = size
        spec["storage"] = storage
    spec.setdefault("source", {"http": {"url": "http://example.com/disk.img"}})
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "d"}, "spec": spec}


CLASSES = [sc("local", annotations=K8S_DEFAULT), sc("rbd", "rbd.csi.ceph.com"), sc("nfs", "nfs.example.com/x")]
PROFILES = {"local": profile("local", [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}]),
            "rbd": profile("rbd", RBD_SETS), "nfs": profile("nfs", None)}
CONFIG = resolve_config(None, CLASSES)


def render(dv_: dict[str, Any], classes: list[dict[str, Any]] = CLASSES,
           profiles: dict[str, dict[str, Any]] = PROFILES, config: Any = CONFIG) -> dict[str, Any]:
    return render_pvc_spec(dv_, storage_classes=classes, profiles=profiles, config=config)


# --- overhead math -----------------------------------------------------------------------------

@pytest.mark.parametrize("requested, overhead, expected", [
    (GI, "0.06", 1142278537),           # 1073741824 / 0.94, rounded up
    (GI, "0.055", 1136234735),          # 1073741824 / 0.945, rounded up
    (GI, "0", GI),
    (3 * MI + 1, "0", 4 * MI),          # aligned up to the next MiB first
    (1, "0", MI),
    (3 * MI + 1, "0.06", 4462026),      # 4 MiB / 0.94 = 4462025.5...
    (1000 * 1000 * 1000, "0", 954 * MI),
])
def test_required_space(requested: int, overhead: str, expected: int) -> None:
    assert required_space(overhead, requested) == expected


def test_required_space_refuses_overhead_one() -> None:
    with pytest.raises(ValueError):
        required_space("1", GI)


@pytest.mark.parametrize("size, text", [
    (1142278537, "1142278537"), (GI, "1073741824"), (125 * MI, "131072k"), (2 * 10**9, "2G"),
    (1500, "1500"), (0, "0"), (10**21, "1000E"),
])
def test_format_quantity_is_the_canonical_decimal_form(size: int, text: str) -> None:
    assert format_quantity(size) == text


@pytest.mark.parametrize("storage_class, overhead, expected", [
    ("local", "0.06", "1142278537"), ("local", "0.055", "1136234735"), ("local", "0", "1073741824"),
])
def test_filesystem_request_is_inflated(storage_class: str, overhead: str, expected: str) -> None:
    config = resolve_config({"spec": {"filesystemOverhead": {"global": "0.5", "storageClass": {"local": overhead}}}},
                            CLASSES)
    spec = render(dv({"storageClassName": storage_class}), config=config)
    assert spec["resources"]["requests"]["storage"] == expected


def test_odd_size_is_aligned_to_a_mebibyte() -> None:
    config = resolve_config({"spec": {"filesystemOverhead": {"global": "0"}}}, CLASSES)
    spec = render(dv({}, size="1000M"), config=config)
    assert spec["resources"]["requests"]["storage"] == str(954 * MI)


def test_block_is_not_inflated() -> None:
    spec = render(dv({"volumeMode": "Block", "storageClassName": "rbd"}))
    assert spec["resources"]["requests"]["storage"] == str(GI)
    assert spec["volumeMode"] == "Block"


# --- spec.pvc ----------------------------------------------------------------------------------

def test_pvc_is_returned_verbatim() -> None:
    pvc = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    source = dv(None, pvc=pvc)
    spec = render(source)
    assert spec == pvc
    spec["resources"]["requests"]["storage"] = "2Gi"
    assert source["spec"]["pvc"]["resources"]["requests"]["storage"] == "1Gi"


def test_neither_pvc_nor_storage() -> None:
    with pytest.raises(RenderError) as error:
        render(dv(None))
    assert (error.value.reason, error.value.message) == ("ErrClaimNotValid", MSG_PVC_OR_STORAGE)


# --- default class -----------------------------------------------------------------------------

@pytest.mark.parametrize("classes, archive, expected", [
    ([sc("a", annotations=K8S_DEFAULT), sc("b", annotations=VIRT_DEFAULT)], False, "b"),
    ([sc("a", annotations=K8S_DEFAULT), sc("b", annotations=VIRT_DEFAULT)], True, "a"),
    ([sc("a", annotations=K8S_DEFAULT), sc("b")], False, "a"),
    ([sc("old", annotations=K8S_DEFAULT, created="2024-01-01T00:00:00Z"),
      sc("new", annotations=K8S_DEFAULT, created="2025-06-01T00:00:00Z")], False, "new"),
    ([sc("z", annotations=K8S_DEFAULT, created="2024-01-01T00:00:00Z"),
      sc("y", annotations=K8S_DEFAULT, created="2024-01-01T00:00:00Z")], False, "y"),
    ([sc("a", annotations={"storageclass.kubernetes.io/is-default-class": "false"})], False, None),
    ([], False, None),
])
def test_default_storage_class(classes: list[dict[str, Any]], archive: bool, expected: str | None) -> None:
    chosen = default_storage_class(classes, archive=archive)
    assert (chosen["metadata"]["name"] if chosen else None) == expected


def test_rendering_uses_the_default_class() -> None:
    assert render(dv({}))["storageClassName"] == "local"


# --- modes from the profile --------------------------------------------------------------------

@pytest.mark.parametrize("given, access, volume", [
    ({}, ["ReadWriteMany"], "Block"),
    ({"volumeMode": "Filesystem"}, ["ReadWriteOnce"], "Filesystem"),
    ({"volumeMode": "Block"}, ["ReadWriteMany"], "Block"),
    ({"volumeMode": "FromStorageProfile"}, ["ReadWriteMany"], "Block"),
    ({"accessModes": ["ReadWriteOnce"]}, ["ReadWriteOnce"], "Block"),
    ({"accessModes": ["ReadOnlyMany"]}, ["ReadOnlyMany"], "Filesystem"),
    ({"accessModes": ["ReadOnlyMany"], "volumeMode": "Block"}, ["ReadOnlyMany"], "Block"),
])
def test_modes_from_the_profile(given: dict[str, Any], access: list[str], volume: str) -> None:
    spec = render(dv({"storageClassName": "rbd", **given}))
    assert (spec["accessModes"], spec["volumeMode"]) == (access, volume)


def test_archive_forces_filesystem() -> None:
    spec = render(dv({"storageClassName": "rbd"}, contentType="archive"))
    assert (spec["accessModes"], spec["volumeMode"]) == (["ReadWriteOnce"], "Filesystem")


def test_copied_fields_and_input_untouched() -> None:
    extra = {"selector": {"matchLabels": {"a": "b"}}, "volumeName": "pv-1",
             "dataSource": {"kind": "PersistentVolumeClaim", "name": "src"},
             "dataSourceRef": {"apiGroup": "cdi.kubevirt.io", "kind": "VolumeImportSource", "name": "s"}}
    source = dv({"storageClassName": "local", **extra})
    before = copy.deepcopy(source)
    spec = render(source)
    assert {k: spec[k] for k in extra} == extra
    assert source == before


def test_class_without_a_profile_gets_the_table_profile() -> None:
    spec = render(dv({"storageClassName": "local"}), profiles={})
    assert (spec["accessModes"], spec["volumeMode"]) == (["ReadWriteOnce"], "Filesystem")


def test_no_class_but_access_modes_given_is_accepted() -> None:
    spec = render(dv({"accessModes": ["ReadWriteOnce"]}), classes=[], profiles={})
    assert "storageClassName" not in spec
    assert spec["resources"]["requests"]["storage"] == "1142278537"


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, classes, message", [
    (dv({}), [], MSG_NO_CLASS),
    (dv({"storageClassName": "missing"}), CLASSES, MSG_NO_CLASS),
    (dv({"storageClassName": "nfs"}), CLASSES, "no accessMode specified in StorageProfile nfs"),
    (dv({"storageClassName": "nfs", "volumeMode": "Block"}), CLASSES, "no accessMode specified in StorageProfile nfs"),
    (dv({"storageClassName": "local", "volumeMode": "Block"}), CLASSES,
     "no matching accessMode specified in StorageProfile local"),
    (dv({}, size=None), CLASSES, MSG_NO_SIZE),
    (dv({}, size="512Ki"), CLASSES, MSG_TOO_SMALL),
    (dv({"volumeMode": "Block"}, contentType="archive"), CLASSES, MSG_ARCHIVE_BLOCK),
    (dv({}, size="lots"), CLASSES, "PVC Spec is not valid - invalid storage size 'lots'"),
])
def test_render_errors(source: dict[str, Any], classes: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(RenderError) as error:
        render(source, classes=classes)
    assert (error.value.reason, error.value.message, str(error.value)) == ("ErrClaimNotValid", message, message)


@pytest.mark.parametrize("spec", [
    {"source": {"pvc": {"namespace": "golden", "name": "fedora"}}},
    {"source": {"snapshot": {"namespace": "golden", "name": "snap"}}},
    {"source": None, "sourceRef": {"kind": "DataSource", "name": "fedora"}},
])
def test_clones_may_omit_the_size(spec: dict[str, Any]) -> None:
    rendered = render(dv({}, size=None, **spec))
    assert rendered["resources"]["requests"] == {}
    assert rendered["accessModes"] == ["ReadWriteOnce"]


# --- minimum size ------------------------------------------------------------------------------

@pytest.mark.parametrize("size, minimum, mode, expected", [
    ("1Gi", "4Gi", "Block", 4 * GI),
    ("5Gi", "4Gi", "Block", 5 * GI),
    ("1Gi", "", "Block", GI),
    ("1Gi", "bla", "Block", GI),
    ("1Gi", "4Gi", "Filesystem", required_space("0.06", 4 * GI)),   # minimum first, then overhead
    ("5Gi", "4Gi", "Filesystem", required_space("0.06", 5 * GI)),
])
def test_minimum_supported_size(size: str, minimum: str, mode: str, expected: int) -> None:
    profiles = {"rbd": profile("rbd", RBD_SETS, {"cdi.kubevirt.io/minimumSupportedPvcSize": minimum})}
    spec = render(dv({"storageClassName": "rbd", "volumeMode": mode}, size=size), profiles=profiles)
    assert spec["resources"]["requests"]["storage"] == format_quantity(expected)


# --- requested_image_size ----------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    (dv({}, size="10Gi"), "10Gi"),
    (dv(None, pvc={"resources": {"requests": {"storage": "5G"}}}), "5G"),
    (dv(None, pvc={"resources": {"requests": {"storage": 1048576}}}), "1048576"),
    (dv({}, size=None), None),
    (dv(None), None),
])
def test_requested_image_size(source: dict[str, Any], expected: str | None) -> None:
    assert requested_image_size(source) == expected


# --- storage_profile ---------------------------------------------------------------------------

def test_profile_for_a_known_provisioner() -> None:
    result = storage_profile(sc("cdi-local"), None)
    assert result["apiVersion"] == "cdi.kubevirt.io/v1beta1" and result["kind"] == "StorageProfile"
    assert result["metadata"]["name"] == "cdi-local"
    assert result["metadata"]["labels"] == {"app": "containerized-data-importer", "cdi.kubevirt.io": "",
                                            "app.kubernetes.io/managed-by": "cdi-controller",
                                            "app.kubernetes.io/component": "storage"}
    assert result["spec"] == {}
    assert result["status"] == {
        "storageClass": "cdi-local", "provisioner": "kubevirt.io.hostpath-provisioner",
        "claimPropertySets": [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}],
        "cloneStrategy": "copy", "dataImportCronSourceFormat": "pvc"}
    assert to_json(from_json(StorageProfile, result)) == {k: v for k, v in result.items()
                                                          if k in ("spec", "status")}


@pytest.mark.parametrize("provisioner, parameters, sets, strategy", [
    ("rook-ceph.rbd.csi.ceph.com", {}, RBD_SETS, "csi-clone"),
    ("nfs.csi.k8s.io", {}, [{"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem"}], "copy"),
    ("topolvm.io", {}, [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"},
                        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}], "copy"),
    ("ebs.csi.aws.com", {"type": "gp3"}, [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"}], "copy"),
    ("example.com/unknown", {}, None, "copy"),
])
def test_profile_for_known_and_unknown_provisioners(provisioner: str, parameters: dict[str, str],
                                                   sets: list[dict[str, Any]] | None, strategy: str) -> None:
    status = storage_profile(sc("x", provisioner, parameters=parameters), None)["status"]
    assert status.get("claimPropertySets") == sets
    assert status["cloneStrategy"] == strategy


def test_user_spec_is_kept_and_wins() -> None:
    user_sets = [{"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem"}]
    existing = {"metadata": {"name": "x", "labels": {"team": "storage"}, "annotations": {"note": "hi"}},
                "spec": {"claimPropertySets": user_sets, "cloneStrategy": "csi-clone",
                         "dataImportCronSourceFormat": "snapshot", "snapshotClass": "vsc"},
                "status": {"claimPropertySets": []}}
    result = storage_profile(sc("x"), existing)
    assert result["spec"] == existing["spec"] and result["spec"] is not existing["spec"]
    assert result["status"]["claimPropertySets"] == user_sets
    assert result["status"]["cloneStrategy"] == "csi-clone"
    assert result["status"]["dataImportCronSourceFormat"] == "snapshot"
    assert result["status"]["snapshotClass"] == "vsc"
    assert result["metadata"]["labels"]["team"] == "storage"
    assert result["metadata"]["annotations"] == {"note": "hi"}


@pytest.mark.parametrize("provisioner, parameters, snapshot_capable, strategy, source_format", [
    ("pd.csi.storage.gke.io", {}, False, "copy", "pvc"),
    ("pd.csi.storage.gke.io", {}, True, "snapshot", "snapshot"),
    ("example.com/unknown", {}, True, "snapshot", "pvc"),
    ("rook-ceph.rbd.csi.ceph.com", {}, False, "csi-clone", "pvc"),
])
def test_clone_strategy_and_source_format(provisioner: str, parameters: dict[str, str], snapshot_capable: bool,
                                          strategy: str, source_format: str) -> None:
    status = storage_profile(sc("x", provisioner, parameters=parameters), None,
                             snapshot_capable=snapshot_capable)["status"]
    assert (status["cloneStrategy"], status["dataImportCronSourceFormat"]) == (strategy, source_format)


def test_clone_strategy_annotation_on_the_class_wins() -> None:
    klass = sc("x", "rook-ceph.rbd.csi.ceph.com", annotations={"cdi.kubevirt.io/clone-strategy": "copy"})
    assert storage_profile(klass, None)["status"]["cloneStrategy"] == "copy"


@pytest.mark.parametrize("parameters, existing_annotations, expected", [
    ({"type": "gp3"}, {}, "1Gi"),
    ({"type": "io2"}, {}, "4Gi"),
    ({"type": "gp3"}, {"cdi.kubevirt.io/minimumSupportedPvcSize": "2Gi"}, "2Gi"),
    ({}, {}, None),
])
def test_minimum_size_annotation(parameters: dict[str, str], existing_annotations: dict[str, str],
                                 expected: str | None) -> None:
    existing = {"metadata": {"name": "x", "annotations": existing_annotations}, "spec": {}}
    metadata = storage_profile(sc("x", "ebs.csi.aws.com", parameters=parameters), existing)["metadata"]
    assert (metadata.get("annotations") or {}).get("cdi.kubevirt.io/minimumSupportedPvcSize") == expected
