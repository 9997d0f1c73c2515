"""Where volumes live on the host: a directory per Filesystem volume, a sparse file per Block volume.

A Block volume's file is attached to a loop device only while a pod uses it (:class:`LoopDevices`),
so no loop device outlives the pods, and a restarted agent finds nothing stale to reconcile: the
PV names the file, which never moves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path


def create_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)


def create_sparse_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes that uses no space until written, as a thin block volume would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as file:
        file.truncate(size)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def copy_contents(source: Path, target: Path) -> None:
    """Clone a volume (a PVC ``dataSource``): the same mode on both sides, so a plain copy does."""
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        return
    with open(source, "rb") as src, open(target, "r+b") as dst:
        while chunk := src.read(1 << 22):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), 1)  # keep the clone sparse where the source is
            else:
                dst.write(chunk)


class LoopDevices:
    """Attach files to loop devices and detach them; only devices this agent attached are touched."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()

    def attach(self, file: Path) -> Path:
        # losetup --find races with itself across threads; one attach at a time here
        with self._lock:
            proc = subprocess.run(["losetup", "--find", "--show", str(file)],
                                  capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"losetup {file}: {proc.stderr.strip()}")
        return Path(proc.stdout.strip())

    def detach(self, device: Path) -> None:
        """Detach; a device still open elsewhere is auto-cleared by the kernel on last close."""
        subprocess.run(["losetup", "--detach", str(device)], capture_output=True, timeout=60)

    def leftovers(self) -> list[Path]:
        """Devices backed by files under our root: what a crashed run left attached."""
        proc = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        found = []
        for device in json.loads(proc.stdout).get("loopdevices", []):
            backing = (device.get("back-file") or "").removesuffix(" (deleted)")
            if backing and Path(backing).is_relative_to(self.root):
                found.append(Path(device["name"]))
        return found

    def detach_leftovers(self) -> None:
        for device in self.leftovers():
            self.detach(device)
