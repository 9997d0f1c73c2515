"""``cdi image-upload`` and ``cdi.upload_image``: virtctl's image-upload, flag for flag.

Behaviours under test:
- bad command lines exit 3 with one line saying what to change, before any cluster is
  contacted: no --size when creating, both or neither of --image-path/--archive-path, an
  archive into a block volume, ReadOnlyMany, a missing file, a bad quantity or checksum, an
  unknown flag (argparse's own errors exit 3 here too); the library raises the same errors;
- an existing PVC is refused when its upload pod already Succeeded, when it is not an upload
  target (without --no-create), and for an archive unless its content type is archive;
- readiness: UploadReady is ready; WaitForFirstConsumer/PendingPopulation without
  --force-bind, Failed, and ErrClaimNotValid (event or condition) fail at once; a PVC is
  ready when its upload pod is, and fails on ProvisioningFailed; a DataVolume is done only
  when both its PVC's pod and its own phase say Succeeded;
- a PVC for an archive says so in its content type and gets ReadWriteOnce by default;

against the real kube-apiserver, with a stand-in controller (:mod:`tests.cli.upload_cluster`)
and the real upload proxy and server in-process:
- dv mode creates the DataVolume with CDI's spec (upload source, content type, storage
  request, class, access and volume mode, bind.immediate with --force-bind), waits for
  UploadReady, uploads, waits for Succeeded, publishes the DataSource; the bytes arrive intact;
- pvc mode with --no-create annotates an existing plain PVC as an upload target and uploads
  into it; the progress callback reaches the file size;
- a DataVolume stuck in WaitForFirstConsumer without --force-bind fails at once (exit 2,
  naming --force-bind), and the DataVolume the command created is deleted again;
- an already-Succeeded PVC is refused (exit 2);
- with no --uploadproxy-url the proxy URL comes from CDIConfig status (https:// added), an
  override in its spec wins, and neither is a clear error;
- a 401 on a later attempt (the first token expired mid-upload) gets a fresh token from the
  token source and the upload completes.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import cdi
from cdi import cli
from cdi.controller import annotations as ann
from cdi.imageupload import manifests, waiting
from cdi.imageupload import tokens as token_api
from cdi.imageupload.errors import InvalidUploadRequest, VolumeNotUsable
from cdi.imageupload.options import UploadRequest
from cdi.imageupload.volumes import check_existing_pvc
from kubeenv.controlplane import ControlPlane
from tests.cli.upload_cluster import GROUP, VERSION, FakeUploadController, apply_crds
from tests.kube.fixtures import make_namespace
from tests.uploadproxy.cutter import UploadCutter
from tests.uploadproxy.harness import (LoopThread, Pki, ProxyHandle, ServerHandle, make_pki, server_settings,
                                       start_proxy, start_server)
from uploadproxy import tokens

CDI = str(Path(sys.executable).with_name("cdi"))
MiB = 1 << 20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 MiB of random bytes: a raw image the server stores as it is."""
    path = tmp_path_factory.mktemp("upload-image") / "disk.raw"
    path.write_bytes(random.Random(7).randbytes(8 * MiB))
    return path


# -- the command line, no cluster -----------------------------------------------------------------

USAGE_ERRORS = [
    ("dv d --image-path {img}", "--size is required"),
    ("dv d --image-path {img} --archive-path {img} --size 1Gi", "not both"),
    ("dv d --size 1Gi", "nothing to upload"),
    ("dv d --image-path {missing} --size 1Gi", "cannot read"),
    ("pvc d --archive-path {img} --size 1Gi --volume-mode block", "needs --volume-mode filesystem"),
    ("pvc d --image-path {img} --size 1Gi --access-mode ReadOnlyMany", "ReadOnlyMany"),
    ("dv d --image-path {img} --size ten", "invalid quantity"),
    ("dv d --image-path {img} --size 1Gi --volume-mode tape", "unknown volume mode"),
    ("dv d --image-path {img} --size 1Gi --checksum sha256:abc", "64 hex digits"),
    ("dv Disk --image-path {img} --size 1Gi", "invalid name"),
    ("dv d --image-path {img} --size 1Gi", "no such file"),  # the --kubeconfig below
]


