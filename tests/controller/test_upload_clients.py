"""The upload clients users run, unchanged, against the whole stack as installed: the real control plane and
node, the controller, ``cdi-apiserver`` serving UploadTokenRequests through the aggregation
layer, and the upload proxy on a NodePort, all pods from our images.

- the real ``virtctl image-upload dv`` (built from kubevirt's Go module), run by a namespace
  editor (a ServiceAccount token bound to the aggregated ``edit`` role), trusting the proxy's CA
  through ``SSL_CERT_FILE`` and finding the proxy through CDIConfig;
- ``virtctl image-upload pvc`` into a WaitForFirstConsumer class with ``--force-bind`` (virtctl
  sets the bind annotation to ``""``, which CDI reads as present);
- ``cdi image-upload dv`` with the same flags, plus ``--ca`` and ``--checksum auto``.
Each ends with the right bytes on the volume.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kubeenv.node.csi import CLASS_WFFC
from kubeenv.virtctl import ensure_virtctl
from tests.controller.conftest import Controller, Installation, UploadProxy, wait_for
from tests.controller.dvs import get_dv, sha256_prefix, volume_path
from tests.servers.images import Image
from tests.servers.token_api import write_token_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
A = "cdi.kubevirt.io/storage"


@pytest.fixture
def editor(ns: str, core: client.CoreV1Api, kube: client.ApiClient, installed: Installation,
           tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for a user who may only edit namespace ``ns`` (the aggregated ``edit`` role)."""
    name = f"editor-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    client.RbacAuthorizationV1Api(kube).create_namespaced_role_binding(ns, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
    token = core.create_namespaced_service_account_token(name, ns, {"spec": {"expirationSeconds": 3600}}).status.token
    yield write_token_kubeconfig(tmp_path / "editor.kubeconfig", installed.plane, token, name)


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def assert_uploaded(core: client.CoreV1Api, ns: str, name: str, image: Image) -> None:
    notes = core.read_namespaced_persistent_volume_claim(name, ns).metadata.annotations
    assert notes[f"{A}.pod.phase"] == "Succeeded"
    assert sha256_prefix(volume_path(core, ns, name), image.raw_size) == image.raw_sha256


def test_real_virtctl_uploads_a_datavolume(ns: str, core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                          editor: Path, images: dict[str, Image], controller: Controller,
                                          upload_proxy: UploadProxy, upload_pki: Installation) -> None:
    image = images["disk.qcow2"]
    proc = run([str(ensure_virtctl()), "image-upload", "dv", "vdv", "--namespace", ns, "--size", "64Mi",
                "--image-path", str(image.path), "--wait-secs", "120", "--kubeconfig", str(editor)],
               env={"SSL_CERT_FILE": str(upload_pki.proxy_ca)})
    assert proc.returncode == 0, proc.stdout + proc.stderr + controller.log()[-2000:] + upload_proxy.log()[-2000:]
    assert "Processing completed successfully" in proc.stdout + proc.stderr
    wait_for("vdv Succeeded", lambda: ((get_dv(custom, ns, "vdv") or {}).get("status") or {}).get("phase")
             == "Succeeded", 60, controller)
    assert_uploaded(core, ns, "vdv", image)


def test_real_virtctl_force_binds_a_pvc(ns: str, core: client.CoreV1Api, images: dict[str, Image],
                                        installed: Installation, controller: Controller,
                                        upload_proxy: UploadProxy, upload_pki: Installation) -> None:
    image = images["disk.vhd"]
    proc = run([str(ensure_virtctl()), "image-upload", "pvc", "vpvc", "--namespace", ns, "--size", "64Mi",
                "--storage-class", CLASS_WFFC, "--force-bind", "--image-path", str(image.path),
                "--wait-secs", "120", "--kubeconfig", str(installed.kubeconfig)],
               env={"SSL_CERT_FILE": str(upload_pki.proxy_ca)})
    assert proc.returncode == 0, proc.stdout + proc.stderr + controller.log()[-2000:]
    assert core.read_namespaced_persistent_volume_claim("vpvc", ns).metadata.annotations[
        f"{A}.bind.immediate.requested"] == ""
    assert_uploaded(core, ns, "vpvc", image)


def test_cdi_image_upload_with_the_same_flags(ns: str, core: client.CoreV1Api, editor: Path,
                                              images: dict[str, Image], controller: Controller,
                                              upload_proxy: UploadProxy, upload_pki: Installation) -> None:
    image = images["disk.qcow2.gz"]
    proc = run([str(ROOT / ".venv/bin/cdi"), "image-upload", "dv", "cdv", "--namespace", ns, "--size", "64Mi",
                "--image-path", str(image.path), "--wait-secs", "120", "--kubeconfig", str(editor),
                "--ca", str(upload_pki.proxy_ca), "--checksum", "auto", "--no-progress"])
    assert proc.returncode == 0, proc.stdout + proc.stderr + controller.log()[-2000:]
    assert_uploaded(core, ns, "cdv", image)
