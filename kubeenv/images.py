"""Our images and the node's, built by ``scripts/images`` and pushed to the node's registry.

The script is the single place that knows how images are built and tagged (buildah, a local
Debian base, tags that hash the inputs); Python only runs it and reads its ``NAME=REF`` lines.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "images"
NAMES = ("importer", "uploadserver", "controller", "pause", "coredns")


def build_and_push(registry: str, bin_dir: Path | None = None, timeout: float = 3600.0) -> dict[str, str]:
    """Build what is missing, push it to ``registry`` (``host:port``); name -> image reference.

    ``bin_dir`` holds the static ``pause`` and ``coredns`` binaries (what ``scripts/node-build``
    prints, which the script asks itself when not given). Progress goes to our stderr.
    """
    command = [str(SCRIPT), registry, *([str(bin_dir)] if bin_dir else [])]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout, check=True)
    refs = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    missing = [n for n in NAMES if n not in refs]
    if missing:
        raise RuntimeError(f"scripts/images printed no reference for {', '.join(missing)}")
    return refs
