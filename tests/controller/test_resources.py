"""Worker pods get their resources from CDIConfig, as CDI's do, and a 2 GiB import fits in 256Mi.

CDI's own importer is known to be OOMKilled at 600M on some images (kubevirt#15971). Here
CDIConfig's ``podResourceRequirements`` limits worker pods to 256Mi; the controller must put that
limit on the importer pod (the kernel enforces it on this node: tests/kube/test_node.py shows an
OOMKill at 64Mi), and a 2 GiB qcow2 with 512 MiB of random data must import in one run: the pod
terminated with ``Completed``, never restarted, the bytes right.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.controller.conftest import GROUP, VERSION, Controller, wait_for
from tests.controller.dvs import create_dv, sha256_prefix, volume_path
from tests.controller.test_import import A, succeeded
from tests.servers.images import sha256_file
from tests.servers.nginx import Nginx

LIMIT = "256Mi"
SIZE = 2 << 30


@pytest.fixture
def limited(custom: client.CustomObjectsApi, controller: Controller) -> Iterator[None]:
    """CDIConfig limiting worker pods to 256Mi of memory, put back afterwards."""
    resources = {"limits": {"memory": LIMIT, "cpu": "1"}, "requests": {"memory": LIMIT, "cpu": "100m"}}
    custom.patch_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config",
                                       {"spec": {"podResourceRequirements": resources}})
    wait_for("CDIConfig status to carry the limit", lambda: ((custom.get_cluster_custom_object(
        GROUP, VERSION, "cdiconfigs", "config").get("status") or {}).get("defaultPodResourceRequirements") or {})
        .get("limits", {}).get("memory") == LIMIT, 60, controller)
    yield
    custom.patch_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config",
                                       {"spec": {"podResourceRequirements": None}})


@pytest.fixture
def big_qcow2(pod_nginx: Nginx) -> Iterator[tuple[str, str]]:
    """A 2 GiB qcow2 whose every fourth MiB-aligned 4 MiB is random (512 MiB of data): name, raw sha256."""
    raw, image = pod_nginx.root / "big.raw", pod_nginx.root / "big.qcow2"
    with open(raw, "wb") as out:
        out.truncate(SIZE)
        for offset in range(0, SIZE, 16 << 20):
            out.seek(offset)
            out.write(os.urandom(4 << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True, timeout=300)
    digest = sha256_file(raw)
    raw.unlink()
    yield image.name, digest
    image.unlink()


def test_a_2gib_import_fits_in_256mi(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                     pod_nginx: Nginx, controller: Controller, limited: None,
                                     big_qcow2: tuple[str, str]) -> None:
    name, digest = big_qcow2
    create_dv(custom, ns, "big", {"http": {"url": f"{pod_nginx.http}/{name}"}}, size="2Gi",
              annotations={f"{A}.pod.retainAfterCompletion": "true"})
    dv = succeeded(custom, ns, "big", controller, timeout=400)
    assert dv["status"]["restartCount"] == 0
    pod = core.read_namespaced_pod("importer-big", ns)
    container = pod.spec.containers[0]
    assert container.resources.limits["memory"] == LIMIT
    status = pod.status.container_statuses[0]
    assert status.restart_count == 0 and status.state.terminated.reason == "Completed"
    assert sha256_prefix(volume_path(core, ns, "big"), SIZE) == digest
