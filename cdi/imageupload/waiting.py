"""Waiting on the cluster: first until the volume is ready for upload, then until it is done.

Each wait polls a check that reads the objects and answers ``(done, state)``, or raises
:class:`VolumeNotUsable` when the volume will never get there (a WaitForFirstConsumer class
without ``--force-bind``, an invalid claim, a failed DataVolume), so the user hears about it
now rather than after ``--wait-secs``. ``state`` goes into the timeout message, which is the
first thing a user needs to see then.

What "ready" and "done" mean is the contract CDI's controller keeps:

=========  =========================================  ==============================================
mode       ready for upload                           processing done
=========  =========================================  ==============================================
``dv``     DataVolume ``status.phase`` = UploadReady  PVC ``storage.pod.phase`` = Succeeded and
                                                      DataVolume phase Succeeded (Failed: give up)
``pvc``    PVC ``storage.pod.ready`` = ``"true"``     PVC ``storage.pod.phase`` = Succeeded
=========  =========================================  ==============================================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdi.controller import annotations as ann

from .errors import UploadWaitTimedOut, VolumeNotUsable
from .options import UploadRequest
from .volumes import Volumes

Body = dict[str, Any]
Check = Callable[[], tuple[bool, str]]
WAIT_FOR_CONSUMER = ("WaitForFirstConsumer", "PendingPopulation")
CLAIM_NOT_VALID = "ErrClaimNotValid"
PROVISIONING_FAILED = "ProvisioningFailed"


def poll(what: str, check: Check, timeout: float, interval: float, hint: str = "",
         sleep: Callable[[float], None] = time.sleep) -> None:
    """Run ``check`` every ``interval`` seconds until it says done; UploadWaitTimedOut after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, state = check()
        if done:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise UploadWaitTimedOut(f"timed out after {timeout:g}s waiting for {what} ({state}){hint}")
        sleep(min(interval, left))


# -- ready for upload ---------------------------------------------------------------------------


def datavolume_ready(dv: Body | None, events: list[Body], request: UploadRequest) -> tuple[bool, str]:
    where = f"DataVolume {request.where}"
    if dv is None:
        raise VolumeNotUsable(f"{where} not found; for a PVC without a DataVolume use "
                              "`image-upload pvc`")
    phase = (dv.get("status") or {}).get("phase") or "no phase yet"
    if phase == "UploadReady":
        return True, phase
    _refuse_invalid_claim(where, dv, events)
    if phase in WAIT_FOR_CONSUMER and not request.force_bind:
        raise VolumeNotUsable(f"{where} is in phase {phase}: its storage class binds volumes only for "
                              "a consuming pod; pass --force-bind to bind it for the upload now")
    if phase == "Failed":
        raise VolumeNotUsable(f"{where} failed: {_conditions(dv) or 'no reason given'}")
    return False, f"phase {phase}"


def _refuse_invalid_claim(where: str, dv: Body, events: list[Body]) -> None:
    conditions = (dv.get("status") or {}).get("conditions") or []
    for item in [*conditions, *events]:
        if item.get("reason") == CLAIM_NOT_VALID:
            raise VolumeNotUsable(f"{where} has an invalid claim ({CLAIM_NOT_VALID}): "
                                  f"{item.get('message') or 'no message'}")


def pvc_ready(pvc: Body | None, events: list[Body], request: UploadRequest) -> tuple[bool, str]:
    where = f"PVC {request.where}"
    if pvc is None:
        raise VolumeNotUsable(f"{where} was deleted while waiting for it")
    notes = (pvc.get("metadata") or {}).get("annotations") or {}
    if notes.get(ann.POD_READY) == "true":
        return True, "upload pod ready"
    for event in events:
        if event.get("reason") == PROVISIONING_FAILED:
            raise VolumeNotUsable(f"{where} could not be provisioned: {event.get('message') or 'no message'}")
    phase = notes.get(ann.POD_PHASE) or "no upload pod yet"
    return False, f"PVC {(pvc.get('status') or {}).get('phase') or 'Pending'}, upload pod: {phase}"


# -- processing done ----------------------------------------------------------------------------


def processing_done(pvc: Body | None, dv: Body | None, request: UploadRequest) -> tuple[bool, str]:
    notes = ((pvc or {}).get("metadata") or {}).get("annotations") or {}
    pod_phase = notes.get(ann.POD_PHASE) or "unknown"
    state = f"upload pod {pod_phase}"
    if request.kind != "dv":
        return pod_phase == "Succeeded", state
    if dv is None:
        raise VolumeNotUsable(f"DataVolume {request.where} was deleted while processing the upload")
    dv_phase = (dv.get("status") or {}).get("phase") or "no phase"
    if dv_phase == "Failed":
        raise VolumeNotUsable(f"DataVolume {request.where} failed after the upload: "
                              f"{_conditions(dv) or 'no reason given'}")
    return pod_phase == "Succeeded" and dv_phase == "Succeeded", f"{state}, DataVolume {dv_phase}"


def _conditions(dv: Body) -> str:
    conditions = (dv.get("status") or {}).get("conditions") or []
    return "; ".join(f"{c.get('type')}: {c.get('reason') or ''} {c.get('message') or ''}".strip()
                     for c in conditions if c.get("reason") or c.get("message"))


# -- the two waits, against the cluster ------------------------------------------------------------


def until_ready(volumes: Volumes, request: UploadRequest) -> None:
    ns, name = request.namespace, request.name

    def datavolume() -> tuple[bool, str]:
        return datavolume_ready(volumes.datavolume(ns, name), volumes.events(ns, "DataVolume", name), request)

    def pvc() -> tuple[bool, str]:
        return pvc_ready(volumes.pvc(ns, name), volumes.events(ns, "PersistentVolumeClaim", name), request)

    hint = f"; see `kubectl describe {request.kind} -n {ns} {name}`, or raise --wait-secs"
    poll(f"{request.target} to be ready for upload", datavolume if request.kind == "dv" else pvc,
         request.wait_secs, request.poll_interval, hint)


def until_processed(volumes: Volumes, request: UploadRequest) -> None:
    ns, name = request.namespace, request.name

    def check() -> tuple[bool, str]:
        dv = volumes.datavolume(ns, name) if request.kind == "dv" else None
        return processing_done(volumes.pvc(ns, name), dv, request)

    poll(f"{request.target} to finish processing", check, request.processing_timeout, request.poll_interval)
