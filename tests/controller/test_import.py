"""DataVolume imports end to end: the deployed controller, the real apiserver and node running
the project's importer image in pods, volumes from the CSI driver, nginx on the node IP.

Behaviours under test (CDI's acceptance scenarios, ref section 6.4):
- an http qcow2 and an https (certConfigMap) raw.xz import Succeed with progress 100.0%, the
  right bytes on the volume, CDI's events and the PVC annotations virtctl reads;
- the PVC is rendered from ``storage`` with the filesystem overhead, owned by the DataVolume;
- blank images on Filesystem and Block, with preallocation recorded in the annotation;
- 404 ends Failed at once with CDI's message; an unresolvable host ends Failed after the bounded
  number of attempts; an image larger than the PVC says "DataVolume too small to contain image";
  a checksum mismatch ends Failed with reason ChecksumError;
- progress between 1% and 99% is seen on a rate-limited source;
- a server that goes away mid-import and comes back with the file ends Succeeded, right bytes;
- deleting a DataVolume mid-import removes its PVC and importer pod;
- restarting the controller mid-import makes no second pod and the import still Succeeds;
- WaitForFirstConsumer is its own phase; ``bind.immediate.requested`` imports at once;
- sources this controller does not serve stay Pending with a condition that says so;
- ``retainAfterCompletion`` keeps the finished importer pod;
- a bare PVC with CDI's import annotations is imported (CDI's PVC-level flow), here a
  compressed VMDK whose grains are out of disk order: the first importer pod asks for scratch
  space (``requiresScratch``), the second gets a scratch PVC and converts it.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeenv.node.csi import CLASS_WFFC
from tests.controller.conftest import Controller, wait_for
from tests.controller.dvs import condition, create_dv, events_for, get_dv, phase, sha256_prefix, volume_path
from tests.servers.images import Image
from tests.servers.nginx import Nginx
from tests.servers import pki

A = "cdi.kubevirt.io/storage"


def succeeded(custom: client.CustomObjectsApi, ns: str, name: str, controller: Controller,
              timeout: float = 120) -> dict:
    def done() -> dict | None:
        dv = get_dv(custom, ns, name)
        status = (dv or {}).get("status") or {}
        assert status.get("phase") != "Failed", status
        return dv if status.get("phase") == "Succeeded" else None
    return wait_for(f"{name} Succeeded", done, timeout, controller)


def failed(custom: client.CustomObjectsApi, ns: str, name: str, controller: Controller,
           timeout: float = 120) -> dict:
    return wait_for(f"{name} Failed", lambda: (dv := get_dv(custom, ns, name)) and
                    (dv.get("status") or {}).get("phase") == "Failed" and dv, timeout, controller)


def test_http_qcow2_import_succeeds(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                    pod_nginx: Nginx, images: dict[str, Image], controller: Controller) -> None:
    create_dv(custom, ns, "qcow", {"http": {"url": f"{pod_nginx.http}/disk.qcow2"}}, size="64Mi")
    dv = succeeded(custom, ns, "qcow", controller)
    status = dv["status"]
    assert status["progress"] == "100.0%" and status["restartCount"] == 0 and status["claimName"] == "qcow"
    assert condition(dv, "Ready")["status"] == "True" and condition(dv, "Bound")["reason"] == "Bound"
    image = images["disk.qcow2"]
    assert sha256_prefix(volume_path(core, ns, "qcow"), image.raw_size) == image.raw_sha256
    pvc = core.read_namespaced_persistent_volume_claim("qcow", ns)
    notes = pvc.metadata.annotations
    assert notes[f"{A}.pod.phase"] == "Succeeded" and notes[f"{A}.import.endpoint"].endswith("/disk.qcow2")
    assert notes[f"{A}.pod.restarts"] == "0" and notes[f"{A}.condition.running"] == "false"
    assert pvc.metadata.owner_references[0].kind == "DataVolume" and pvc.metadata.owner_references[0].controller
    # 64Mi at the default 0.06 overhead, as CDI's GetRequiredSpace computes it
    assert pvc.spec.resources.requests["storage"] == str(-(-(64 << 20) * 100 // 94))
    reasons = [reason for _, reason, _ in events_for(core, ns, "qcow")]
    assert "ImportSucceeded" in reasons and "Bound" in reasons
    wait_for("the importer pod removed", lambda: not core.list_namespaced_pod(ns).items, 30)


def test_https_with_cert_config_map(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                    pod_nginx: Nginx, images: dict[str, Image], test_ca: pki.TestCA,
                                    controller: Controller) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "ca"}, "data": {"odd-name.pem": test_ca.cert.read_text()}})
    create_dv(custom, ns, "tls", {"http": {"url": f"{pod_nginx.https}/disk.raw.xz", "certConfigMap": "ca"}})
    succeeded(custom, ns, "tls", controller)
    image = images["disk.raw.xz"]
    assert sha256_prefix(volume_path(core, ns, "tls"), image.raw_size) == image.raw_sha256


def test_blank_filesystem_and_block_with_preallocation(custom: client.CustomObjectsApi, core: client.CoreV1Api,
                                                        ns: str, controller: Controller) -> None:
    create_dv(custom, ns, "blank-fs", {"blank": {}}, size="32Mi", preallocation=True)
    create_dv(custom, ns, "blank-block", {"blank": {}}, storage={
        "volumeMode": "Block", "resources": {"requests": {"storage": "32Mi"}}})
    for name in ("blank-fs", "blank-block"):
        succeeded(custom, ns, name, controller)
    fs = core.read_namespaced_persistent_volume_claim("blank-fs", ns).metadata.annotations
    assert fs[f"{A}.preallocation.requested"] == "true" and fs[f"{A}.preallocation"] == "true"
    disk = volume_path(core, ns, "blank-fs")
    assert disk.stat().st_blocks * 512 >= 30 << 20  # really allocated
    block = core.read_namespaced_persistent_volume_claim("blank-block", ns)
    assert block.spec.volume_mode == "Block" and block.spec.resources.requests["storage"] in ("32Mi", str(32 << 20))
    assert block.metadata.annotations[f"{A}.preallocation.requested"] == "false"


def test_404_fails_at_once_with_cdis_message(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                             pod_nginx: Nginx, controller: Controller) -> None:
    create_dv(custom, ns, "missing", {"http": {"url": f"{pod_nginx.http}/no-such-image.qcow2"}})
    dv = failed(custom, ns, "missing", controller)
    running = condition(dv, "Running")
    assert running["status"] == "False" and running["reason"] == "NotFound"
    assert "Unable to connect to http data source" in running["message"] and "404" in running["message"]
    assert dv["status"]["restartCount"] == 0
    assert any(reason == "ImportFailed" for _, reason, _ in events_for(core, ns, "missing"))
    wait_for("the failed importer pod removed", lambda: not core.list_namespaced_pod(ns).items, 30)


def test_unresolvable_host_fails_after_bounded_attempts(custom: client.CustomObjectsApi, ns: str,
                                                        controller: Controller) -> None:
    create_dv(custom, ns, "nodns", {"http": {"url": "http://i-made-this-up.invalid/disk.img"}})
    dv = failed(custom, ns, "nodns", controller, timeout=240)
    running = condition(dv, "Running")
    assert running["reason"] == "Error" and "gave up after 2 failed attempts" in running["message"]
    assert "Unable to" in running["message"]


def test_image_larger_than_the_volume(custom: client.CustomObjectsApi, ns: str, pod_nginx: Nginx,
                                      controller: Controller) -> None:
    create_dv(custom, ns, "small", {"http": {"url": f"{pod_nginx.http}/disk.qcow2"}}, size="8Mi")
    dv = failed(custom, ns, "small", controller)
    assert condition(dv, "Running")["message"] == "DataVolume too small to contain image"


def test_checksum_mismatch_fails_with_checksum_error(custom: client.CustomObjectsApi, core: client.CoreV1Api,
                                                     ns: str, pod_nginx: Nginx, controller: Controller) -> None:
    create_dv(custom, ns, "sum", {"http": {"url": f"{pod_nginx.http}/disk.raw.gz", "checksum": "sha256:" + "0" * 64}})
    dv = failed(custom, ns, "sum", controller)
    assert condition(dv, "Running")["reason"] == "ChecksumError"
    notes = core.read_namespaced_persistent_volume_claim("sum", ns).metadata.annotations
    assert notes[f"{A}.import.fatalError"] == "true"


def test_progress_moves_on_a_rate_limited_source(custom: client.CustomObjectsApi, ns: str, pod_nginx: Nginx,
                                                 controller: Controller) -> None:
    create_dv(custom, ns, "slow", {"http": {"url": f"{pod_nginx.slow}/disk.raw"}})
    seen: set[str] = set()

    def observe() -> bool:
        dv = get_dv(custom, ns, "slow") or {}
        status = dv.get("status") or {}
        seen.add(status.get("progress", ""))
        return status.get("phase") == "Succeeded"
    wait_for("the slow import", observe, 120, controller)
    assert any(re.fullmatch(r"([1-9]\d?)(\.\d+)?%", p) for p in seen), seen
    assert "100.0%" in seen


def test_server_gone_mid_import_comes_back(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                           pod_nginx: Nginx, images: dict[str, Image],
                                           controller: Controller) -> None:
    name = f"vanishing-{uuid.uuid4().hex[:6]}.raw"
    (pod_nginx.root / name).write_bytes(images["disk.raw"].path.read_bytes())
    create_dv(custom, ns, "vanish", {"http": {"url": f"{pod_nginx.slow}/{name}"}})
    wait_for("some progress", lambda: (((get_dv(custom, ns, "vanish") or {}).get("status") or {})
                                       .get("progress", "N/A")) not in ("N/A", "0.00%"), 60, controller)
    restart_nginx_without(pod_nginx, pod_nginx.root / name, outage=3.0)
    succeeded(custom, ns, "vanish", controller)
    image = images["disk.raw"]
    assert sha256_prefix(volume_path(core, ns, "vanish"), image.raw_size) == image.raw_sha256


def restart_nginx_without(server: Nginx, path: Path, outage: float) -> None:
    """Stop nginx (cutting the transfer), serve 404s for ``outage`` seconds, then the file again."""
    hidden = path.with_suffix(".hidden")
    server.stop()
    path.rename(hidden)
    server.process = subprocess.Popen(["nginx", "-c", str(server.prefix / "nginx.conf"), "-p", str(server.prefix)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(outage)
    hidden.rename(path)


def test_delete_mid_import_cleans_up(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                     pod_nginx: Nginx, controller: Controller) -> None:
    create_dv(custom, ns, "gone", {"http": {"url": f"{pod_nginx.slow}/disk.raw"}})
    wait_for("the import running", lambda: phase(custom, ns, "gone") == "ImportInProgress", 60, controller)
    custom.delete_namespaced_custom_object("cdi.kubevirt.io", "v1beta1", ns, "datavolumes", "gone")
    wait_for("PVC and pod gone", lambda: not core.list_namespaced_persistent_volume_claim(ns).items
             and not core.list_namespaced_pod(ns).items, 60, controller)


def test_controller_restart_mid_import(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                       pod_nginx: Nginx, controller: Controller) -> None:
    create_dv(custom, ns, "survive", {"http": {"url": f"{pod_nginx.slow}/disk.raw"}})
    wait_for("the import running", lambda: phase(custom, ns, "survive") == "ImportInProgress", 60, controller)
    pod_uid = core.read_namespaced_pod("importer-survive", ns).metadata.uid
    controller.restart()
    time.sleep(3)
    pods = core.list_namespaced_pod(ns).items
    assert [p.metadata.uid for p in pods] == [pod_uid]
    succeeded(custom, ns, "survive", controller)


def test_wait_for_first_consumer_and_immediate_bind(custom: client.CustomObjectsApi, ns: str, pod_nginx: Nginx,
                                                    controller: Controller) -> None:
    storage = {"storageClassName": CLASS_WFFC, "resources": {"requests": {"storage": "64Mi"}}}
    create_dv(custom, ns, "waits", {"blank": {}}, storage=storage)
    create_dv(custom, ns, "forced", {"http": {"url": f"{pod_nginx.http}/disk.qcow2"}}, storage=storage,
              annotations={f"{A}.bind.immediate.requested": "true"})
    wait_for("WaitForFirstConsumer", lambda: phase(custom, ns, "waits") == "WaitForFirstConsumer", 60, controller)
    succeeded(custom, ns, "forced", controller)
    assert phase(custom, ns, "waits") == "WaitForFirstConsumer"


def test_unsupported_source_says_so(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                    controller: Controller) -> None:
    create_dv(custom, ns, "gcs", {"gcs": {"url": "gs://bucket/disk.img"}})
    dv = wait_for("a Pending status", lambda: (d := get_dv(custom, ns, "gcs")) and (d.get("status") or {}).get("phase")
                  and d, 30, controller)
    assert dv["status"]["phase"] == "Pending"
    assert "does not import from gcs" in condition(dv, "Running")["message"]
    try:
        core.read_namespaced_persistent_volume_claim("gcs", ns)
        raise AssertionError("a PVC was created for a source nobody will fill")
    except ApiException as error:
        assert error.status == 404


def test_retain_after_completion_keeps_the_pod(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                               controller: Controller) -> None:
    create_dv(custom, ns, "kept", {"blank": {}}, size="16Mi",
              annotations={f"{A}.pod.retainAfterCompletion": "true"})
    succeeded(custom, ns, "kept", controller)
    time.sleep(3)  # a controller that deletes finished pods would have done so by now
    pod = core.read_namespaced_pod("importer-kept", ns)
    assert pod.status.phase == "Succeeded"


def test_bare_annotated_pvc_is_imported(core: client.CoreV1Api, ns: str, pod_nginx: Nginx,
                                        images: dict[str, Image], controller: Controller) -> None:
    """CDI's PVC-level flow: no DataVolume, only CDI's import annotations on a PVC."""
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": "bare", "annotations": {f"{A}.import.endpoint": f"{pod_nginx.http}/scrambled.vmdk.gz"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})
    wait_for("the PVC import", lambda: (core.read_namespaced_persistent_volume_claim("bare", ns).metadata.annotations
                                        or {}).get(f"{A}.pod.phase") == "Succeeded", 180, controller)
    annotations = core.read_namespaced_persistent_volume_claim("bare", ns).metadata.annotations
    assert annotations.get(f"{A}.import.requiresScratch") == "true"
    image = images["scrambled.vmdk.gz"]
    assert sha256_prefix(volume_path(core, ns, "bare"), image.raw_size) == image.raw_sha256
