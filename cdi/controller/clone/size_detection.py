"""The virtual size of a Filesystem source's ``disk.img``, for a copy clone that gives no size.

A Filesystem PVC's capacity includes its filesystem's overhead, so a clone sized from the PVC
is bigger than the image needs (and a Block target from a Filesystem source would carry that
overhead as dead space). CDI runs a size-detection pod once per source and caches its answer on
the source PVC; so do we:

* the answer is cached in ``cdi.Kubervirt.io/virtualSize`` (CDI's annotation) beside
  ``cdi.Kubervirt.io/sourceCapacity``, the PVC's capacity when it was measured; a resized source
  is measured again;
* otherwise pod ``size-detection-<source PVC UID>`` in the source's namespace runs
  ``python -m importer.sizedetect`` from the importer image with the source mounted read-only
  (restricted, as every worker), and its termination message is the size. The pod is deleted
  once read, as is a pod that failed (its exit code names the reason in an event; the clone
  retries with back-off).

Only Filesystem sources with kubevirt content hold a ``disk.img``; Block sources are their
capacity.
"""

from __future__ import annotations

import copy
from typing import Any

from importer import sizedetect
from importer.quantity import parse_quantity

from .. import annotations as ann
from .. import resources as res
from ..context import Context
from ..errors import Explained, TemporaryError
from ..importer_pod import CONTAINER_SECURITY, is_block, worker_pod_spec
from ..phases import Reason

Body = dict[str, Any]
VOLUME = "cdi-data-vol"
MOUNT = "/data"
FAILURES = {sizedetect.BAD_ARGUMENTS: "ErrBadArguments", sizedetect.INVALID_PATH: "ErrInvalidPath",
            sizedetect.INVALID_FILE: "ErrInvalidFile", sizedetect.BAD_TERMINATION_FILE: "ErrBadTermFile"}
"""The tool's exit codes as CDI's event reasons."""


class Detecting(Explained):
    """The size is not known yet: the pod was created or has not finished."""



def applies(source: Body) -> bool:
    """Whether ``source`` (a PVC) holds a ``disk.img`` whose virtual size differs from the PVC's."""
    annotations = source["metadata"].get("annotations") or {}
    return not is_block(source) and annotations.get(ann.CONTENT_TYPE, "kubevirt") == "kubevirt"


def pod_name(source: Body) -> str:
    return f"size-detection-{source['metadata']['uid']}"


def _capacity(source: Body) -> str:
    return str(((source.get("status") or {}).get("capacity") or {}).get("storage") or "")


def cached(source: Body) -> int | None:
    """The size a previous detection recorded, if the source's capacity has not changed since."""
    annotations = source["metadata"].get("annotations") or {}
    size, capacity = annotations.get(ann.VIRTUAL_IMAGE_SIZE), annotations.get(ann.SOURCE_CAPACITY)
    if not size or not capacity or not _capacity(source):
        return None
    if parse_quantity(capacity) != parse_quantity(_capacity(source)):
        return None
    return int(size) if size.isdigit() else None


def virtual_size(ctx: Context, source: Body) -> int:
    """The source's image size, cached or measured; raises :class:`Detecting` until it is known."""
    known = cached(source)
    if known is not None:
        return known
    meta = source["metadata"]
    pod = ctx.cache.get(res.POD, meta["namespace"], pod_name(source))
    if pod is None:
        ctx.kube.create(res.POD, render_pod(ctx, source))
        raise Detecting(Reason.SIZE_DETECTION_POD_CREATED, f"Size-detection pod created for PVC {meta['name']}")
    terminated = _terminated(pod)
    if terminated is None:
        raise Detecting(Reason.SIZE_DETECTION_POD_NOT_READY,
                        f"Size-detection pod for PVC {meta['name']} has not finished")
    ctx.kube.delete(res.POD, meta["namespace"], pod_name(source))
    code, message = int(terminated.get("exitCode") or 0), str(terminated.get("message") or "").strip()
    if code != 0 or not message.isdigit():
        reason = FAILURES.get(code, "ErrUnknown")
        raise TemporaryError(reason, f"Size-detection pod failed on PVC {meta['name']}: {reason}")
    ctx.kube.patch(res.PVC, meta["namespace"], meta["name"], {"metadata": {"annotations": {
        ann.VIRTUAL_IMAGE_SIZE: message, ann.SOURCE_CAPACITY: _capacity(source)}}})
    return int(message)


def _terminated(pod: Body) -> Body | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    state = statuses[0].get("state") or {}
    terminated: Body | None = state.get("terminated")
    return terminated


def render_pod(ctx: Context, source: Body) -> Body:
    meta = source["metadata"]
    config = ctx.config()
    container: Body = {
        "name": "size-detection-volume", "image": ctx.importer.image, "imagePullPolicy": ctx.importer.pull_policy,
        "command": ["python", "-m", "importer.sizedetect"],
        "args": ["--image-path", f"{MOUNT}/disk.img"],
        "resources": config.pod_resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": VOLUME, "mountPath": MOUNT, "readOnly": True}],
    }
    volumes = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": meta["name"], "readOnly": True}}]
    spec = worker_pod_spec(meta.get("annotations") or {}, config, container, volumes)
    spec["restartPolicy"] = "Never"  # a failure is read, reported and retried by the controller
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": pod_name(source), "namespace": meta["namespace"],
        "labels": {ann.APP_LABEL: ann.APP, ann.COMPONENT_LABEL: ann.SIZE_DETECTION_COMPONENT},
        "annotations": {ann.SIZE_DETECTION_SOURCE: meta["name"]},
        "ownerReferences": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                             "uid": meta["uid"], "controller": False, "blockOwnerDeletion": False}]},
        "spec": spec}
