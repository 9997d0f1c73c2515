"""Start one container: enter the pod's network namespace, build the container's filesystem, exec.

Run as a script (``python launch.py SPEC.json``, standard library only) by the agent, as root.
What the container sees, and why:

- its own mount namespace, whose root is an overlay of the host's ``/`` (so an explicit
  ``command`` runs the host's binaries) with a private upper layer (so creating mount points or
  writing outside volumes never touches the host);
- a fresh ``/dev`` (tmpfs with the usual nodes, devpts, shm), ``/proc`` and a read-only ``/sys``;
- the volumes bind-mounted at their ``mountPath``, block devices at their ``devicePath``, the
  termination message file at ``terminationMessagePath``, ``/etc/hosts`` and ``/etc/hostname``;
- the pod's network namespace (its own IP and ports), and new UTS (hostname = pod name), IPC and
  PID namespaces: the command runs as PID 1, so when it exits every process it left is killed.

This process stays outside the PID namespace as the command's parent: it forwards signals, and
exits with the command's status (128+N if killed by signal N, as the runtime reports it). If it
is killed itself, the kernel kills the command (PR_SET_PDEATHSIG) and with it the whole PID
namespace; and it dies with the agent thread that started it, the same way. When exec fails,
the reason goes to ``spec["error_file"]`` and the exit status is 128.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import sys
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH, PR_SET_PDEATHSIG = 2, 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None
    check(libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)), f"mount {target}")


def bind(source: str, target: str, readonly: bool) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def in_root(root: str, path: str) -> str:
    """``path`` inside ``root``, following symlinks as the container will see them.

    Absolute links resolve against ``root``, not the host (``/var/run -> /run`` must not send a
    mount point to the host's ``/run``), and ``..`` stops at ``root``, as runc's securejoin does.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = os.path.join(root, *current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks under {path}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                current = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        current.append(part)
    return os.path.join(root, *current)


def make_target(path: str, directory: bool) -> None:
    """A mount point: a directory, or an empty file for a file or device node."""
    if directory:
        os.makedirs(path, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        with open(path, "w"):
            pass


def enter_namespaces(spec: dict[str, Any]) -> None:
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY)
        check(libc.setns(fd, CLONE_NEWNET), "setns net")
        os.close(fd)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")
    hostname = spec["hostname"].encode()[:63]
    check(libc.sethostname(hostname, len(hostname)), "sethostname")
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def build_root(spec: dict[str, Any]) -> str:
    root: str = spec["root"]
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={spec['upper']},workdir={spec['work']}")
    build_dev(root + "/dev")
    os.makedirs(root + "/sys", exist_ok=True)
    mount("sysfs", root + "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/proc", exist_ok=True)
    for entry in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
        target = in_root(root, entry["target"])
        make_target(target, os.path.isdir(entry["source"]))
        bind(entry["source"], target, entry.get("readonly", False))
    return root


def build_dev(dev: str) -> None:
    """The /dev a container runtime gives: a few nodes from the host, devpts, shm, the fd links."""
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in DEV_NODES:
        make_target(f"{dev}/{name}", False)
        bind(f"/dev/{name}", f"{dev}/{name}", False)
    os.makedirs(f"{dev}/pts")
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.makedirs(f"{dev}/shm")
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")):
        os.symlink(target, f"{dev}/{link}")


def pivot(root: str) -> None:
    number = SYS_PIVOT_ROOT.get(platform.machine())
    os.chdir(root)
    if number is None:
        check(libc.chroot(b"."), "chroot")
        return
    check(libc.syscall(number, b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def child(spec: dict[str, Any], root: str, error_pipe: int) -> None:
    """PID 1 of the new PID namespace: mount /proc, switch root, exec. Never returns."""
    try:
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        # pivot_root moves every process of the mount namespace: give it one of its own
        check(libc.unshare(CLONE_NEWNS), "unshare mount")
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        pivot(root)
        os.makedirs(spec["cwd"], exist_ok=True)
        os.chdir(spec["cwd"])
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as error:  # noqa: BLE001 - whatever it is, the parent reports it
        os.write(error_pipe, f"{type(error).__name__}: {error}".encode())
        os._exit(128)


def supervise(pid: int, error_pipe: int, error_file: str) -> int:
    """Forward signals to the command, wait for it, and turn its end into an exit status."""
    def forward(number: int, _frame: Any) -> None:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass
    for sig in FORWARDED:
        signal.signal(sig, forward)
    message = b""
    while chunk := os.read(error_pipe, 4096):
        message += chunk
    if message:
        with open(error_file, "wb") as file:
            file.write(message)
    _, status = os.waitpid(pid, 0)
    if message:
        return 128
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main() -> int:
    # if the agent dies (a test run killed hard), its containers die with it
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() == 1:
        return 137
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    try:
        enter_namespaces(spec)
        root = build_root(spec)
    except BaseException as error:  # noqa: BLE001 - reported like a failed exec
        with open(spec["error_file"], "w") as file:
            file.write(f"setting up the container: {error}")
        return 128
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        child(spec, root, write_end)
    os.close(write_end)
    if spec.get("pid_file"):  # the command's host PID, for exec probes (nsenter)
        with open(spec["pid_file"], "w") as file:
            file.write(str(pid))
    return supervise(pid, read_end, spec["error_file"])


if __name__ == "__main__":
    sys.exit(main())
