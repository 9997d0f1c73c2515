"""Where the control-plane binaries come from: ``scripts/kube-build``, run (or reused) on demand.

The build script is the single place that knows the pins and the cache layout; Python only runs
it and reads the directory it prints on its last line. Building from scratch takes minutes,
reusing the cache takes milliseconds, so every entry point (the test fixture, kube-up) just
calls :func:`ensure_binaries`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "kube-build"
NODE_BUILD_SCRIPT = REPO / "scripts" / "node-build"
NODE_COMPONENTS = ("pause", "coredns", "hostpathplugin", "csi-node-driver-registrar", "csi-provisioner",
                   "csi-resizer", "csi-snapshotter", "snapshot-controller")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet",
              "kube-proxy", "crictl")


@dataclass(frozen=True)
class Binaries:
    """The directory with one binary per component, and the Kubernetes version they are."""

    directory: Path
    version: str

    def path(self, component: str) -> Path:
        return self.directory / component


def ensure_binaries(timeout: float = 3600.0) -> Binaries:
    """Build the pinned binaries unless cached; ``CDI_KUBE_BIN`` points at a ready-made directory."""
    override = os.environ.get("CDI_KUBE_BIN")
    directory = Path(override) if override else run_build_script(BUILD_SCRIPT, timeout)
    missing = [c for c in COMPONENTS if not (directory / c).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}")
    return Binaries(directory, _version(directory / "kube-apiserver"))


def ensure_node_binaries(timeout: float = 3600.0) -> Path:
    """The node's add-ons (``scripts/node-build``): CoreDNS, pause, the CSI driver and sidecars."""
    directory = run_build_script(NODE_BUILD_SCRIPT, timeout)
    missing = [c for c in NODE_COMPONENTS if not (directory / c).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}")
    return directory


def run_build_script(script: Path, timeout: float) -> Path:
    """Run one of the cached Go build scripts; the path it prints last is the answer."""
    env = dict(os.environ)
    if shutil.which("go", path=env.get("PATH")) is None:
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/local/go/bin"
    # stderr (progress) goes to our stderr so a first build is visibly busy; stdout is the answer
    proc = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, env=env,
                          timeout=timeout, check=True)
    return Path(proc.stdout.strip().splitlines()[-1])


def _version(apiserver: Path) -> str:
    """``v1.34.10`` from ``Kubernetes v1.34.10``, as the binary itself reports it."""
    out = subprocess.run([str(apiserver), "--version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()[-1]
