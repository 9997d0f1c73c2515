"""A stand-in for CDI's upload controller, for testing ``cdi image-upload`` against a real apiserver.

No controller runs in these tests, so :class:`FakeUploadController` plays its part of the
contract, on a thread, for one volume: it answers a new upload DataVolume with its PVC
(annotated as an upload target, with the DataVolume's content type), routes the in-process
upload proxy to an in-process upload server, marks the PVC ``storage.pod.ready`` and the
DataVolume ``UploadReady``; when the server has finished the upload it sets the PVC's
``storage.pod.phase`` and the DataVolume's phase to ``Succeeded``. For a bare PVC it waits for
the ``upload.target`` annotation instead. ``phase`` makes it stop at another DataVolume phase
(``WaitForFirstConsumer``) to test how the client reacts.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from cdi.controller import annotations as ann
from kubeenv.controlplane import ControlPlane
from tests.uploadproxy.harness import LoopThread, ProxyHandle, Ready, ServerHandle, wait_outcome

GROUP, VERSION = "cdi.kubevirt.io", "v1beta1"
ROOT = Path(__file__).resolve().parents[2]
MERGE = "application/merge-patch+json"


def apply_crds(plane: ControlPlane) -> None:
    def kubectl(*args: str) -> None:
        subprocess.run([str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args], check=True,
                       capture_output=True, timeout=120)

    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))


class FakeUploadController(threading.Thread):
    def __init__(self, api: client.ApiClient, namespace: str, name: str, *, kind: str, loop: LoopThread,
                 proxy: ProxyHandle, server: ServerHandle, phase: str = "UploadReady") -> None:
        super().__init__(name=f"fake-controller-{name}", daemon=True)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace, self.volume, self.kind = namespace, name, kind
        self.loop, self.proxy, self.server, self.phase = loop, proxy, server, phase
        self.error: BaseException | None = None
        self.finished = False
        self._halt = threading.Event()

    def __enter__(self) -> FakeUploadController:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        try:
            self._play()
        except BaseException as error:  # the test asserts on it
            self.error = error

    def _play(self) -> None:
        if self.kind == "dv":
            dv = self._until(lambda: self._read_dv())
            if self.phase != "UploadReady":
                self._dv_phase(self.phase)
                return
            self._create_pvc_for(dv)
            content_type = dv["spec"].get("contentType", "kubevirt")
        else:
            pvc = self._until(lambda: self._upload_target_pvc())
            content_type = pvc["metadata"]["annotations"].get(ann.CONTENT_TYPE, "kubevirt")
        self.proxy.resolver.table[(self.namespace, self.volume)] = Ready(self.server.url, content_type)
        self._annotate({ann.POD_READY: "true", ann.POD_PHASE: "Running"})
        if self.kind == "dv":
            self._dv_phase("UploadReady")
        wait_outcome(self.loop, self.server, timeout=60)
        self._annotate({ann.POD_READY: "false", ann.POD_PHASE: "Succeeded"})
        if self.kind == "dv":
            self._dv_phase("Succeeded")
        self.finished = True

    def _until(self, read: Callable[[], Any], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while not self._halt.is_set() and time.monotonic() < deadline:
            found = read()
            if found:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"the fake controller saw nothing to do for {self.namespace}/{self.volume}")

    def _read_dv(self) -> dict[str, Any] | None:
        try:
            answer = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "datavolumes",
                                                              self.volume, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(answer.data)
        return found

    def _upload_target_pvc(self) -> dict[str, Any] | None:
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(self.volume, self.namespace,
                                                                    _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(pvc.data)
        return found if ann.UPLOAD_TARGET in (found["metadata"].get("annotations") or {}) else None

    def _create_pvc_for(self, dv: dict[str, Any]) -> None:
        storage = dv["spec"]["storage"]
        self.core.create_namespaced_persistent_volume_claim(self.namespace, {
            "metadata": {"name": self.volume, "annotations": {
                ann.UPLOAD_TARGET: "", ann.CONTENT_TYPE: dv["spec"].get("contentType", "kubevirt")},
                "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume",
                                     "name": self.volume, "uid": dv["metadata"]["uid"], "controller": True}]},
            "spec": {"accessModes": storage.get("accessModes") or ["ReadWriteOnce"],
                     "resources": storage["resources"]}})

    def _annotate(self, notes: dict[str, str]) -> None:
        self.core.patch_namespaced_persistent_volume_claim(self.volume, self.namespace,
                                                           {"metadata": {"annotations": notes}}, _content_type=MERGE)

    def _dv_phase(self, phase: str) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, "datavolumes", self.volume,
                                                          {"status": {"phase": phase}})
