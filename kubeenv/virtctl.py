"""Where KubeVirt's real ``virtctl`` comes from: ``scripts/virtctl-build``, run (or reused) on demand.

Our upload proxy has to satisfy the genuine client, not our reading of it, so the tests drive
KubeVirt's own ``virtctl image-upload``, built from the ``kubevirt.io/kubevirt`` Go module at the
version pinned in ``tools/virtctl/go.mod``. As with :mod:`kubeenv.binaries`, the build script is
the single place that knows the pin and the cache layout; Python only runs it and reads the
path it prints on its last line. Building from scratch takes a few minutes, reusing the cache
takes milliseconds, so callers just call :func:`ensure_virtctl`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .binaries import run_build_script

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "virtctl-build"


def ensure_virtctl(timeout: float = 3600.0) -> Path:
    """Build the pinned virtctl unless cached and return its path.

    ``CDI_VIRTCTL`` may point at a ready-made binary instead (then nothing is built).
    """
    override = os.environ.get("CDI_VIRTCTL")
    binary = Path(override) if override else run_build_script(BUILD_SCRIPT, timeout)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise FileNotFoundError(f"{binary} is not an executable virtctl")
    return binary