@pytest.mark.parametrize("line,message", USAGE_ERRORS)
def test_usage_errors(line: str, message: str, image: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["image-upload", *line.format(img=image, missing=tmp_path / "nope").split(),
            "--kubeconfig", str(tmp_path / "no-kubeconfig")]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_argparse_errors_exit_3_from_the_console_script(image: Path) -> None:
    proc = subprocess.run([CDI, "image-upload", "dv", "d", "--image-path", str(image), "--bogus"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "unrecognized arguments: --bogus" in proc.stderr


def test_library_validates_before_connecting(image: Path) -> None:
    with pytest.raises(InvalidUploadRequest, match="--size is required"):
        cdi.upload_image("disk", image, kubeconfig="/nonexistent/kubeconfig")


def pvc_body(notes: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "disk", "annotations": notes},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, **spec}}


@pytest.mark.parametrize("notes,spec,archive,no_create,message", [
    ({ann.UPLOAD_TARGET: "", ann.POD_PHASE: "Succeeded"}, {}, False, False, "already successfully imported"),
    ({}, {}, False, False, "not an upload target: pass --no-create"),
    ({ann.UPLOAD_TARGET: "", ann.CONTENT_TYPE: "kubevirt"}, {}, True, False, "content type archive"),
    ({ann.UPLOAD_TARGET: "", ann.CONTENT_TYPE: "archive"}, {"volumeMode": "Block"}, True, False,
     "needs a Filesystem volume"),
    ({ann.UPLOAD_TARGET: ""}, {"accessModes": ["ReadOnlyMany"]}, False, True, "read-only"),
])
def test_existing_pvc_refused(notes: dict[str, str], spec: dict[str, Any], archive: bool, no_create: bool,
                              message: str, image: Path) -> None:
    request = UploadRequest(kind="pvc", name="disk", path=image, archive=archive, no_create=no_create)
    with pytest.raises(VolumeNotUsable, match=message):
        check_existing_pvc(pvc_body(notes, **spec), request)


def dv_with(phase: str, *conditions: dict[str, str]) -> dict[str, Any]:
    return {"status": {"phase": phase, "conditions": list(conditions)}}


CLAIM_EVENT = {"reason": "ErrClaimNotValid", "message": "storage class fast not found"}


@pytest.mark.parametrize("dv,events,force_bind,outcome", [
    (dv_with("UploadReady"), [], False, True),
    (dv_with("Pending"), [], False, False),
    (dv_with("WaitForFirstConsumer"), [], True, False),  # --force-bind: the controller will bind it
    (dv_with("WaitForFirstConsumer"), [], False, "pass --force-bind"),
    (dv_with("PendingPopulation"), [], False, "pass --force-bind"),
    (dv_with("Failed", {"type": "Ready", "reason": "Error", "message": "no space"}), [], False, "failed: .*no space"),
    (dv_with("Pending"), [CLAIM_EVENT], False, "invalid claim .*storage class fast not found"),
    (dv_with("Pending", {"type": "Bound", "reason": "ErrClaimNotValid"}), [], True, "invalid claim"),
    (None, [], False, "not found"),
])
def test_datavolume_readiness(dv: dict[str, Any] | None, events: list[dict[str, str]], force_bind: bool,
                              outcome: bool | str, image: Path) -> None:
    request = UploadRequest(kind="dv", name="disk", path=image, force_bind=force_bind)
    if isinstance(outcome, str):
        with pytest.raises(VolumeNotUsable, match=outcome):
            waiting.datavolume_ready(dv, events, request)
    else:
        assert waiting.datavolume_ready(dv, events, request)[0] is outcome


def test_pvc_readiness_and_completion(image: Path) -> None:
    request = UploadRequest(kind="pvc", name="disk", path=image)
    assert waiting.pvc_ready(pvc_body({ann.POD_READY: "true"}), [], request)[0]
    assert not waiting.pvc_ready(pvc_body({}), [], request)[0]
    with pytest.raises(VolumeNotUsable, match="could not be provisioned: no capacity"):
        waiting.pvc_ready(pvc_body({}), [{"reason": "ProvisioningFailed", "message": "no capacity"}], request)
    assert waiting.processing_done(pvc_body({ann.POD_PHASE: "Succeeded"}), None, request)[0]
    dv_request = UploadRequest(kind="dv", name="disk", path=image)
    assert not waiting.processing_done(pvc_body({ann.POD_PHASE: "Succeeded"}), dv_with("UploadReady"),
                                       dv_request)[0]
    with pytest.raises(VolumeNotUsable, match="failed after the upload"):
        waiting.processing_done(pvc_body({ann.POD_PHASE: "Running"}), dv_with("Failed"), dv_request)


def test_archive_pvc_manifest(image: Path) -> None:
    request = UploadRequest(kind="pvc", name="files", path=image, namespace="ns", archive=True, size="2Gi")
    body = manifests.upload_pvc(request)
    assert body["metadata"]["annotations"] == {ann.UPLOAD_TARGET: "", ann.CONTENT_TYPE: "archive"}
    assert body["spec"] == {"resources": {"requests": {"storage": "2Gi"}}, "accessModes": ["ReadWriteOnce"]}
    assert manifests.datavolume(request)["spec"]["contentType"] == "archive"


# -- against the apiserver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds_and_namespace(control_plane: ControlPlane, kube: client.ApiClient) -> Iterator[tuple[ControlPlane, str]]:
    """The CRDs applied, and one namespace for this module's volumes (each test its own name)."""
    apply_crds(control_plane)
    core = client.CoreV1Api(kube)
    namespace = make_namespace(core, "image-upload")
    yield control_plane, namespace
    core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("upload-pki"), tokens.generate_key())


