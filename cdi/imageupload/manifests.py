"""The objects an upload creates, as plain JSON bodies built from the request.

Kept apart from the API calls so what virtctl would create can be read (and tested) in one
place. A DataVolume uses the ``storage`` API: fields the user left out (access modes, volume
mode, class) are for the StorageProfile to fill, as virtctl leaves them. A bare PVC has no
such help, so it gets ``ReadWriteOnce`` when no access mode was given.
"""

from __future__ import annotations

from typing import Any

from cdi.api.v1beta1 import GROUP, VERSION
from cdi.controller import annotations as ann

from .options import UploadRequest

Body = dict[str, Any]
UPLOAD_GROUP = "upload.cdi.kubevirt.io"
TOKEN_REQUEST_NAME = "token-for-virtctl"
DEFAULT_PVC_ACCESS_MODE = "ReadWriteOnce"


def _storage(request: UploadRequest, default_access_mode: str | None) -> Body:
    storage: Body = {"resources": {"requests": {"storage": request.size}}}
    access_mode = request.access_mode or default_access_mode
    if access_mode:
        storage["accessModes"] = [access_mode]
    if request.storage_class:
        storage["storageClassName"] = request.storage_class
    if request.volume_mode:
        storage["volumeMode"] = request.volume_mode
    return storage


def _metadata(request: UploadRequest, extra: dict[str, str]) -> Body:
    notes = dict(extra)
    if request.force_bind:
        notes[ann.BIND_IMMEDIATE] = "true"
    metadata: Body = {"name": request.name, "namespace": request.namespace}
    if notes:
        metadata["annotations"] = notes
    return metadata


def datavolume(request: UploadRequest) -> Body:
    """A DataVolume with an upload source, as ``virtctl image-upload dv`` creates it."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume",
        "metadata": _metadata(request, {}),
        "spec": {"source": {"upload": {}}, "contentType": request.content_type,
                 "storage": _storage(request, None)},
    }


def upload_pvc(request: UploadRequest) -> Body:
    """A PVC the controller serves an upload pod for, as ``virtctl image-upload pvc`` creates it."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": _metadata(request, {ann.UPLOAD_TARGET: "",
                                        ann.CONTENT_TYPE: request.content_type}),
        "spec": _storage(request, DEFAULT_PVC_ACCESS_MODE),
    }


def token_request(namespace: str, pvc: str) -> Body:
    """CDI's ``UploadTokenRequest``: the apiserver answers with ``status.token`` for ``pvc``."""
    return {
        "apiVersion": f"{UPLOAD_GROUP}/{VERSION}", "kind": "UploadTokenRequest",
        "metadata": {"name": TOKEN_REQUEST_NAME, "namespace": namespace},
        "spec": {"pvcName": pvc},
    }


def datasource(namespace: str, name: str) -> Body:
    """A DataSource pointing at the uploaded PVC, so DataVolumes can ``sourceRef`` it."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataSource",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": {"pvc": {"name": name, "namespace": namespace}}},
    }
