"""Run a helper (qemu-img) where it sees only the files it works on.

An image format can name other files (VMDK extents, backing files, parents); our inspectors
refuse those before qemu-img runs, and this is the second wall: qemu-img runs under
bubblewrap (``bwrap``, Debian's ``bubblewrap``) in fresh namespaces (no network, its own
PIDs, IPC and mounts) whose filesystem holds ``/usr`` read-only, a minimal ``/dev``, and
exactly the paths handed over: the image read-only, the output (a file or a block device)
and an NBD socket writable. Any other path an image names simply does not exist there.

Where bwrap is missing or cannot create namespaces (a container without the privilege),
the command runs unwrapped and a warning says so once; the inspectors still stand.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

_BASE = ("--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--symlink", "usr/bin", "/bin", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp")


@dataclass(frozen=True)
class Exposure:
    """What the sandboxed command may see: paths read-only, and paths it may write."""

    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = field(default=())


def exposure_of(source: str, dest: str | None = None) -> Exposure:
    """The exposure for reading ``source`` (a path or an ``nbd+unix://`` URL) and writing
    ``dest`` (a path), as qemu-img needs them."""
    read_only: list[str] = []
    writable: list[str] = []
    socket = nbd_socket(source)
    if socket is not None:
        writable.append(socket)
    elif "://" not in source:
        read_only.append(os.path.abspath(source))
    if dest is not None:
        writable.append(os.path.abspath(dest))
    return Exposure(tuple(read_only), tuple(writable))


def nbd_socket(url: str) -> str | None:
    """The socket path of an ``nbd+unix://...?socket=PATH`` URL (None for anything else)."""
    if not url.startswith("nbd+unix://"):
        return None
    sockets = parse_qs(urlsplit(url).query).get("socket")
    return os.path.abspath(sockets[0]) if sockets else None


class Sandbox:
    """Wraps commands in bwrap when it works here; otherwise passes them through."""

    def __init__(self, bwrap: str | None) -> None:
        self.bwrap = bwrap

    @staticmethod
    def default() -> "Sandbox":
        return Sandbox(_working_bwrap())

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    def status(self, returncode: int) -> int:
        """The command's own exit status: bwrap reports a child killed by signal N as
        128 + N, which we turn back into Popen's -N."""
        if self.bwrap is not None and 128 < returncode < 160:
            return 128 - returncode
        return returncode

    def wrap(self, command: list[str], exposure: Exposure) -> list[str]:
        """``command`` as run inside the sandbox (unchanged when there is none). Writable
        paths that do not exist yet are created empty, so they can be bound."""
        if self.bwrap is None:
            return command
        args = [self.bwrap, *_BASE]
        for path in exposure.read_only:
            args += ["--ro-bind", path, path]
        for path in exposure.writable:
            args += [*_bind_writable(path), path, path]
        return [*args, "--", *command]


def _bind_writable(path: str) -> list[str]:
    if not os.path.lexists(path):
        with open(path, "ab"):
            pass
    mode = os.stat(path).st_mode
    return ["--dev-bind"] if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else ["--bind"]


@functools.lru_cache(maxsize=1)
def _working_bwrap() -> str | None:
    """The bwrap binary if it can build a sandbox here (tried once per process)."""
    binary = shutil.which("bwrap")
    if binary is None:
        log.warning("bwrap (Debian package bubblewrap) not found: qemu-img runs without a "
                    "filesystem sandbox")
        return None
    probe = subprocess.run([binary, *_BASE, "--", "/usr/bin/true"], capture_output=True,
                           timeout=30)
    if probe.returncode != 0:
        log.warning("bwrap cannot create a sandbox here (%s): qemu-img runs without one",
                    probe.stderr.decode(errors="replace").strip())
        return None
    return binary
