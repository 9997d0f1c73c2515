"""Pure parts of the controller, checked without a cluster (the e2e tests beside these cover them
against the real apiserver too).

Behaviours under test:
- a pod's state becomes CDI's PVC annotations: running, waiting (image pull -> ImagePullFailed),
  terminated with the importer's JSON message, restarts never going backwards;
- the outcome of the last run: success with preallocation and labels, scratch required, a
  permanent error, and how many runs failed (kubelet counts restarts, not failures);
- CDI's short message for size errors;
- the importer pod as CDI builds it: env, block vs filesystem, credentials by secretKeyRef,
  cert and secret-header volumes, scratch only once an importer asked for it, long names;
- the upload pod, its Service and TLS Secret fit together (selector, Secret name, a serving
  certificate for the Service's DNS name signed by the upload-server CA); upload phases from the
  pod's state;
- the work queue runs one worker per key at a time and never loses an event that arrived while
  the key was being processed.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from cryptography import x509

from cdi.controller import annotations as ann
from cdi.controller import importer_pod, podstatus, upload_pod
from cdi.controller.certs import make_ca
from cdi.controller.datavolume.upload import UploadFlow
from cdi.controller.config import resolve_config
from cdi.controller.workqueue import WorkQueue


def pod_with(state: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0,
             phase: str = "Running") -> dict[str, Any]:
    container = {"name": "importer", "state": state, "lastState": last or {}, "restartCount": restarts,
                 "ready": "running" in state}
    return {"status": {"phase": phase, "containerStatuses": [container]}}


def terminated(code: int, message: dict[str, Any]) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                           "message": json.dumps(message)}}


def test_running_pod_annotations() -> None:
    notes = podstatus.pod_annotations(pod_with({"running": {}}, restarts=2), {ann.POD_RESTARTS: "1"})
    assert notes[ann.RUNNING_CONDITION] == "true" and notes[ann.RUNNING_CONDITION_REASON] == "Pod is running"
    assert notes[ann.POD_PHASE] == "Running" and notes[ann.POD_READY] == "true" and notes[ann.POD_RESTARTS] == "2"


def test_restarts_never_go_backwards() -> None:
    notes = podstatus.pod_annotations(pod_with({"running": {}}, restarts=0), {ann.POD_RESTARTS: "3"})
    assert notes[ann.POD_RESTARTS] == "3"


def test_image_pull_failure_is_named_as_cdi_does() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}
    notes = podstatus.pod_annotations(pod_with(waiting, phase="Pending"), {})
    assert notes[ann.RUNNING_CONDITION_REASON] == "ImagePullFailed"


def test_success_outcome_carries_preallocation_and_only_kubevirt_labels() -> None:
    message = {"message": "Import Complete", "preallocationApplied": True,
               "labels": {"instancetype.kubevirt.io/default-preference": "fedora", "evil.example/x": "1"}}
    outcome = podstatus.last_run(pod_with(terminated(0, message), phase="Succeeded"))
    assert outcome.succeeded and outcome.preallocation_applied and outcome.failed_runs == 0
    assert outcome.labels == {"instancetype.kubevirt.io/default-preference": "fedora"}


def test_scratch_required_is_not_a_success() -> None:
    outcome = podstatus.last_run(pod_with(terminated(0, {"scratchSpaceRequired": True}), phase="Succeeded"))
    assert outcome.scratch_required and not outcome.succeeded


def test_permanent_error_seen_even_after_kubelet_restarted_the_container() -> None:
    failure = terminated(2, {"message": "Unable to connect to http data source: 404", "reason": "NotFound",
                             "fatalError": True})
    outcome = podstatus.last_run(pod_with({"running": {}}, last=failure, restarts=1))
    assert outcome.fatal and outcome.reason == "NotFound" and outcome.failed_runs == 1


def test_failed_runs_while_waiting_to_restart() -> None:
    failure = terminated(1, {"message": "Unable to process data: reset", "reason": "TemporaryError"})
    waiting = {"waiting": {"reason": "CrashLoopBackOff"}}
    outcome = podstatus.last_run(pod_with(waiting, last=failure, restarts=1))
    assert not outcome.fatal and outcome.failed_runs == 2
    notes = podstatus.pod_annotations(pod_with(waiting, last=failure, restarts=1), {})
    assert notes[ann.RUNNING_CONDITION_REASON] == "Error"


def test_size_errors_get_cdis_short_message() -> None:
    assert podstatus.simplify("virtual image size 9 is larger than the reported available storage 8") == \
        podstatus.TOO_SMALL
    assert podstatus.simplify("write: No space left on device") == podstatus.TOO_SMALL
    assert podstatus.simplify("connection refused") == "connection refused"


def claim(**annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": "disk", "namespace": "ns", "uid": "pvc-uid", "annotations": annotations},
            "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}}


def render(pvc: dict[str, Any], scratch: str | None = None) -> dict[str, Any]:
    config = resolve_config({"spec": {"filesystemOverhead": {"global": "0.1"}}}, [{"metadata": {"name": "fast"}}])
    return importer_pod.render(pvc, owner_uid="dv-uid", config=config, settings=importer_pod.ImporterSettings(),
                               scratch=scratch)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_importer_pod_env_and_volume_as_cdi() -> None:
    pvc = claim(**{ann.IMPORT_ENDPOINT: "https://h/disk.qcow2", ann.IMPORT_SOURCE: "http", ann.IMPORT_SECRET: "creds",
                   ann.IMPORT_CERT_CONFIG_MAP: "ca", f"{ann.IMPORT_EXTRA_HEADERS}.0": "X-A: 1",
                   f"{ann.IMPORT_SECRET_EXTRA_HEADERS}.0": "hdr", ann.IMPORT_CHECKSUM: "sha256:ab"})
    pod = render(pvc)
    env = env_of(pod)
    assert env["IMPORTER_ENDPOINT"] == "https://h/disk.qcow2" and env["OWNER_UID"] == "dv-uid"
    assert env["FILESYSTEM_OVERHEAD"] == "0.1" and env["IMPORTER_IMAGE_SIZE"] == "1Gi"
    assert env["IMPORTER_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "creds", "key": "accessKeyId"}}
    assert env["IMPORTER_CERT_DIR"] == "/certs" and env["IMPORTER_EXTRA_HEADER_0"] == "X-A: 1"
    container = pod["spec"]["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/certs", "/extraheaders/secret-0"} <= mounts
    assert pod["spec"]["restartPolicy"] == "OnFailure" and container["ports"][0]["containerPort"] == 8443
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "pvc-uid"
    assert pod["metadata"]["labels"][ann.COMPONENT_LABEL] == "importer"


def test_block_volume_is_a_device_without_overhead() -> None:
    pvc = claim(**{ann.IMPORT_SOURCE: "none"})
    pvc["spec"]["volumeMode"] = "Block"
    pod = render(pvc)
    container = pod["spec"]["containers"][0]
    assert container["volumeDevices"] == [{"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"}]
    assert "volumeMounts" not in container and env_of(pod)["FILESYSTEM_OVERHEAD"] == "0"


def test_scratch_only_once_an_importer_asked_for_it() -> None:
    for name in ("win.vmdk.gz", "fedora.qcow2.xz", "disk.vhd.zst", "disk.vdi.xz"):
        assert not importer_pod.needs_scratch({ann.IMPORT_ENDPOINT: f"http://h/{name}"})
    assert importer_pod.needs_scratch({ann.IMPORT_ENDPOINT: "http://h/win.vmdk.gz", ann.REQUIRES_SCRATCH: "true"})
    pod = render(claim(**{ann.IMPORT_ENDPOINT: "http://h/win.vmdk.gz"}), scratch="disk-scratch")
    assert {"mountPath": "/scratch", "name": "cdi-scratch-vol"} in pod["spec"]["containers"][0]["volumeMounts"]


def test_long_names_stay_valid() -> None:
    name = importer_pod.name_for("importer", "x" * 80)
    assert len(name) <= 63 and name != importer_pod.name_for("importer", "x" * 79)


def test_work_queue_one_worker_per_key_and_no_lost_events() -> None:
    async def scenario() -> list[str]:
        queue, log = WorkQueue(), []
        running: set[object] = set()

        async def handle(key: object) -> float | None:
            assert key not in running, "two workers on one key"
            running.add(key)
            log.append(str(key))
            if log.count(str(key)) == 1:
                queue.add(key)  # an event while processing: must cause exactly one more pass
                queue.add(key)
            await asyncio.sleep(0.01)
            running.discard(key)
            return None

        workers = [asyncio.create_task(queue.run_worker(handle)) for _ in range(4)]
        queue.add("a")
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.2)
        for w in workers:
            w.cancel()
        return log

    log = asyncio.run(scenario())
    assert sorted(log) == ["a", "a", "b", "b"]


# -- uploads --------------------------------------------------------------------------------------


def upload_settings() -> upload_pod.UploadSettings:
    return upload_pod.UploadSettings(image="cdi-py-uploadserver", server_ca=make_ca("server-ca"),
                                     client_ca_pem=make_ca("client-ca").cert)


def test_upload_pod_service_and_secret_fit_together() -> None:
    pvc = claim(**{ann.UPLOAD_TARGET: "", ann.CONTENT_TYPE: "kubevirt"})
    config = resolve_config({"spec": {"filesystemOverhead": {"global": "0.1"}}}, [{"metadata": {"name": "fast"}}])
    settings = upload_settings()
    pod = upload_pod.render_pod(pvc, config, settings)
    service = upload_pod.render_service(pvc)
    secret = upload_pod.render_secret(pvc, settings)
    env = env_of(pod)
    assert pod["metadata"]["name"] == service["metadata"]["name"] == "cdi-upload-disk"
    assert all(pod["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items())
    assert env["DESTINATION"] == "/data/disk.img" and env["UPLOAD_IMAGE_SIZE"] == "1Gi"
    assert env["FILESYSTEM_OVERHEAD"] == "0.1" and env["CLIENT_NAME"] == "client.upload-server.cdi.kubevirt.io"
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[upload_pod.TLS_VOLUME]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes[upload_pod.SCRATCH_VOLUME]["emptyDir"] == {"sizeLimit": "1Gi"}
    # the serving certificate names the Service as the proxy dials it, and chains to the signer
    served = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert "cdi-upload-disk.ns.svc" in names
    signer = x509.load_pem_x509_certificate(settings.server_ca.cert)  # type: ignore[union-attr]
    assert served.issuer == signer.subject
    assert all(o["uid"] == "pvc-uid" for o in (pod, service, secret) for o in o["metadata"]["ownerReferences"])


def test_upload_phases_from_the_pod_state() -> None:
    flow = UploadFlow()
    assert flow.worker_phase({}, "disk") is None
    assert flow.worker_phase({ann.UPLOAD_POD_NAME: "cdi-upload-disk"}, "disk")[0] == "UploadScheduled"  # type: ignore[index]
    running = {ann.POD_PHASE: "Running", ann.POD_READY: "false"}
    assert flow.worker_phase(running, "disk")[0] == "UploadScheduled"  # type: ignore[index]
    ready = flow.worker_phase({**running, ann.POD_READY: "true"}, "disk")
    assert ready is not None and ready[0] == "UploadReady" and ready[1].reason == "UploadReady"
    assert flow.worker_phase({ann.POD_PHASE: "Succeeded"}, "disk")[0] == "Succeeded"  # type: ignore[index]
    assert UploadFlow(configured=False).refusal({})[0] == "UploadNotConfigured"  # type: ignore[index]