@pytest.fixture(scope="module")
def proxy(loop: LoopThread, pki: Pki) -> Iterator[ProxyHandle]:
    handle = start_proxy(loop, pki)
    yield handle
    loop.run(handle.proxy.stop())


@pytest.fixture
def server(loop: LoopThread, pki: Pki, tmp_path: Path) -> Iterator[ServerHandle]:
    handle = start_server(loop, server_settings(pki, tmp_path / "volume"))
    yield handle
    loop.run(handle.server.stop())


@pytest.fixture
def token_source(pki: Pki) -> Callable[[str, str], str]:
    return lambda namespace, pvc: tokens.issue(pki.token_key, namespace, pvc)


@pytest.fixture
def cli_tokens(monkeypatch: pytest.MonkeyPatch, token_source: Callable[[str, str], str]) -> None:
    """The command's default token source (CDI's UploadTokenRequest API, not served here) swapped
    for the test issuer."""
    monkeypatch.setattr(token_api, "api_token_source", lambda api: token_source)


def custom_object(kube: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    answer = client.CustomObjectsApi(kube).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name,
                                                                         _preload_content=False)
    found: dict[str, Any] = json.loads(answer.data)
    return found


def read_pvc(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    answer = client.CoreV1Api(kube).read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False)
    found: dict[str, Any] = json.loads(answer.data)
    return found


def upload_argv(kind: str, name: str, namespace: str, image: Path, plane: ControlPlane, *extra: str) -> list[str]:
    return ["image-upload", kind, name, "-n", namespace, "--image-path", str(image),
            "--kubeconfig", str(plane.kubeconfig), *extra]


