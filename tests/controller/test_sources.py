"""S3 and registry DataVolumes through the controller, with the credentials and settings CDI uses.

Behaviours under test:
- an ``s3`` DataVolume with a ``secretRef`` (keys ``accessKeyId``/``secretKey``) imports from a
  real S3 server (SeaweedFS) over http, the right bytes on the volume; the controller never
  reads the Secret (its RBAC has no access to Secrets), the pod does through ``secretKeyRef``;
- a ``registry`` DataVolume imports a containerDisk from the real distribution registry over
  plain http once the registry is listed in CDIConfig ``insecureRegistries`` (INSECURE_TLS);
  the image's ``*_KUBEVIRT_IO_*`` env becomes labels on the PVC;
- the controller keeps CDIConfig ``config`` and a StorageProfile per StorageClass up to date.
"""

from __future__ import annotations

import base64
import hashlib

from kubernetes import client

from kubeenv.node.csi import CLASS_IMMEDIATE
from tests.controller.conftest import Controller, wait_for
from tests.controller.dvs import create_dv, get_dv, sha256_prefix, volume_path
from tests.controller.test_import import succeeded
from tests.servers.images import Image
from tests.servers.registry import Registry
from tests.servers.seaweed import SeaweedS3


def test_s3_import_with_secret(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                               seaweed_s3: SeaweedS3, images: dict[str, Image], relay_to: object,
                               controller: Controller) -> None:
    image = images["disk.qcow2.xz"]
    seaweed_s3.put("controller/disk.qcow2.xz", image.path.read_bytes())
    address = relay_to(seaweed_s3.http_endpoint)  # type: ignore[operator]
    core.create_namespaced_secret(ns, {"metadata": {"name": "s3-creds"}, "data": {
        "accessKeyId": base64.b64encode(seaweed_s3.access_key.encode()).decode(),
        "secretKey": base64.b64encode(seaweed_s3.secret_key.encode()).decode()}})
    url = f"http://{address}/{seaweed_s3.bucket}/controller/disk.qcow2.xz"
    create_dv(custom, ns, "from-s3", {"s3": {"url": url, "secretRef": "s3-creds"}})
    succeeded(custom, ns, "from-s3", controller)
    assert sha256_prefix(volume_path(core, ns, "from-s3"), image.raw_size) == image.raw_sha256


def test_registry_import_from_an_insecure_registry(custom: client.CustomObjectsApi, core: client.CoreV1Api,
                                                    ns: str, http_registry: Registry, relay_to: object,
                                                    controller: Controller) -> None:
    address = relay_to(f"http://{http_registry.host}")  # type: ignore[operator]
    config = custom.get_cluster_custom_object("cdi.kubevirt.io", "v1beta1", "cdiconfigs", "config")
    registries = sorted(set((config.get("spec") or {}).get("insecureRegistries") or []) | {address})
    custom.patch_cluster_custom_object("cdi.kubevirt.io", "v1beta1", "cdiconfigs", "config",
                                       {"spec": {"insecureRegistries": registries}})
    pushed = http_registry.images["simple"]  # a raw disk in a gzip layer, with KUBEVIRT_IO env labels
    create_dv(custom, ns, "from-registry", {"registry": {"url": pushed.url(address)}})
    succeeded(custom, ns, "from-registry", controller)
    disk = volume_path(core, ns, "from-registry")
    assert sha256_prefix(disk, len(pushed.disk)) == hashlib.sha256(pushed.disk).hexdigest()
    labels = core.read_namespaced_persistent_volume_claim("from-registry", ns).metadata.labels or {}
    assert labels.get("instancetype.kubevirt.io/default-instancetype") == "u1.small"
    assert labels.get("instancetype.kubevirt.io/default-preference") == "fedora"


def test_cdiconfig_and_storage_profiles_are_maintained(custom: client.CustomObjectsApi,
                                                        controller: Controller) -> None:
    config = wait_for("CDIConfig status", lambda: (c := custom.get_cluster_custom_object(
        "cdi.kubevirt.io", "v1beta1", "cdiconfigs", "config")).get("status") and c, 30, controller)
    overhead = config["status"]["filesystemOverhead"]
    assert overhead["global"] == "0.06" and overhead["storageClass"][CLASS_IMMEDIATE] == "0.06"
    profile = wait_for("a StorageProfile", lambda: _profile(custom, CLASS_IMMEDIATE), 30, controller)
    assert profile["status"]["storageClass"] == CLASS_IMMEDIATE
    modes = [(s["accessModes"], s["volumeMode"]) for s in profile["status"]["claimPropertySets"]]
    assert (["ReadWriteOnce"], "Filesystem") in modes and (["ReadWriteOnce"], "Block") in modes
    assert get_dv(custom, "default", "no-such-dv") is None


def _profile(custom: client.CustomObjectsApi, name: str) -> dict | None:
    try:
        profile: dict = custom.get_cluster_custom_object("cdi.kubevirt.io", "v1beta1", "storageprofiles", name)
    except client.ApiException:
        return None
    return profile if profile.get("status", {}).get("claimPropertySets") else None
