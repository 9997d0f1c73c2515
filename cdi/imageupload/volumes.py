"""The upload's target in the cluster: find it, check it can take an upload, or create it.

:func:`prepare` is the first step that changes the world, so it reports what it created (a
:class:`Created`), and :func:`undo` removes exactly that when a later step fails before any
byte was sent: a rerun (say with ``--force-bind``) then starts clean instead of tripping
over a half-made DataVolume. An existing volume is never deleted.

Rules for an existing PVC, as virtctl's: refused once its upload pod Succeeded; one without
the ``upload.target`` annotation is taken only with ``--no-create`` (and then annotated, so
the controller starts an upload pod for it); an archive needs contentType ``archive``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from cdi.api.v1beta1 import GROUP, VERSION
from cdi.controller import annotations as ann

from . import manifests
from .errors import ImageUploadError, VolumeNotUsable
from .options import READ_ONLY, UploadRequest

Body = dict[str, Any]
Notify = Callable[[str], None]
DATAVOLUMES = "datavolumes"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Created:
    kind: str
    """``DataVolume`` or ``PersistentVolumeClaim``."""
    namespace: str
    name: str


class Volumes:
    """DataVolumes, PVCs and their events, as plain dicts."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def pvc(self, namespace: str, name: str) -> Body | None:
        return self._absent_is_none(lambda: self.core.read_namespaced_persistent_volume_claim(
            name, namespace, _preload_content=False))

    def datavolume(self, namespace: str, name: str) -> Body | None:
        return self._absent_is_none(lambda: self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, DATAVOLUMES, name, _preload_content=False))

    def events(self, namespace: str, kind: str, name: str) -> list[Body]:
        """Events about one object; none when we may not list events (they only make failures faster)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        try:
            answer = self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
        except ApiException as error:
            if error.status == 403:
                return []
            raise
        return list(json.loads(answer.data).get("items") or [])

    def create(self, body: Body) -> Created:
        meta = body["metadata"]
        try:
            if body["kind"] == "DataVolume":
                self.custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], DATAVOLUMES, body)
            else:
                self.core.create_namespaced_persistent_volume_claim(meta["namespace"], body)
        except ApiException as error:
            raise _create_error(error, body) from error
        return Created(body["kind"], meta["namespace"], meta["name"])

    def annotate_pvc(self, namespace: str, name: str, notes: dict[str, str]) -> None:
        self.core.patch_namespaced_persistent_volume_claim(name, namespace, {"metadata": {"annotations": notes}},
                                                           _content_type=MERGE_PATCH)

    def delete(self, created: Created) -> None:
        try:
            if created.kind == "DataVolume":
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, created.namespace, DATAVOLUMES,
                                                            created.name)
            else:
                self.core.delete_namespaced_persistent_volume_claim(created.name, created.namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    @staticmethod
    def _absent_is_none(read: Callable[[], Any]) -> Body | None:
        try:
            answer = read()
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        found: Body = json.loads(answer.data)
        return found


def _create_error(error: ApiException, body: Body) -> ImageUploadError:
    kind, meta = body["kind"], body["metadata"]
    where = f"{kind} {meta['namespace']}/{meta['name']}"
    if error.status == 409:
        return VolumeNotUsable(f"{where} already exists: pass --no-create to upload into it")
    message = error.reason
    try:
        message = json.loads(error.body or "{}").get("message") or message
    except ValueError:
        pass
    return ImageUploadError(f"cannot create {where}: {message}",
                            permanent=error.status is not None and 400 <= error.status < 500)


def prepare(volumes: Volumes, request: UploadRequest, notify: Notify) -> Created | None:
    """Make the target exist and accept uploads; what was created, or None for an existing one."""
    pvc = volumes.pvc(request.namespace, request.name)
    if pvc is not None:
        check_existing_pvc(pvc, request)
        if ann.UPLOAD_TARGET not in _notes(pvc):
            volumes.annotate_pvc(request.namespace, request.name, {ann.UPLOAD_TARGET: ""})
            notify(f"Marked PVC {request.where} as an upload target")
        notify(f"Using existing PVC {request.where}")
        return None
    if request.kind == "dv":
        return _prepare_datavolume(volumes, request, notify)
    if request.no_create:
        raise VolumeNotUsable(f"PVC {request.where} not found: --no-create needs an existing PVC "
                              "(drop --no-create and give --size to create one)")
    created = volumes.create(manifests.upload_pvc(request))
    notify(f"PVC {request.where} created")
    return created


def _prepare_datavolume(volumes: Volumes, request: UploadRequest, notify: Notify) -> Created | None:
    existing = volumes.datavolume(request.namespace, request.name)
    if existing is not None:
        check_existing_datavolume(existing, request)
        notify(f"Using existing DataVolume {request.where}")
        return None
    if request.no_create:
        raise VolumeNotUsable(f"DataVolume {request.where} not found: --no-create needs an existing "
                              "upload DataVolume (drop --no-create and give --size to create one)")
    created = volumes.create(manifests.datavolume(request))
    notify(f"DataVolume {request.where} created")
    return created


def check_existing_pvc(pvc: Body, request: UploadRequest) -> None:
    notes = _notes(pvc)
    where = f"PVC {request.where}"
    if notes.get(ann.POD_PHASE) == "Succeeded":
        raise VolumeNotUsable(f"{where} already successfully imported/cloned/updated: "
                              "upload to a new name, or delete it first")
    if ann.UPLOAD_TARGET not in notes and not request.no_create:
        raise VolumeNotUsable(f"{where} already exists and is not an upload target: pass --no-create "
                              "to upload into it")
    if READ_ONLY in ((pvc.get("spec") or {}).get("accessModes") or []):
        raise VolumeNotUsable(f"{where} is ReadOnlyMany: cannot upload to a read-only volume")
    if request.archive:
        _check_archive_target(pvc, notes, where)


def _check_archive_target(pvc: Body, notes: dict[str, str], where: str) -> None:
    if notes.get(ann.CONTENT_TYPE) != "archive":
        raise VolumeNotUsable(f"{where} does not have content type archive "
                              f"({ann.CONTENT_TYPE}): upload an image with --image-path, "
                              "or create the volume for an archive")
    if (pvc.get("spec") or {}).get("volumeMode") == "Block":
        raise VolumeNotUsable(f"{where} is a Block volume: an archive needs a Filesystem volume")


def check_existing_datavolume(dv: Body, request: UploadRequest) -> None:
    where = f"DataVolume {request.where}"
    spec = dv.get("spec") or {}
    if "upload" not in (spec.get("source") or {}):
        raise VolumeNotUsable(f"{where} does not have an upload source (spec.source.upload)")
    if (dv.get("status") or {}).get("phase") == "Succeeded":
        raise VolumeNotUsable(f"{where} already successfully imported/cloned/updated")
    if request.archive and spec.get("contentType") != "archive":
        raise VolumeNotUsable(f"{where} does not have contentType archive: upload an image with "
                              "--image-path, or create the DataVolume for an archive")


def undo(volumes: Volumes, created: Created | None, notify: Notify) -> None:
    """Delete what :func:`prepare` created (best effort: the original failure matters more)."""
    if created is None:
        return
    try:
        volumes.delete(created)
    except ApiException as error:
        notify(f"could not delete {created.kind} {created.namespace}/{created.name}: {error.reason}")
        return
    notify(f"Deleted {created.kind} {created.namespace}/{created.name}, which this upload created")


def _notes(obj: Body) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})
