"""The whole golden-image path, end to end: a DataImportCron keeps a bootable image fresh from a
registry, a VirtualMachine in a tenant's namespace gets its root disk cloned from the golden
DataSource in a shared namespace (rendered exactly as KubeVirt's virt-controller renders its
``dataVolumeTemplates``), and the cloned disk boots under qemu (TCG) to the guest's marker line.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import GROUP, VERSION, Controller, wait_for
from tests.controller.dvs import as_user, bind, get_dv, volume_path
from tests.controller.kubevirt import ALLOW_CLAIM_ADOPTION, VM_CRD, render_data_volume
from tests.controller.test_clone import succeeded
from tests.controller.test_cron import allow_insecure, ready_source
from tests.kube.fixtures import make_namespace
from tests.servers.registry import Member, Pusher, Registry, config_blob, layer

ROOT = Path(__file__).resolve().parents[2]
MARKER = "CDI-PY-GOLDEN-VM-BOOT-OK"


@pytest.fixture(scope="module")
def bootable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bootable Linux disk (qcow2) of scripts/mk-bootable-image, printing MARKER."""
    out = tmp_path_factory.mktemp("bootable")
    subprocess.run([str(ROOT / "scripts" / "mk-bootable-image"), str(out), MARKER], check=True, capture_output=True,
                   timeout=600, cwd=ROOT)
    return out / "tiny.qcow2"


@pytest.fixture(scope="module")
def vm_crd(kube: client.ApiClient) -> Iterator[None]:
    extensions = client.ApiextensionsV1Api(kube)
    extensions.create_custom_resource_definition(VM_CRD)
    wait_for("the VirtualMachine CRD", lambda: any(
        c.type == "Established" and c.status == "True"
        for c in extensions.read_custom_resource_definition("virtualmachines.kubevirt.io").status.conditions or []), 30)
    yield
    extensions.delete_custom_resource_definition("virtualmachines.kubevirt.io")


@pytest.fixture
def shared(core: client.CoreV1Api) -> Iterator[str]:
    name = make_namespace(core, "golden-images")
    core.patch_namespace(name, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    yield name
    core.delete_namespace(name)


def boot(disk: Path, console: Path) -> str:
    with console.open("wb") as out:
        subprocess.run(["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
                        "-drive", f"file={disk},format=raw,if=virtio,readonly=on"],
                       stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False)
    return console.read_bytes().decode(errors="replace")


def test_vm_from_a_golden_image_boots(custom: client.CustomObjectsApi, core: client.CoreV1Api, shared: str,
                                      ns: str, bootable: Path, http_registry: Registry, relay_to: Any,
                                      vm_crd: None, golden_reader: str, controller: Controller,
                                      tmp_path: Path) -> None:
    # the golden image: a containerDisk in the registry, kept fresh by a cron in the shared namespace
    address = relay_to(f"http://{http_registry.host}")
    allow_insecure(custom, address)
    repository = f"containerdisks/tiny-{uuid.uuid4().hex[:6]}"
    Pusher(f"http://{http_registry.host}", verify=False).image(
        repository, "latest", [layer([Member("disk/tiny.qcow2", bootable.read_bytes())])], config_blob())
    custom.create_namespaced_custom_object(GROUP, VERSION, shared, "dataimportcrons", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataImportCron", "metadata": {"name": "tiny-cron"},
        "spec": {"schedule": "0 3 * * 1", "managedDataSource": "tiny",
                 "template": {"spec": {"source": {"registry": {"url": f"docker://{address}/{repository}:latest"}},
                                       "storage": {"resources": {"requests": {"storage": "96Mi"}}}}}}})
    ready_source(custom, shared, "tiny", controller)

    # a tenant's VM whose root disk comes from the golden DataSource
    user = f"tenant-{uuid.uuid4().hex[:6]}"
    bind(custom, ns, user, "edit")
    bind(custom, shared, user, golden_reader)
    template = {"metadata": {"name": "vm1-rootdisk", "labels": {"app": "vm1"}},
                "spec": {"sourceRef": {"kind": "DataSource", "name": "tiny", "namespace": shared},
                         "storage": {"resources": {"requests": {"storage": "96Mi"}}}}}
    vm = custom.create_namespaced_custom_object("kubevirt.io", "v1", ns, "virtualmachines", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm1"},
        "spec": {"runStrategy": "Halted", "dataVolumeTemplates": [template],
                 "template": {"spec": {"domain": {"devices": {}},
                                       "volumes": [{"name": "root", "dataVolume": {"name": "vm1-rootdisk"}}]}}}})
    data_source = custom.get_namespaced_custom_object(GROUP, VERSION, shared, "datasources", "tiny")
    body = render_data_volume(vm, template, data_source)
    assert body["spec"]["source"]["pvc"]["namespace"] == shared and "sourceRef" not in body["spec"]
    assert body["metadata"]["annotations"][ALLOW_CLAIM_ADOPTION] == "true"
    wait_for("the grants", lambda: _created(as_user(custom, user), ns, body), 30)
    dv = succeeded(custom, ns, "vm1-rootdisk", controller, timeout=300)
    assert dv["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachine"

    console = boot(volume_path(core, ns, "vm1-rootdisk"), tmp_path / "console.log")
    assert MARKER in console, console[-2000:]
    assert get_dv(custom, ns, "vm1-rootdisk") is not None


def _created(tenant: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> bool:
    try:
        tenant.create_namespaced_custom_object(GROUP, VERSION, ns, "datavolumes", body)
    except client.ApiException as error:
        if error.status == 403:
            return False
        raise
    return True
