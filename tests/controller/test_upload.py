"""Uploads end to end: the controller runs an upload server pod per volume, the upload proxy on
the host finds it through the PVC's annotations and the Service's endpoints, and real clients
(our client library, curl) send images through the proxy over TLS.

Behaviours under test:
- an upload DataVolume goes UploadScheduled -> UploadReady -> Succeeded with CDI's events; the
  image lands converted on the volume; the PVC carries ``pod.phase=Succeeded``; the upload pod
  and its Service are gone afterwards; CDIConfig publishes the proxy's URL;
- progress while an upload runs (curl at 2 MB/s): the DataVolume shows it between 1% and 99%,
  read from the upload server's metric (CDI shows N/A), then 100.0%;
- curl on CDI's sync path into a Block volume;
- an archive DataVolume: a tar unpacked into the volume;
- a bare PVC marked ``upload.target`` (virtctl's ``pvc`` mode) is served the same way;
- refusals with CDI's codes, and nothing lost: an expired token (401), a volume whose server is
  not up yet (503 after the proxy's wait), an image larger than the volume (400, the volume
  stays UploadReady and takes a right-sized image next), a volume already uploaded (503).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

from kubernetes import client
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeenv.node.csi import CLASS_WFFC
from tests.controller.conftest import GROUP, VERSION, Controller, Installation, UploadProxy, wait_for
from tests.controller.dvs import create_dv, events_for, get_dv, phase, sha256_prefix, volume_path
from tests.servers.images import Image
from uploadproxy import client as upload_client
from uploadproxy import tokens

A = "cdi.kubevirt.io/storage"


def wait_phase(custom: client.CustomObjectsApi, ns: str, name: str, want: str, controller: Controller,
               timeout: float = 90) -> dict:
    def reached() -> dict | None:
        dv = get_dv(custom, ns, name) or {}
        assert (dv.get("status") or {}).get("phase") != "Failed", dv.get("status")
        return dv if (dv.get("status") or {}).get("phase") == want else None
    return wait_for(f"{name} {want}", reached, timeout, controller)


def curl_upload(proxy: UploadProxy, pki: Installation, token: str, path: Path,
                route: str = "/v1beta1/upload") -> tuple[int, str]:
    proc = subprocess.run(["curl", "-sS", "--cacert", str(pki.proxy_ca), "-H", f"Authorization: Bearer {token}",
                           "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{path}",
                           "-o", "-", "-w", "\n%{http_code}", f"{proxy.url}{route}"],
                          capture_output=True, text=True, timeout=300)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def test_upload_datavolume_end_to_end(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                      images: dict[str, Image], controller: Controller,
                                      upload_proxy: UploadProxy, upload_pki: Installation,
                                      token_key: rsa.RSAPrivateKey) -> None:
    create_dv(custom, ns, "up", {"upload": {}}, size="64Mi")
    dv = wait_phase(custom, ns, "up", "UploadReady", controller)
    assert dv["status"]["claimName"] == "up"
    pvc = core.read_namespaced_persistent_volume_claim("up", ns)
    notes = pvc.metadata.annotations
    assert notes[f"{A}.upload.target"] == "" and notes[f"{A}.contentType"] == "kubevirt"
    assert notes[f"{A}.pod.ready"] == "true" and notes[f"{A}.uploadPodName"] == "cdi-upload-up"
    service = core.read_namespaced_service("cdi-upload-up", ns)
    assert service.spec.ports[0].port == 8443 and service.metadata.owner_references[0].kind == "PersistentVolumeClaim"

    image = images["disk.qcow2.xz"]
    result = upload_client.upload(upload_proxy.url, tokens.issue(token_key, ns, "up"), image.path,
                                  ca=upload_pki.proxy_ca, checksum=True)
    assert result.bytes_sent == image.path.stat().st_size

    wait_phase(custom, ns, "up", "Succeeded", controller)
    assert sha256_prefix(volume_path(core, ns, "up"), image.raw_size) == image.raw_sha256
    assert core.read_namespaced_persistent_volume_claim("up", ns).metadata.annotations[f"{A}.pod.phase"] == "Succeeded"
    reasons = [reason for _, reason, _ in events_for(core, ns, "up")]
    assert {"UploadScheduled", "UploadReady", "UploadSucceeded"} <= set(reasons), reasons
    wait_for("the upload pod and Service removed",
             lambda: not core.list_namespaced_pod(ns).items and not core.list_namespaced_service(ns).items, 30)
    config = custom.get_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config")
    assert config["status"]["uploadProxyURL"] == upload_proxy.url


def test_curl_sync_upload_into_a_block_volume(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                             images: dict[str, Image], controller: Controller,
                                             upload_proxy: UploadProxy, upload_pki: Installation,
                                             token_key: rsa.RSAPrivateKey) -> None:
    create_dv(custom, ns, "blk", {"upload": {}},
              storage={"volumeMode": "Block", "resources": {"requests": {"storage": "64Mi"}}})
    wait_phase(custom, ns, "blk", "UploadReady", controller)
    image = images["disk.raw.zst"]
    code, body = curl_upload(upload_proxy, upload_pki, tokens.issue(token_key, ns, "blk"), image.path)
    assert code == 200, body + upload_proxy.log()[-3000:]
    wait_phase(custom, ns, "blk", "Succeeded", controller)
    assert sha256_prefix(volume_path(core, ns, "blk"), image.raw_size) == image.raw_sha256


def test_archive_upload_unpacks_into_the_volume(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                                controller: Controller, upload_proxy: UploadProxy,
                                                upload_pki: Installation, token_key: rsa.RSAPrivateKey,
                                                tmp_path: Path) -> None:
    archive = tmp_path / "files.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("hello.txt", b"hello\n"), ("dir/inner.bin", bytes(range(256)) * 64)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    create_dv(custom, ns, "arc", {"upload": {}}, size="16Mi", contentType="archive")
    wait_phase(custom, ns, "arc", "UploadReady", controller)
    upload_client.upload(upload_proxy.url, tokens.issue(token_key, ns, "arc"), archive, ca=upload_pki.proxy_ca)
    wait_phase(custom, ns, "arc", "Succeeded", controller)
    volume = volume_path(core, ns, "arc").parent
    assert (volume / "hello.txt").read_bytes() == b"hello\n"
    assert (volume / "dir" / "inner.bin").read_bytes() == bytes(range(256)) * 64
    assert not (volume / "disk.img").exists()


def test_bare_pvc_marked_as_upload_target(core: client.CoreV1Api, ns: str, images: dict[str, Image],
                                          controller: Controller, upload_proxy: UploadProxy,
                                          upload_pki: Installation, token_key: rsa.RSAPrivateKey) -> None:
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": "bare", "annotations": {f"{A}.upload.target": "", f"{A}.contentType": "kubevirt"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})

    def notes() -> dict[str, str]:
        return core.read_namespaced_persistent_volume_claim("bare", ns).metadata.annotations or {}
    wait_for("the upload server ready", lambda: notes().get(f"{A}.pod.ready") == "true", 90, controller)
    image = images["disk.vmdk"]
    upload_client.upload(upload_proxy.url, tokens.issue(token_key, ns, "bare"), image.path, ca=upload_pki.proxy_ca)
    wait_for("pod.phase Succeeded", lambda: notes().get(f"{A}.pod.phase") == "Succeeded", 90, controller)
    assert sha256_prefix(volume_path(core, ns, "bare"), image.raw_size) == image.raw_sha256


def test_refusals_keep_the_volume_usable(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                         images: dict[str, Image], controller: Controller,
                                         upload_proxy: UploadProxy, upload_pki: Installation,
                                         token_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    # not up yet: a WaitForFirstConsumer volume gets no upload server until something consumes it
    create_dv(custom, ns, "later", {"upload": {}}, size="16Mi",
              storage={"storageClassName": CLASS_WFFC, "resources": {"requests": {"storage": "16Mi"}}})
    wait_for("WaitForFirstConsumer", lambda: phase(custom, ns, "later") == "WaitForFirstConsumer", 60, controller)
    started = time.monotonic()
    code, body = curl_upload(upload_proxy, upload_pki, tokens.issue(token_key, ns, "later"), images["disk.raw"].path)
    assert code == 503 and "not ready" in body, (code, body)
    assert time.monotonic() - started >= 9  # the proxy waited for the server, as CDI's does

    create_dv(custom, ns, "small", {"upload": {}}, size="32Mi")
    wait_phase(custom, ns, "small", "UploadReady", controller)
    expired = tokens.issue(token_key, ns, "small", now=time.time() - 600)
    code, body = curl_upload(upload_proxy, upload_pki, expired, images["disk.raw"].path)
    assert code == 401, (code, body)

    big = tmp_path / "big.raw"
    with open(big, "wb") as out:
        out.truncate(256 << 20)
        out.seek(100 << 20)
        out.write(b"data past the end of a 32Mi volume")
    code, body = curl_upload(upload_proxy, upload_pki, tokens.issue(token_key, ns, "small"), big)
    assert code == 400 and "larger than" in body, (code, body)
    assert phase(custom, ns, "small") == "UploadReady"

    image = images["disk.qcow2"]
    code, body = curl_upload(upload_proxy, upload_pki, tokens.issue(token_key, ns, "small"), image.path)
    assert code == 200, body + upload_proxy.log()[-3000:]
    wait_phase(custom, ns, "small", "Succeeded", controller)
    assert sha256_prefix(volume_path(core, ns, "small"), image.raw_size) == image.raw_sha256

    code, body = curl_upload(upload_proxy, upload_pki, tokens.issue(token_key, ns, "small"), image.path)
    assert code == 503 and "already finished" in body, (code, body)


def test_progress_of_a_running_upload(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                      images: dict[str, Image], controller: Controller,
                                      upload_proxy: UploadProxy, upload_pki: Installation,
                                      token_key: rsa.RSAPrivateKey) -> None:
    create_dv(custom, ns, "slow", {"upload": {}}, size="64Mi")
    wait_phase(custom, ns, "slow", "UploadReady", controller)
    image = images["disk.raw"]
    token = tokens.issue(token_key, ns, "slow")
    curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "2M", "--cacert", str(upload_pki.proxy_ca),
                             "-H", f"Authorization: Bearer {token}", "--data-binary", f"@{image.path}",
                             "-o", "/dev/null", "-w", "%{http_code}", f"{upload_proxy.url}/v1beta1/upload"],
                            stdout=subprocess.PIPE, text=True)
    try:
        def midway() -> str | None:
            progress = ((get_dv(custom, ns, "slow") or {}).get("status") or {}).get("progress", "N/A")
            return progress if progress.endswith("%") and 1 < float(progress[:-1]) < 99 else None
        wait_for("progress between 1% and 99%", midway, 60, controller)
    finally:
        out, _ = curl.communicate(timeout=120)
    assert out == "200"
    dv = wait_phase(custom, ns, "slow", "Succeeded", controller)
    assert dv["status"]["progress"] == "100.0%"
    assert sha256_prefix(volume_path(core, ns, "slow"), image.raw_size) == image.raw_sha256
