"""``cdi image-upload dv|pvc NAME (--image-path F | --archive-path F)``: virtctl's flags, our exits.

Exit codes as the rest of ``cdi``: 0 done, 1 temporary (a timeout, a dropped upload: run it
again), 2 permanent (the volume cannot take this upload), 3 the command line must change (a
missing --size, an archive into a block volume, an unreadable file). Errors are one line on
stderr that says what to do; the steps are narrated on stderr and the result is one line on
stdout. The environment (``$KUBECONFIG``) is read here and nowhere below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ImageUploadError, InvalidUploadRequest
from .options import UploadRequest, path_from, validate

if TYPE_CHECKING:
    from .flow import ImageUploadResult

USAGE_EXIT = 3


def add_parser(commands: Any) -> None:
    """Add ``image-upload`` to the ``cdi`` subcommands (``commands`` is argparse's subparsers action)."""
    up = commands.add_parser("image-upload", help="upload a local image into a DataVolume or PVC "
                             "(virtctl image-upload)", description=__doc__.splitlines()[0])
    up.add_argument("kind", choices=["dv", "pvc"], help="create/use a DataVolume or a bare PVC")
    up.add_argument("name", help="name of the DataVolume/PVC")
    up.add_argument("--image-path", help="the disk image to upload (raw, qcow2, vmdk, ..., compressed or not)")
    up.add_argument("--archive-path", help="a tar to unpack into a Filesystem volume")
    up.add_argument("-n", "--namespace", help="default: the kubeconfig context's")
    up.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, in-cluster")
    up.add_argument("--size", help="size of the volume to create, e.g. 10Gi (required unless --no-create)")
    up.add_argument("--storage-class", help="default: the cluster's (virt) default class")
    up.add_argument("--access-mode", help="ReadWriteOnce, ReadWriteMany or ReadWriteOncePod")
    up.add_argument("--volume-mode", help="block or filesystem (default: the storage profile's)")
    up.add_argument("--no-create", action="store_true", help="upload into an existing DataVolume/PVC")
    up.add_argument("--force-bind", action="store_true", help="bind now even with a WaitForFirstConsumer class")
    up.add_argument("--uploadproxy-url", help="default: from CDIConfig config")
    up.add_argument("--insecure", action="store_true", help="do not verify the upload proxy's certificate")
    up.add_argument("--ca", type=Path, help="CA bundle to verify the upload proxy's certificate with")
    up.add_argument("--wait-secs", type=int, default=300, help="how long the volume may take to get ready")
    up.add_argument("--retry", type=int, default=5, help="retries after a failed upload attempt")
    up.add_argument("--checksum", help="sha256:HEX for the server to verify, or 'auto' to hash the file first")
    up.add_argument("--datasource", action="store_true", help="create/update a DataSource named NAME")
    up.add_argument("--no-wait", action="store_true", help="do not wait for the cluster to process the upload")
    up.add_argument("--no-progress", action="store_true", help="no progress bar")


def wants_image_upload(argv: list[str]) -> bool:
    """The command line names ``image-upload`` (argparse's own errors then exit 3, not 2)."""
    return next((arg for arg in argv if not arg.startswith("-")), None) == "image-upload"


def request_from(args: argparse.Namespace, namespace: str) -> UploadRequest:
    path, archive = path_from(args.image_path, args.archive_path)
    return UploadRequest(
        kind=args.kind, name=args.name, path=path, namespace=namespace, archive=archive, size=args.size,
        storage_class=args.storage_class, access_mode=args.access_mode, volume_mode=args.volume_mode,
        no_create=args.no_create, force_bind=args.force_bind, uploadproxy_url=args.uploadproxy_url,
        insecure=args.insecure, ca=args.ca, wait_secs=args.wait_secs, retries=args.retry,
        checksum=args.checksum, datasource=args.datasource, wait=not args.no_wait)


def _narrate(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    # here, not at the top: building the parser for `cdi import` must not load the Kubernetes client
    import urllib3
    from kubernetes.client.rest import ApiException

    try:
        return _report(_upload(args))
    except InvalidUploadRequest as error:
        return _fail(f"{error}", USAGE_EXIT)
    except ImageUploadError as error:
        kind = "permanent" if error.permanent else "temporary"
        return _fail(f"failed ({kind}): {error}", 2 if error.permanent else 1)
    except ApiException as error:
        temporary = error.status is None or error.status >= 500 or error.status == 429
        return _fail(f"the Kubernetes API answered {error.status} {error.reason}: {_api_message(error)}",
                     1 if temporary else 2)
    except urllib3.exceptions.HTTPError as error:
        return _fail(f"cannot reach the Kubernetes API: {error}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _upload(args: argparse.Namespace) -> ImageUploadResult:
    from .cluster import connect
    from .flow import run

    # check the flags before connecting: a typo should not wait for a cluster
    validate(request_from(args, args.namespace or "default"))
    cluster = connect(args.kubeconfig or os.environ.get("KUBECONFIG"))
    try:
        request = request_from(args, args.namespace or cluster.namespace)
        progress = True if not args.no_progress and sys.stderr.isatty() else None
        return run(request, cluster.api, progress=progress, notify=_narrate)
    finally:
        cluster.api.close()


def _report(result: ImageUploadResult) -> int:
    kind = "DataVolume" if result.kind == "dv" else "PVC"
    after = "processed" if result.processed else "not waiting for processing (--no-wait)"
    print(f"uploaded {result.size} bytes to {kind} {result.namespace}/{result.name} via {result.proxy_url} "
          f"({result.mode}, {result.bytes_sent} sent, {result.resumes} resumes, {result.upload_seconds:.1f}s); "
          f"{after}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"cdi image-upload: {message}", file=sys.stderr)
    return code


def _api_message(error: Any) -> str:
    """The apiserver's Status message of an ApiException."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.body or "")
    except ValueError:
        return str(error.body or "")
