"""The ``cdi`` command: ``cdi import SOURCE TARGET`` with a progress bar, ``cdi blank``,
``cdi image-upload`` (virtctl's, see :mod:`cdi.imageupload.command`).

Exit codes: 0 success, 1 a temporary failure (retrying later may work), 2 a permanent one
(bad input: fix the command or the image), 3 the command line must change (a scratch
directory is needed; any usage error of ``image-upload``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from importer.errors import CdiImportError, ScratchSpaceRequired
from importer.pipeline import ImportResult
from importer.progress import ProgressEvent
from importer.quantity import parse_quantity

from importer.sources import RetryPolicy

from . import credentials
from .imageupload import command as image_upload
from .library import create_blank, import_image


class ProgressBar:
    """A tqdm bar per phase, fed by progress events."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.phase = ""

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled or event.phase not in ("transfer", "convert"):
            return
        if event.phase != self.phase or self.bar is None:
            self.close()
            self.phase = event.phase
            self.bar = tqdm(total=event.total, desc=event.phase, unit="B", unit_scale=True,
                            unit_divisor=1024, file=sys.stderr, dynamic_ncols=True)
        assert self.bar is not None
        if event.total and self.bar.total != event.total:
            self.bar.total = event.total
        self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _size(text: str) -> int:
    try:
        return parse_quantity(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdi", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    imp = commands.add_parser("import", help="import an image into a raw disk file or device")
    imp.add_argument("source", help="http(s)://, s3://, docker:// URL or a local path")
    imp.add_argument("target", help="file, directory (disk.img inside) or block device")
    imp.add_argument("--size", type=_size, help="grow the disk to this size (e.g. 10Gi)")
    imp.add_argument("--checksum", help="md5|sha1|sha256|sha512:<hex> of the source bytes")
    imp.add_argument("--cert-dir", type=Path, help="directory of CA certificates to trust")
    imp.add_argument("--insecure", action="store_true", help="skip TLS verification")
    imp.add_argument("--username", help="basic auth user / S3 access key / registry user ($CDI_USERNAME)")
    imp.add_argument("--password", help="basic auth password / S3 secret key: visible to every user "
                     "in the process list, prefer --password-file or $CDI_PASSWORD")
    imp.add_argument("--password-file", help="read the password from the first line of FILE (- for stdin)")
    imp.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    imp.add_argument("--secret-header", action="append", default=[], help="header never logged")
    imp.add_argument("--secret-header-file", type=Path, help="secret 'Name: value' headers, one a line")
    imp.add_argument("--speed-limit", type=int, default=RetryPolicy.speed_limit,
                     help="bytes/s below which a transfer fails when it lasts --speed-time (0: off)")
    imp.add_argument("--speed-time", type=float, default=RetryPolicy.speed_time, help="seconds; see --speed-limit")
    imp.add_argument("--retry-time", type=float, default=RetryPolicy.retry_time,
                     help="seconds one transfer may spend in all recovering from faults")
    imp.add_argument("--s3-endpoint", help="endpoint URL for s3:// sources")
    imp.add_argument("--source-kind", choices=["http", "s3", "registry", "file"],
                     help="override the kind the URL implies (e.g. s3 for https://host/bucket/key)")
    imp.add_argument("--arch", dest="architecture", help="registry platform architecture")
    imp.add_argument("--content-type", choices=["kubevirt", "archive"], default="kubevirt",
                     help="archive: unpack a tar into the TARGET directory")
    imp.add_argument("--preallocate", action="store_true")
    imp.add_argument("--filesystem-overhead", type=float, default=0.0)
    imp.add_argument("--scratch-dir", type=Path)
    imp.add_argument("--no-progress", action="store_true")
    imp.add_argument("--json", action="store_true", help="print the result as JSON")

    blank = commands.add_parser("blank", help="create a blank raw disk")
    blank.add_argument("target")
    blank.add_argument("--size", type=_size, required=True)
    blank.add_argument("--preallocate", action="store_true")
    blank.add_argument("--json", action="store_true")

    image_upload.add_parser(commands)
    return parser


def _report(result: ImportResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.__dict__, indent=2, sort_keys=True))
        return
    layers = "".join(f" in {c}" for c in reversed(result.compression))
    print(f"imported {result.format}{layers} -> {result.path}: {result.disk_size} bytes "
          f"(virtual {result.virtual_size}, {result.bytes_written} written, "
          f"{result.bytes_received} received, route {result.route}, {result.seconds:.1f}s)")
    if result.checksum:
        print(f"checksum verified: {result.checksum}")
    for key, value in sorted(result.labels.items()):
        print(f"label {key}={value}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse's usage errors exit 2; ``image-upload``'s exit 3, as its other usage errors do."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        return build_parser().parse_args(words)
    except SystemExit as leaving:
        if leaving.code == 2 and image_upload.wants_image_upload(words):
            raise SystemExit(image_upload.USAGE_EXIT) from None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "image-upload":
        return image_upload.main(args)
    try:
        if args.command == "blank":
            result = create_blank(args.target, args.size, preallocate=args.preallocate)
        else:
            bar = ProgressBar(enabled=not args.no_progress and not args.json)
            creds = credentials.resolve(
                args.source, args.source_kind, username=args.username, password=args.password,
                password_file=args.password_file, secret_headers=args.secret_header,
                secret_header_file=args.secret_header_file)
            retry = RetryPolicy(speed_limit=args.speed_limit, speed_time=args.speed_time,
                                retry_time=args.retry_time)
            try:
                result = import_image(
                    args.source, args.target, size=args.size, checksum=args.checksum,
                    progress=bar, source_kind=args.source_kind, username=creds.username,
                    password=creds.password, cert_dir=args.cert_dir, insecure=args.insecure,
                    headers=args.header, secret_headers=creds.secret_headers, retry=retry,
                    s3_endpoint=args.s3_endpoint, architecture=args.architecture,
                    preallocate=args.preallocate, filesystem_overhead=args.filesystem_overhead,
                    scratch_dir=args.scratch_dir, content_type=args.content_type)
            finally:
                bar.close()
    except ScratchSpaceRequired as error:
        print(f"cdi: {error} (pass --scratch-dir)", file=sys.stderr)
        return 3
    except CdiImportError as error:
        kind = "permanent" if error.permanent else "temporary"
        print(f"cdi: import failed ({kind}, {error.reason}): {error}", file=sys.stderr)
        return 2 if error.permanent else 1
    _report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
