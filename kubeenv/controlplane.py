"""A real Kubernetes control plane on loopback ports: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, started from the binaries ``scripts/kube-build`` makes.

Operators break on what a mock cannot imitate (CRD schema validation, the status subresource,
resourceVersion conflicts, RBAC, garbage collection), so the tests talk to the real thing. Each
control plane gets fresh certificates and an empty etcd under its ``workdir``; every process logs
to ``workdir/logs/<name>.log``. ``stop()`` terminates them all (SIGTERM, then SIGKILL).

    cp = ControlPlane.start(tmp_path / "kube")
    ...  # kubectl --kubeconfig cp.kubeconfig, or kubernetes.config.new_client_from_config(str(cp.kubeconfig))
    cp.stop()
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeenv.binaries import Binaries, ensure_binaries
from kubeenv.kubeconfig import write_kubeconfig
from kubeenv.pki import CertPair, ClusterPKI, make_cluster_pki
from kubeenv.process import Process, wait_for_components

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "controlplane.json"


class ControlPlaneError(RuntimeError):
    """A component failed to start or became unhealthy; the message carries its log tail."""


@dataclass
class ControlPlane:
    """A running control plane: where to reach it and the processes to stop."""

    workdir: Path
    kubeconfig: Path
    server: str
    kubectl: Path
    version: str
    ca: Path
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, *, binaries: Binaries | None = None, scheduler: bool = True,
              bind_address: str = "127.0.0.1", extra_ips: tuple[str, ...] = (),
              die_with_parent: bool = True, timeout: float = 180.0) -> ControlPlane:
        """Start every component and return once the API serves and the default service account exists.

        ``bind_address`` is where kube-apiserver listens (``0.0.0.0`` lets pods in their own
        network namespace reach it; add their view of the host to ``extra_ips`` for the serving
        cert). ``die_with_parent=False`` lets the processes outlive this Python process
        (scripts/kube-up). Raises :class:`ControlPlaneError` with the failing log, having stopped
        whatever had started.
        """
        binaries = binaries or ensure_binaries()
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        pki = make_cluster_pki(workdir / "pki", extra_ips=_host_ips(bind_address) + extra_ips)
        host = "127.0.0.1" if _unspecified(bind_address) else bind_address
        server = f"https://{_url_host(host)}:{_free_port(host)}"
        plane = cls(workdir, workdir / "kubeconfig", server, workdir / "kubectl", binaries.version, pki.ca.cert)
        try:
            plane._boot(binaries, pki, scheduler, bind_address, die_with_parent, time.monotonic() + timeout)
        except BaseException:
            plane.stop()
            raise
        return plane

    def stop(self) -> None:
        """Stop every component, newest first, so nothing is left running."""
        for process in reversed(self.processes):
            process.stop()

    def pki_pair(self, name: str) -> CertPair:
        """One of the identities :func:`make_cluster_pki` wrote (``kube-proxy``, ``admin``, ...)."""
        return CertPair(self.ca.parent / f"{name}.crt", self.ca.parent / f"{name}.key")

    def dead(self) -> list[Process]:
        """The components that have exited (an empty list while healthy)."""
        return [p for p in self.processes if not p.alive()]

    def save(self, path: Path | None = None) -> Path:
        """Record the control plane as JSON, so another process (kube-down) can find and stop it."""
        path = path or self.workdir / STATE_FILE
        data = {"workdir": str(self.workdir), "kubeconfig": str(self.kubeconfig), "server": self.server,
                "kubectl": str(self.kubectl), "version": self.version, "ca": str(self.ca),
                "processes": [p.to_json() for p in self.processes]}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> ControlPlane:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(Path(data["workdir"]), Path(data["kubeconfig"]), data["server"], Path(data["kubectl"]),
                   data["version"], Path(data["ca"]), [Process.from_json(p) for p in data["processes"]])

    # -- starting ---------------------------------------------------------------------------

    def _boot(self, binaries: Binaries, pki: ClusterPKI, scheduler: bool, bind_address: str,
              die_with_parent: bool, deadline: float) -> None:
        etcd_url = self._start_etcd(binaries, die_with_parent, deadline)
        self._start_apiserver(binaries, pki, etcd_url, bind_address, die_with_parent, deadline)
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, pki.admin, "admin")
        self._start_controller_manager(binaries, pki, die_with_parent)
        if scheduler:
            self._start_scheduler(binaries, pki, die_with_parent)
        _place_kubectl(binaries.path("kubectl"), self.kubectl)
        self._wait(lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") == 200,
                   "the default service account (created by kube-controller-manager)", deadline)

    def _spawn(self, name: str, argv: list[str], die_with_parent: bool) -> Process:
        process = Process.spawn(name, argv, self.workdir / "logs" / f"{name}.log",
                                die_with_parent=die_with_parent, cwd=self.workdir)
        self.processes.append(process)
        return process

    def _start_etcd(self, binaries: Binaries, die_with_parent: bool, deadline: float) -> str:
        client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
        self._spawn("etcd", [
            str(binaries.path("etcd")), "--name=kubeenv", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kubeenv={peer}", "--initial-cluster-state=new",
            # a test cluster is thrown away: durability only costs time on every write
            "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
        ], die_with_parent)
        self._wait(lambda: _etcd_healthy(client), "etcd", deadline)
        return client

    def _start_apiserver(self, binaries: Binaries, pki: ClusterPKI, etcd_url: str, bind_address: str,
                         die_with_parent: bool, deadline: float) -> None:
        port = self.server.rsplit(":", 1)[1]
        self._spawn("kube-apiserver", [
            str(binaries.path("kube-apiserver")),
            f"--etcd-servers={etcd_url}", f"--bind-address={bind_address}", f"--secure-port={port}",
            *_advertise_flags(bind_address),
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki.apiserver.cert}", f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            # the aggregation layer: lets an aggregated API server be registered later
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            "--enable-aggregator-routing=true",
            # kubectl logs/exec/port-forward: the apiserver authenticates to kubelet, whose webhook
            # asks back whether this user may (the binding made in _bind_kubelet_client)
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false", "--v=1",
        ], die_with_parent)
        self._wait(lambda: self._get("/readyz") == 200, "kube-apiserver /readyz", deadline)

    def _start_controller_manager(self, binaries: Binaries, pki: ClusterPKI, die_with_parent: bool) -> None:
        config = write_kubeconfig(self.workdir / "kubeconfigs" / "controller-manager.kubeconfig", self.server,
                                  pki.ca.cert, pki.controller_manager, "system:kube-controller-manager")
        self._spawn("kube-controller-manager", [
            str(binaries.path("kube-controller-manager")),
            f"--kubeconfig={config}", f"--authentication-kubeconfig={config}", f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}",
            f"--cert-dir={self.workdir / 'controller-manager'}",
            # every default controller, including the garbage collector and the PV binder
            "--controllers=*", "--use-service-account-credentials=true", "--leader-elect=false",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}", f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false", "--v=1",
        ], die_with_parent)

    def _start_scheduler(self, binaries: Binaries, pki: ClusterPKI, die_with_parent: bool) -> None:
        config = write_kubeconfig(self.workdir / "kubeconfigs" / "scheduler.kubeconfig", self.server,
                                  pki.ca.cert, pki.scheduler, "system:kube-scheduler")
        self._spawn("kube-scheduler", [
            str(binaries.path("kube-scheduler")),
            f"--kubeconfig={config}", f"--authentication-kubeconfig={config}", f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}", "--leader-elect=false",
            "--profiling=false", "--v=1",
        ], die_with_parent)

    # -- health -----------------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        wait_for_components(ready, what, deadline, self.processes, ControlPlaneError)

    def _get(self, path: str) -> int:
        """GET ``path`` as the admin user; the HTTP status, or 0 when nothing answers yet."""
        context = ssl.create_default_context(cafile=str(self.ca))
        pki_dir = self.ca.parent
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        try:
            with urllib.request.urlopen(self.server + path, context=context, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (OSError, ssl.SSLError):
            return 0


def _etcd_healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(client_url + "/health", timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def _place_kubectl(source: Path, target: Path) -> None:
    """Put the matching kubectl next to the kubeconfig: a hard link when possible, else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _advertise_flags(bind_address: str) -> list[str]:
    """Where the ``kubernetes`` service points.

    Endpoints may not be loopback addresses, so on loopback there is no endpoint to publish
    (nothing in the tests dials the service IP: there is no kube-proxy); when listening on all
    addresses, advertise the host's primary address like a real apiserver would.
    """
    if _unspecified(bind_address):
        return []
    if ipaddress.ip_address(bind_address).is_loopback:
        return [f"--advertise-address={bind_address}", "--endpoint-reconciler-type=none"]
    return [f"--advertise-address={bind_address}"]


def _unspecified(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def _host_ips(bind_address: str) -> tuple[str, ...]:
    """SANs the serving cert needs for the address it listens on (beyond loopback)."""
    if _unspecified(bind_address):
        return tuple(_primary_ips())
    return () if ipaddress.ip_address(bind_address).is_loopback else (bind_address,)


def primary_ip() -> str:
    """The host's address on its default route: a node's InternalIP, reachable from its pods."""
    ips = _primary_ips()
    if not ips:
        raise ControlPlaneError("this host has no default route, so no address pods could reach it on")
    return ips[0]


def _primary_ips() -> list[str]:
    """The host's own non-loopback IPv4 address (the one its default route uses), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: this only picks a source address
            return [str(probe.getsockname()[0])]
        except OSError:
            return []


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
