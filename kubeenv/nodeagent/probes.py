"""Readiness and liveness probes: httpGet, tcpSocket and exec, with the spec's timing and thresholds.

A container without a readiness probe is Ready while it runs. With one, it is Ready once the probe
has passed ``successThreshold`` times, and not Ready after ``failureThreshold`` failures. A liveness
probe that fails ``failureThreshold`` times in a row kills the run (the restart policy decides what
follows). HTTP and TCP probes go from the host to the pod's IP, as kubelet's do; exec probes run in
the container's namespaces through ``nsenter``. gRPC probes are not implemented and always pass.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from kubeenv.nodeagent.container import ContainerProcess
    from kubeenv.nodeagent.runtime import PodContext

Obj = dict[str, Any]


def _port(container: Obj, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def probe_once(probe: Obj, container: Obj, pod_ip: str, pid: int | None) -> bool:
    """One attempt; any error counts as a failure."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            return _http(probe["httpGet"], container, pod_ip, timeout)
        if "tcpSocket" in probe:
            target = probe["tcpSocket"]
            with socket.create_connection((target.get("host") or pod_ip, _port(container, target["port"])), timeout):
                return True
        if "exec" in probe:
            return _exec(probe["exec"]["command"], pid, timeout)
        return True
    except (OSError, ValueError, subprocess.SubprocessError):
        return False


def _http(get: Obj, container: Obj, pod_ip: str, timeout: float) -> bool:
    scheme = get.get("scheme", "HTTP").lower()
    url = f"{scheme}://{get.get('host') or pod_ip}:{_port(container, get['port'])}{get.get('path', '/')}"
    request = urllib.request.Request(url, headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []})
    context = ssl._create_unverified_context() if scheme == "https" else None  # kubelet skips verification too
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status: int = response.status
            return 200 <= status < 400
    except urllib.error.HTTPError as error:
        return 200 <= error.code < 400


def _exec(command: list[str], pid: int | None, timeout: float) -> bool:
    if pid is None:
        return False
    nsenter = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]
    return subprocess.run(nsenter + command, capture_output=True, timeout=timeout).returncode == 0


class Prober:
    """Probes one run of a container on a thread of its own until stopped."""

    def __init__(self, container: Obj, ctx: PodContext, process: ContainerProcess,
                 set_ready: Callable[[bool], None]) -> None:
        self.container = container
        self.ctx = ctx
        self.process = process
        self.set_ready = set_ready
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(kind,), daemon=True, name=f"probe-{kind}")
                         for kind in ("readinessProbe", "livenessProbe") if kind in container]

    @classmethod
    def start_for(cls, container: Obj, ctx: PodContext, process: ContainerProcess,
                  set_ready: Callable[[bool], None]) -> Prober | None:
        prober = cls(container, ctx, process, set_ready)
        if not prober._threads:
            return None
        for thread in prober._threads:
            thread.start()
        return prober

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, kind: str) -> None:
        probe = self.container[kind]
        successes = failures = 0
        if self._stop.wait(float(probe.get("initialDelaySeconds", 0))):
            return
        while not self._stop.is_set():
            ok = probe_once(probe, self.container, self.ctx.pod_ip, self.process.pid)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "readinessProbe":
                if successes >= int(probe.get("successThreshold", 1)):
                    self.set_ready(True)
                elif failures >= int(probe.get("failureThreshold", 3)):
                    self.set_ready(False)
            elif failures >= int(probe.get("failureThreshold", 3)):
                self.process.terminate(self.ctx.grace)
                return
            self._stop.wait(float(probe.get("periodSeconds", 10)))
