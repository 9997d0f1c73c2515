"""The size-detection pod's program: the virtual size of a source volume's ``disk.img``.

A clone whose DataVolume gives no size is sized from its source; for a Filesystem source with
kubevirt content, that is the virtual size of the image in ``disk.img`` (not the PVC's size,
which carries the filesystem's overhead), as CDI's ``cdi-image-size-detection`` tool reports it.
``qemu-img info`` runs in our sandbox under our limits, with the format given (``raw``, what
every import writes) unless ``--probe`` asks qemu to recognise it: a ``disk.img`` that is
really a qcow2 naming a backing file on the host must not make qemu-img open that file.

The answer is the termination message, the bare number as CDI writes it. Exit codes, each a
reason the controller reports: 1 bad arguments, 2 the path is missing or not a regular file,
3 qemu-img refused the file, 4 the termination message could not be written.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from .errors import CdiImportError
from .qemu import QemuImg

BAD_ARGUMENTS, INVALID_PATH, INVALID_FILE, BAD_TERMINATION_FILE = 1, 2, 3, 4
DEFAULT_IMAGE = "/data/disk.img"


def virtual_size(path: Path, qemu: QemuImg | None = None, fmt: str | None = "raw") -> int:
    """The image's virtual size; InvalidImage (a CdiImportError) when qemu-img refuses it."""
    return (qemu or QemuImg()).info(path, fmt).virtual_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m importer.sizedetect", description=__doc__.split("\n")[0])
    parser.add_argument("--image-path", "-image-path", default=DEFAULT_IMAGE)
    parser.add_argument("--termination-message", default=os.environ.get("TERMINATION_MESSAGE_PATH",
                                                                     "/dev/termination-log"))
    parser.add_argument("--probe", action="store_true", help="let qemu-img recognise the format")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return BAD_ARGUMENTS
    path = Path(args.image_path)
    try:
        mode = path.lstat().st_mode
    except OSError as error:
        print(f"size detection: {path}: {error.strerror}", file=sys.stderr)
        return INVALID_PATH
    if not stat.S_ISREG(mode):
        print(f"size detection: {path} is not a regular file", file=sys.stderr)
        return INVALID_PATH
    try:
        size = virtual_size(path, fmt=None if args.probe else "raw")
    except CdiImportError as error:
        print(f"size detection: {error}", file=sys.stderr)
        return INVALID_FILE
    try:
        Path(args.termination_message).write_text(str(size))
    except OSError as error:
        print(f"size detection: cannot write {args.termination_message}: {error.strerror}", file=sys.stderr)
        return BAD_TERMINATION_FILE
    print(size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
