"""The whole ``image-upload``: virtctl's steps, in an order that fails before it changes things.

1. validate the request (no cluster needed);
2. find the upload proxy URL -- before creating anything, so a cluster without one leaves
   no orphan DataVolume (virtctl looks it up only after the volume is ready);
3. find or create the DataVolume/PVC (:mod:`.volumes`);
4. wait until it is ready for upload, and get the first token; if either fails, delete what
   step 3 created, so the rerun the error message suggests starts clean;
5. send the file (:func:`uploadproxy.client.upload`: resumable when the proxy offers it,
   retries, a fresh token after a 401);
6. ``datasource``: create or update the DataSource;
7. unless ``wait`` is off, wait until the cluster has processed the upload.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from kubernetes import client

from uploadproxy import client as upload_client

from . import datasource as datasources
from . import tokens, volumes, waiting
from .cluster import Cluster, connect
from .errors import TransferFailed
from .options import UploadRequest, validate

Notify = Callable[[str], None]
Progress = upload_client.ProgressCallback | bool | None


@dataclass(frozen=True)
class ImageUploadResult:
    kind: str
    """``dv`` or ``pvc``."""
    namespace: str
    name: str
    proxy_url: str
    mode: str
    """How the bytes went: ``resumable``, ``async`` or ``sync`` (what the proxy offered)."""
    size: int
    bytes_sent: int
    """Bytes put on the wire, resent ones included."""
    attempts: int
    resumes: int
    upload_seconds: float
    seconds: float
    """The whole call: creating, waiting, sending and (unless not waited for) processing."""
    created: bool
    """This call created the DataVolume/PVC (False: it existed)."""
    processed: bool
    """The cluster reported the upload processed (False when not waited for)."""
    datasource: str | None = None
    """``created`` or ``updated`` with ``datasource=True``."""


def _quiet(message: str) -> None:
    pass


def run(request: UploadRequest, api: client.ApiClient, *, token_source: tokens.TokenSource | None = None,
        progress: Progress = None, notify: Notify = _quiet) -> ImageUploadResult:
    """Upload as ``request`` says through ``api``; ImageUploadError says why not."""
    started = time.monotonic()
    request = validate(request)
    proxy_url = tokens.discover_proxy_url(api, request.uploadproxy_url)
    source = token_source or tokens.api_token_source(api)
    store = volumes.Volumes(api)
    created = volumes.prepare(store, request, notify)
    token = _ready_with_token(store, request, created, source, notify)
    notify(f"Uploading {request.path} to {proxy_url}")
    began = time.monotonic()
    sent = _send(request, proxy_url, token, progress)
    upload_seconds = time.monotonic() - began
    notify(f"Uploaded {sent.size} bytes ({sent.mode}, {sent.resumes} resumes) in {upload_seconds:.1f}s")
    published = _publish(api, request, notify) if request.datasource else None
    if request.wait:
        notify(f"Waiting for {request.target} to finish processing "
               "(ctrl-c is safe: processing goes on in the cluster)")
        waiting.until_processed(store, request)
        notify("Processing completed successfully")
    return ImageUploadResult(
        kind=request.kind, namespace=request.namespace, name=request.name, proxy_url=proxy_url, mode=sent.mode,
        size=sent.size, bytes_sent=sent.bytes_sent, attempts=sent.attempts, resumes=sent.resumes,
        upload_seconds=upload_seconds, seconds=time.monotonic() - started, created=created is not None,
        processed=request.wait, datasource=published)


def _ready_with_token(store: volumes.Volumes, request: UploadRequest, created: volumes.Created | None,
                      source: tokens.TokenSource, notify: Notify) -> Callable[[], str]:
    """Wait for the volume, then get a token; undo ``created`` if either fails (even ctrl-c)."""
    try:
        notify(f"Waiting up to {request.wait_secs:g}s for {request.target} to be ready for upload")
        waiting.until_ready(store, request)
        first = source(request.namespace, request.name)
    except BaseException:
        volumes.undo(store, created, notify)
        raise
    issued = [first]

    def token() -> str:
        """The first token once (the uploader asks at its start), fresh ones after a 401."""
        return issued.pop() if issued else source(request.namespace, request.name)

    return token


def _send(request: UploadRequest, proxy_url: str, token: Callable[[], str],
          progress: Progress) -> upload_client.UploadResult:
    try:
        return upload_client.upload(proxy_url, token, request.path, ca=request.ca, insecure=request.insecure,
                                    progress=progress, retries=request.retries, checksum=request.checksum)
    except upload_client.AuthenticationFailed as error:
        raise TransferFailed(f"the upload proxy refused the upload token: {error.body.strip() or error}",
                             permanent=True) from error
    except upload_client.UploadFailed as error:
        permanent = error.status is not None and 400 <= error.status < 500
        raise TransferFailed(f"upload to {proxy_url} failed: {error}", permanent=permanent) from error
    except requests.RequestException as error:
        raise TransferFailed(f"upload to {proxy_url} failed: {error}", permanent=False) from error


def _publish(api: client.ApiClient, request: UploadRequest, notify: Notify) -> str:
    what = datasources.publish(api, request.namespace, request.name)
    notify(f"DataSource {request.where} {what}")
    return what


def upload_image(
    name: str,
    path: str | os.PathLike[str],
    *,
    kind: str = "dv",
    namespace: str | None = None,
    archive: bool = False,
    size: str | int | None = None,
    storage_class: str | None = None,
    access_mode: str | None = None,
    volume_mode: str | None = None,
    no_create: bool = False,
    force_bind: bool = False,
    uploadproxy_url: str | None = None,
    insecure: bool = False,
    ca: str | os.PathLike[str] | None = None,
    wait_secs: float = 300.0,
    retries: int = 5,
    checksum: str | bool | None = None,
    datasource: bool = False,
    wait: bool = True,
    api: client.ApiClient | None = None,
    kubeconfig: str | None = None,
    token_source: tokens.TokenSource | None = None,
    progress: Progress = None,
    notify: Notify | None = None,
    poll_interval: float = 2.0,
) -> ImageUploadResult:
    """Upload the image (or with ``archive``, the tar) at ``path`` into DataVolume or PVC ``name``.

    ``virtctl image-upload`` as a call: ``kind`` is ``dv`` or ``pvc``; the volume is created
    with ``size`` (a quantity such as ``"10Gi"``, or bytes) unless ``no_create``; the rest
    mirror virtctl's flags. ``api`` (else ``kubeconfig``, else ``~/.kube/config`` or in-cluster)
    reaches the cluster; ``namespace`` defaults to the kubeconfig context's. ``token_source``
    ``(namespace, pvc) -> token`` replaces CDI's UploadTokenRequest API. ``progress`` is a
    callback ``(sent, total)`` or True for a tqdm bar; ``notify`` hears each step as a line of
    text. Raises :class:`~cdi.imageupload.errors.ImageUploadError` (``.permanent`` says
    whether trying again can help).
    """
    request = validate(UploadRequest(
        kind=kind, name=name, path=Path(path), namespace=namespace or "default", archive=archive,
        size=str(size) if size is not None else None, storage_class=storage_class, access_mode=access_mode,
        volume_mode=volume_mode, no_create=no_create, force_bind=force_bind, uploadproxy_url=uploadproxy_url,
        insecure=insecure, ca=Path(ca) if ca else None, wait_secs=wait_secs, retries=retries,
        checksum=checksum, datasource=datasource, wait=wait, poll_interval=poll_interval))
    cluster = connect(kubeconfig) if api is None else Cluster(api, request.namespace)
    if namespace is None:
        request = dataclasses.replace(request, namespace=cluster.namespace)
    try:
        return run(request, cluster.api, token_source=token_source, progress=progress, notify=notify or _quiet)
    finally:
        if api is None:
            cluster.api.close()