def test_dv_mode(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient, loop: LoopThread, pki: Pki,
                 proxy: ProxyHandle, server: ServerHandle, image: Path, cli_tokens: None,
                 capsys: pytest.CaptureFixture[str]) -> None:
    plane, ns = crds_and_namespace
    with FakeUploadController(kube, ns, "golden", kind="dv", loop=loop, proxy=proxy, server=server) as fake:
        code = cli.main(upload_argv(
            "dv", "golden", ns, image, plane, "--size", "1Gi", "--storage-class", "fast",
            "--access-mode", "ReadWriteOnce", "--volume-mode", "filesystem", "--force-bind",
            "--uploadproxy-url", proxy.url, "--ca", str(pki.proxy_ca.cert), "--checksum", "auto", "--datasource"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fake.error is None and fake.finished
    assert f"uploaded {8 * MiB} bytes to DataVolume {ns}/golden" in out and "processed" in out
    assert "Waiting for" in err and "finish processing" in err
    dv = custom_object(kube, ns, "datavolumes", "golden")
    assert dv["metadata"]["annotations"] == {ann.BIND_IMMEDIATE: "true"}
    assert dv["spec"]["source"] == {"upload": {}} and dv["spec"]["contentType"] == "kubevirt"
    assert dv["spec"]["storage"] == {"resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast",
                                     "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}
    assert dv["status"]["phase"] == "Succeeded"
    assert custom_object(kube, ns, "datasources", "golden")["spec"]["source"] == {
        "pvc": {"name": "golden", "namespace": ns}}
    assert sha256(server.disk) == sha256(image)


def test_pvc_mode_no_create_marks_the_pvc(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient,
                                          loop: LoopThread, pki: Pki, proxy: ProxyHandle, server: ServerHandle,
                                          image: Path, token_source: Callable[[str, str], str]) -> None:
    _, ns = crds_and_namespace
    client.CoreV1Api(kube).create_namespaced_persistent_volume_claim(ns, pvc_body({}) | {
        "metadata": {"name": "plain"}})
    seen: list[tuple[int, int]] = []
    with FakeUploadController(kube, ns, "plain", kind="pvc", loop=loop, proxy=proxy, server=server) as fake:
        result = cdi.upload_image("plain", image, kind="pvc", namespace=ns, no_create=True, api=kube,
                                  token_source=token_source, uploadproxy_url=proxy.url, ca=pki.proxy_ca.cert,
                                  progress=lambda done, total: seen.append((done, total)), poll_interval=0.1)
    assert fake.error is None and fake.finished
    assert read_pvc(kube, ns, "plain")["metadata"]["annotations"][ann.UPLOAD_TARGET] == ""
    assert not result.created and result.processed and result.mode == "resumable"
    assert result.size == 8 * MiB and seen[-1] == (8 * MiB, 8 * MiB)
    assert sha256(server.disk) == sha256(image)


def test_wait_for_first_consumer_fails_fast(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient,
                                            loop: LoopThread, proxy: ProxyHandle, server: ServerHandle,
                                            image: Path, cli_tokens: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    plane, ns = crds_and_namespace
    started = time.monotonic()
    with FakeUploadController(kube, ns, "wffc", kind="dv", loop=loop, proxy=proxy, server=server,
                              phase="WaitForFirstConsumer"):
        code = cli.main(upload_argv("dv", "wffc", ns, image, plane, "--size", "1Gi",
                                    "--uploadproxy-url", proxy.url))
    err = capsys.readouterr().err
    assert code == 2 and "WaitForFirstConsumer" in err and "--force-bind" in err
    assert time.monotonic() - started < 15  # not --wait-secs (300)
    assert "Deleted DataVolume" in err
    with pytest.raises(ApiException) as gone:
        custom_object(kube, ns, "datavolumes", "wffc")
    assert gone.value.status == 404


def test_succeeded_pvc_refused(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient, image: Path,
                               cli_tokens: None, capsys: pytest.CaptureFixture[str]) -> None:
    plane, ns = crds_and_namespace
    done = pvc_body({ann.UPLOAD_TARGET: "", ann.POD_PHASE: "Succeeded"})
    done["metadata"]["name"] = "done"
    client.CoreV1Api(kube).create_namespaced_persistent_volume_claim(ns, done)
    code = cli.main(upload_argv("pvc", "done", ns, image, plane, "--size", "1Gi",
                                "--uploadproxy-url", "https://127.0.0.1:9"))
    assert code == 2
    assert "already successfully imported/cloned/updated" in capsys.readouterr().err


@pytest.fixture
def cdi_config(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient) -> Iterator[Callable[..., None]]:
    """``set(spec_override, status_url)`` on CDIConfig ``config``; put back as it was afterwards."""
    custom = client.CustomObjectsApi(kube)
    try:
        before: dict[str, Any] | None = custom.get_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config")
    except ApiException:
        before = None
        custom.create_cluster_custom_object(GROUP, VERSION, "cdiconfigs", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "CDIConfig", "metadata": {"name": "config"}, "spec": {}})

    def set_urls(override: str | None, published: str | None) -> None:
        custom.patch_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config", {
            "spec": {"uploadProxyURLOverride": override}, "status": {"uploadProxyURL": published}})

    yield set_urls
    if before is None:
        custom.delete_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config")
    else:
        set_urls((before.get("spec") or {}).get("uploadProxyURLOverride"),
                 (before.get("status") or {}).get("uploadProxyURL"))


def test_proxy_url_from_cdi_config(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient, loop: LoopThread,
                                   pki: Pki, proxy: ProxyHandle, server: ServerHandle, image: Path,
                                   token_source: Callable[[str, str], str], cdi_config: Callable[..., None]) -> None:
    _, ns = crds_and_namespace
    cdi_config(None, f"127.0.0.1:{proxy.proxy.port}")
    with FakeUploadController(kube, ns, "found", kind="dv", loop=loop, proxy=proxy, server=server) as fake:
        result = cdi.upload_image("found", image, namespace=ns, size="64Mi", api=kube, token_source=token_source,
                                  ca=pki.proxy_ca.cert, wait=False, poll_interval=0.1)
    assert fake.error is None
    assert result.proxy_url == proxy.url and result.created and not result.processed
    cdi_config("proxy.example.com:31001", f"127.0.0.1:{proxy.proxy.port}")
    assert token_api.discover_proxy_url(kube, None) == "https://proxy.example.com:31001"
    cdi_config(None, None)
    with pytest.raises(VolumeNotUsable, match="no upload proxy URL: pass --uploadproxy-url"):
        token_api.discover_proxy_url(kube, None)


def test_token_refreshed_after_401(crds_and_namespace: tuple[ControlPlane, str], kube: client.ApiClient, loop: LoopThread,
                                   pki: Pki, proxy: ProxyHandle, server: ServerHandle, image: Path) -> None:
    _, ns = crds_and_namespace
    issued: list[str] = []

    def expiring_first(namespace: str, pvc: str) -> str:
        # the first token has ~3 s left (inside the proxy's 10 s leeway); later ones 5 minutes
        now = time.time() - (307 if not issued else 0)
        issued.append(tokens.issue(pki.token_key, namespace, pvc, now=now))
        return issued[-1]

    # the connection is cut 3 MiB in and held 4 s: resuming then meets a 401 and asks for a new token
    cutter = UploadCutter(proxy.proxy.port, 3 * MiB, stall=4.0)
    try:
        with FakeUploadController(kube, ns, "refresh", kind="pvc", loop=loop, proxy=proxy, server=server) as fake:
            result = cdi.upload_image("refresh", image, kind="pvc", namespace=ns, size="64Mi", api=kube,
                                      token_source=expiring_first, uploadproxy_url=f"https://127.0.0.1:{cutter.port}",
                                      ca=pki.proxy_ca.cert, poll_interval=0.1)
    finally:
        cutter.close()
    assert fake.error is None and result.processed
    assert cutter.cuts == 1 and len(issued) >= 2 and result.resumes >= 1
    assert sha256(server.disk) == sha256(image)
