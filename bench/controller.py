"""The DataVolume controller under load on the real node: many small DataVolumes at once, end to end.

What runs (all real, started here and stopped at the end): the test cluster of ``kubeenv.cluster``
(control plane, the image registry with our images, and the real node: containerd, kubelet,
kube-proxy, CoreDNS and the hostpath CSI driver with its sidecars), cdi-py deployed on it as a user
deploys it (``python -m cdi.install``: the controller is the pod of Deployment ``cdi-py-controller``
in namespace ``cdi``, with deploy/'s RBAC and resources, every importer a pod from our image),
the ``csi-hostpath`` StorageProfiles described as a CDI admin does (``spec.claimPropertySets``),
and nginx on the node IP serving a small qcow2 made here with ``qemu-img``.

What is measured, from the moment the first DataVolume is created:

- time to the first and to the last DataVolume ``Succeeded`` (seen on a watch), DVs per minute;
- each DataVolume's way there, stage by stage, with who moves it on: PVC created (controller),
  PV provisioned (CSI external-provisioner + driver), PVC Bound (kube-controller-manager), importer
  pod created (controller), Running (scheduler + kubelet/containerd), ended (the importer),
  DataVolume Succeeded (controller): the median and p95 wait for each stage and when the last
  DataVolume got through it, which shows the stage that sets the pace; and how many importer pods
  existed and ran at once. Importer pods request CPU (CDIConfig's ``podResourceRequirements``,
  CDI's defaults), so the scheduler admits only as many as the node's allocatable CPU holds: the
  report prints that bound beside the peak;
- CPU seconds per component, since everything shares 2 cores: host processes (control plane,
  registry, containerd, kubelet, kube-proxy, the CSI processes) from ``/proc/<pid>/stat``; pods from
  their cgroup v1 ``cpuacct.usage`` (the controller's, the other long-lived pods', and the importer
  pods' as all of ``kubepods`` minus the long-lived ones, since a parent cgroup keeps what its
  removed children used); the whole machine's busy time from ``/proc/stat`` (other agents' work
  included), so what is left unattributed (containerd shims, runc, the rest of the host) shows;
- API requests per DataVolume, from the apiserver's ``/metrics`` scraped as admin before the first
  create and once everything has settled. The controller authenticates as its ServiceAccount from
  inside its pod, which lands in API Priority and Fairness' ``service-accounts`` flow schema, so
  ``apiserver_flowcontrol_dispatched_requests_total`` by flow schema counts its requests apart
  (kube-controller-manager's controllers and CoreDNS match ``kube-system-service-accounts``,
  kubelet ``system-nodes``, the CSI sidecars and this script run as admin: ``exempt``). Caveat:
  cdi-apiserver and the upload proxy are ServiceAccounts too; they are idle here, and the
  controller's own write counter (logged when it stops, read from its log stream) is the check.
  ``apiserver_request_total`` by verb and resource covers every client;
- the controller's peak memory: ``VmHWM`` of its process (found through its container's cgroup) and
  the container cgroup's ``memory.max_usage_in_bytes`` (page cache included), read before it is
  scaled to 0; its CPU throttling under deploy/'s 500m limit (``cpu.stat``); the apiserver's and
  etcd's ``VmHWM``.

Dropped with the Python node agent it used to run on: the agent's reaped-children CPU (importer
pods are now cgroups) and the controller as a host process (it is the deployed pod now).
Nothing is simulated: a number printed is a number measured in this run. With ``--count`` below
500 the 500-DataVolume time is also shown as a linear extrapolation, labelled as such.

One node per host: run it under the node lock, as the test suite does:

    flock /tmp/cdi-node.lock .venv/bin/python bench/controller.py [--count 500] [--mix blank,http] [--workers 8]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import urllib3
from kubernetes import client, config, watch

from kubeenv.cluster import Cluster
from kubeenv.controlplane import ControlPlane
from tests.controller.conftest import describe_storage
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import make_ca

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"
NAMESPACE = "bench"
CDI_NAMESPACE, CONTROLLER = "cdi", "cdi-py-controller"
CONTROLLER_FLOW = "service-accounts"  # the APF flow schema the controller's service account lands in
IMAGE = "disk.qcow2"
TICK = os.sysconf("SC_CLK_TCK")
CGROUP = Path("/sys/fs/cgroup")
MiB = 1 << 20

MetricKey = tuple[str, tuple[tuple[str, str], ...]]
Metrics = dict[MetricKey, float]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float, cluster: Cluster | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if cluster is not None:
            check_alive(cluster)
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def check_alive(cluster: Cluster) -> None:
    for process in cluster.dead():
        raise RuntimeError(f"{process.name} died:\n{process.log_tail()}")


# -- the image ------------------------------------------------------------------------------------


def make_image(directory: Path, mib: int) -> Path:
    """A qcow2 of ``mib`` MiB virtual size, every other MiB random data, the rest holes."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "disk.raw"
    with open(raw, "wb") as out:
        out.truncate(mib * MiB)
        for offset in range(0, mib, 2):
            out.seek(offset * MiB)
            out.write(os.urandom(MiB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(directory / IMAGE)],
                   check=True)
    raw.unlink()
    return directory / IMAGE


# -- host processes and cgroups: their figures ----------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` in bytes (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """A process's own user+system CPU seconds (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    utime, stime = (int(v) for v in text[text.rindex(")") + 2:].split()[11:13])
    return (utime + stime) / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine spent on anything but idle and iowait (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def pod_cgroup(hierarchy: str, pod: client.V1Pod) -> Path:
    """A pod's cgroup under kubelet's cgroupfs driver: ``kubepods[/burstable|/besteffort]/pod<uid>``."""
    qos = (pod.status.qos_class or "").lower()
    base = CGROUP / hierarchy / "kubepods"
    return (base if qos == "guaranteed" else base / qos) / f"pod{pod.metadata.uid}"


def container_cgroup(hierarchy: str, pod: client.V1Pod) -> Path:
    container_id: str = pod.status.container_statuses[0].container_id.split("://", 1)[1]
    return pod_cgroup(hierarchy, pod) / container_id


def cgroup_cpu(path: Path) -> float:
    """``cpuacct.usage`` of a cgroup v1 directory, in seconds."""
    return read_int(path / "cpuacct.usage") / 1e9


def cpu_stat(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split() for line in (path / "cpu.stat").read_text().splitlines())}
    except OSError:
        return {}


# -- the cluster ----------------------------------------------------------------------------------


@dataclass
class Bench:
    """The running cluster with cdi-py installed, and what the bench needs of it."""

    cluster: Cluster
    nginx: Nginx
    api: client.ApiClient
    workdir: Path

    @property
    def plane(self) -> ControlPlane:
        return self.cluster.plane

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def host_pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.cluster.processes}

    def controller_pod(self) -> client.V1Pod:
        pods = self.core.list_namespaced_pod(CDI_NAMESPACE, label_selector=f"app.kubernetes.io/name={CONTROLLER}")
        running = [p for p in pods.items if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]
        if len(running) != 1:
            raise RuntimeError(f"expected one running controller pod, found {len(running)}")
        return running[0]

    def long_lived_pods(self) -> list[client.V1Pod]:
        """Every pod outside the bench's namespace: the product's and CoreDNS."""
        return [p for p in self.core.list_pod_for_all_namespaces().items if p.metadata.namespace != NAMESPACE]


def install(cluster: Cluster, workdir: Path, workers: int) -> None:
    """``python -m cdi.install`` with our images; it waits for the Deployments."""
    argv = cluster.install_command(ca_out=workdir / "proxy-ca.crt", controller_env={"WORKERS": str(workers)})
    proc = subprocess.run([*argv, "--wait=240"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cdi.install failed:\n{proc.stdout}{proc.stderr}")


@contextlib.contextmanager
def running(workdir: Path, workers: int, image_mib: int) -> Iterator[Bench]:
    """Everything started, in order; everything stopped on the way out, whatever happened."""
    with contextlib.ExitStack() as stack:
        log("starting the cluster (control plane, registry and images, node)")
        cluster = Cluster.start(workdir / "kube")
        stack.callback(stop_cluster, cluster)
        api = config.new_client_from_config(str(cluster.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        stack.callback(api.close)
        assert cluster.node is not None
        image = make_image(workdir / "images", image_mib)
        nginx = start_nginx(image.parent, workdir / "nginx", make_ca(workdir / "ca"), host=cluster.node.node_ip)
        stack.callback(nginx.stop)
        log("installing cdi-py")
        install(cluster, workdir, workers)
        describe_storage(client.CustomObjectsApi(api))
        yield Bench(cluster, nginx, api, workdir)
        log("stopping")


def stop_cluster(cluster: Cluster) -> None:
    cluster.stop()
    left = cluster.leftovers()
    if left:
        log(f"LEFT BEHIND by the node: {left}")


# -- the apiserver's metrics ----------------------------------------------------------------------

WANTED = ("apiserver_request_total", "apiserver_flowcontrol_dispatched_requests_total")
_SAMPLE = re.compile(r'^(\w+)\{(.*)\} ([0-9.e+-]+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(plane: ControlPlane) -> Metrics:
    """The request counters from the apiserver's ``/metrics``, as the admin user."""
    context = ssl.create_default_context(cafile=str(plane.ca))
    admin = plane.pki_pair("admin")
    context.load_cert_chain(str(admin.cert), str(admin.key))
    with urllib.request.urlopen(plane.server + "/metrics", context=context, timeout=30) as response:
        text = response.read().decode()
    metrics: Metrics = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in WANTED:
            labels = tuple(sorted(_LABEL.findall(match.group(2))))
            metrics[(match.group(1), labels)] = float(match.group(3))
    return metrics


def delta(after: Metrics, before: Metrics) -> Metrics:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def total(metrics: Metrics, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, w) in ls for k, w in labels.items()))


def by_label(metrics: Metrics, name: str, *keys: str) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for (n, ls), v in metrics.items():
        if n == name:
            found = dict(ls)
            out[tuple(found.get(k, "") for k in keys)] += int(v)
    return out


def controller_requests(plane: ControlPlane) -> float:
    return total(scrape(plane), WANTED[1], flow_schema=CONTROLLER_FLOW)


def wait_quiet(plane: ControlPlane, quiet: float, timeout: float) -> None:
    """Until the controller has made no request for ``quiet`` seconds (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, since = controller_requests(plane), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.5)
        now = controller_requests(plane)
        if now != last:
            last, since = now, time.monotonic()


# -- watching the run -----------------------------------------------------------------------------


class Watcher:
    """List, then watch from the list's resourceVersion, relisting when the watch expires; a thread
    that hands every object (as the apiserver's JSON) to ``handler``."""

    def __init__(self, name: str, list_call: Callable[..., Any], handler: Callable[[str, dict[str, Any]], None]):
        self.name, self.list_call, self.handler = name, list_call, handler
        self.synced, self.stopped = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        if not self.synced.wait(60):
            raise TimeoutError(f"the {self.name} watch did not sync")
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._watch(self._list())
            except client.ApiException as error:
                if error.status != 410:
                    log(f"watch {self.name}: {error.status} {error.reason}; relisting")
            except (OSError, urllib3.exceptions.HTTPError, ValueError) as error:  # a dropped stream: relist
                if not self.stopped.is_set():  # (not the apiserver going away after the bench)
                    log(f"watch {self.name}: {error!r}; relisting")
                    time.sleep(1)

    def _list(self) -> str:
        listing = json.loads(self.list_call(_preload_content=False).data)
        for item in listing["items"]:
            self.handler("ADDED", item)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        while not self.stopped.is_set():
            for event in watch.Watch().stream(self.list_call, resource_version=version, timeout_seconds=30,
                                              allow_watch_bookmarks=True):
                kind, body = event["type"], event["raw_object"]
                if kind == "ERROR":
                    return  # expired: relist
                version = body["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self.handler(kind, body)
                if self.stopped.is_set():
                    return


# each DataVolume's way to Succeeded, one stage after another, and who moves it on
STAGES = (("created", "this script"), ("pvc", "controller"), ("pv", "CSI external-provisioner + driver"),
          ("bound", "kube-controller-manager"), ("pod", "controller"), ("running", "scheduler + kubelet/containerd"),
          ("ended", "importer"), ("succeeded", "controller"))


@dataclass
class Recorder:
    """When each DataVolume first reached each stage (monotonic seconds, from watches), and pod counts."""

    expected: int
    stamps: dict[str, dict[str, float]] = field(default_factory=lambda: {stage: {} for stage, _ in STAGES})
    failed: dict[str, str] = field(default_factory=dict)
    pods_alive: set[str] = field(default_factory=set)
    pods_running: set[str] = field(default_factory=set)
    peak_alive: int = 0
    peak_running: int = 0
    pod_cpu: str = ""
    """An importer pod's CPU request (CDIConfig's ``podResourceRequirements``, as the controller set it)."""
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, stage: str, dv: str) -> None:
        self.stamps[stage].setdefault(dv, time.monotonic())

    def on_dv(self, event: str, dv: dict[str, Any]) -> None:
        name, status = dv["metadata"]["name"], dv.get("status") or {}
        with self.lock:
            self.mark("created", name)
            if status.get("phase") == "Succeeded":
                self.mark("succeeded", name)
            if status.get("phase") == "Failed":
                self.failed[name] = "; ".join(f"{c.get('reason')}: {c.get('message')}"
                                              for c in status.get("conditions") or [] if c.get("message"))
            if self.failed or self.succeeded() >= self.expected:
                self.done.set()

    def on_pvc(self, event: str, pvc: dict[str, Any]) -> None:
        with self.lock:
            self.mark("pvc", pvc["metadata"]["name"])
            if (pvc.get("status") or {}).get("phase") == "Bound":
                self.mark("bound", pvc["metadata"]["name"])

    def on_pv(self, event: str, pv: dict[str, Any]) -> None:
        claim = pv["spec"].get("claimRef") or {}
        if claim.get("namespace") == NAMESPACE:
            with self.lock:
                self.mark("pv", claim["name"])

    def on_pod(self, event: str, pod: dict[str, Any]) -> None:
        name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase", "")
        owners = [o["name"] for o in pod["metadata"].get("ownerReferences") or []
                  if o.get("kind") == "PersistentVolumeClaim"]
        containers = pod["spec"]["containers"]
        with self.lock:
            self.pod_cpu = self.pod_cpu or ((containers[0].get("resources") or {}).get("requests") or {}).get("cpu", "")
            for dv in owners:
                self.mark("pod", dv)
                if phase == "Running":
                    self.mark("running", dv)
                if phase in ("Succeeded", "Failed"):
                    self.mark("running", dv)  # a pod that ran faster than the watch could see it run
                    self.mark("ended", dv)
            ended = event == "DELETED" or phase in ("Succeeded", "Failed")
            (self.pods_alive.discard if ended else self.pods_alive.add)(name)
            (self.pods_running.add if phase == "Running" and not ended else self.pods_running.discard)(name)
            self.peak_alive = max(self.peak_alive, len(self.pods_alive))
            self.peak_running = max(self.peak_running, len(self.pods_running))

    def succeeded(self) -> int:
        return len(self.stamps["succeeded"])

    def times(self, stage: str) -> dict[str, float]:
        with self.lock:
            return dict(self.stamps[stage])


def watch_all(b: Bench, recorder: Recorder) -> list[Watcher]:
    """Watches on the DataVolumes, claims, volumes and pods."""
    lists: list[tuple[str, Callable[..., Any], Callable[[str, dict[str, Any]], None]]] = [
        ("dvs", functools.partial(b.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL),
         recorder.on_dv),
        ("pvcs", functools.partial(b.core.list_namespaced_persistent_volume_claim, NAMESPACE), recorder.on_pvc),
        ("pvs", b.core.list_persistent_volume, recorder.on_pv),
        ("pods", functools.partial(b.core.list_namespaced_pod, NAMESPACE), recorder.on_pod),
    ]
    return [Watcher(name, call, handler).start() for name, call, handler in lists]


def follow_log(core: client.CoreV1Api, pod: str, path: Path) -> threading.Thread:
    """The controller pod's log, streamed to a file until the container stops (it logs its write
    count on the way out, after which ``kubectl logs`` can no longer reach it)."""
    def copy() -> None:
        response = core.read_namespaced_pod_log(pod, CDI_NAMESPACE, follow=True, _preload_content=False)
        with open(path, "wb") as out:
            out.writelines(response.stream(4096))
    thread = threading.Thread(target=copy, name="controller-log", daemon=True)
    thread.start()
    return thread


# -- the load ------------------------------------------------------------------------------------


def dv_body(name: str, kind: str, url: str, size: str) -> dict[str, Any]:
    source = {"blank": {}} if kind == "blank" else {"http": {"url": url}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume", "metadata": {"name": name},
            "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}}}


def create_all(b: Bench, bodies: list[dict[str, Any]], threads: int) -> float:
    """Create every DataVolume from ``threads`` threads; the seconds it took."""
    custom = b.custom
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(custom.create_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL,
                                   body, _preload_content=False) for body in bodies]:
            future.result()
    return time.monotonic() - start


def wait_all(b: Bench, recorder: Recorder, start: float, timeout: float) -> bool:
    """True once all Succeeded; False on a Failed DataVolume or the timeout. Logs progress."""
    deadline = start + timeout
    while not recorder.done.wait(15):
        with recorder.lock:
            alive, running = len(recorder.pods_alive), len(recorder.pods_running)
        log(f"{time.monotonic() - start:6.0f} s: {recorder.succeeded()}/{recorder.expected} Succeeded, "
            f"{alive} importer pods ({running} running)")
        check_alive(b.cluster)
        if time.monotonic() > deadline:
            return False
    return not recorder.failed


def cpu_quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def node_cpu(b: Bench) -> tuple[float, float]:
    """(node allocatable CPU, CPU requested by the long-lived pods): with an importer pod's request,
    what bounds how many importer pods the scheduler lets run at once."""
    node = b.core.list_node().items[0]
    requested = sum(cpu_quantity((c.resources.requests or {}).get("cpu", "0"))
                    for p in b.long_lived_pods() for c in p.spec.containers if c.resources)
    return cpu_quantity(node.status.allocatable["cpu"]), requested


# -- what is sampled before and after -------------------------------------------------------------


@dataclass
class Sample:
    """CPU seconds by component, at one moment."""

    host: dict[str, float]
    pods: dict[str, float]
    kubepods: float
    machine: float
    this_script: float

    @classmethod
    def take(cls, b: Bench, pod_cgroups: dict[str, Path]) -> Sample:
        return cls({name: cpu_seconds(pid) for name, pid in b.host_pids().items()},
                   {name: cgroup_cpu(path) for name, path in pod_cgroups.items()},
                   cgroup_cpu(CGROUP / "cpuacct" / "kubepods"), machine_busy(), cpu_seconds(os.getpid()))


def pod_cgroups(b: Bench) -> dict[str, Path]:
    """name -> cpuacct cgroup of every long-lived pod (the controller's under ``controller``)."""
    out = {}
    for pod in b.long_lived_pods():
        name = "controller" if pod.metadata.name.startswith(CONTROLLER) else pod.metadata.name.rsplit("-", 2)[0]
        out[name if name not in out else pod.metadata.name] = pod_cgroup("cpuacct", pod)
    return out


@dataclass
class ControllerMemory:
    rss_before: int = 0
    hwm: int = 0
    cgroup_max: int = 0
    throttled: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def pid(pod: client.V1Pod) -> int:
        procs = (container_cgroup("memory", pod) / "cgroup.procs").read_text().split()
        return min(int(p) for p in procs)


# -- the report ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spans(recorder: Recorder, begin: str, end: str) -> list[float]:
    first, then = recorder.times(begin), recorder.times(end)
    return [then[dv] - first[dv] for dv in then if dv in first]


def controller_writes(log_path: Path) -> int | None:
    if not log_path.exists():
        return None
    match = re.findall(r"stopped after (\d+) API writes", log_path.read_text(errors="replace"))
    return int(match[-1]) if match else None


@dataclass
class Run:
    count: int
    mix: list[str]
    workers: int
    threads: int
    image_mib: int
    image_bytes: int
    start: float = 0.0
    create_seconds: float = 0.0
    settled: float = 0.0
    slots: tuple[float, float] = (0.0, 0.0)
    before: Metrics = field(default_factory=dict)
    at_success: Metrics = field(default_factory=dict)
    after: Metrics = field(default_factory=dict)
    cpu_before: Sample | None = None
    cpu_after: Sample | None = None
    memory: ControllerMemory = field(default_factory=ControllerMemory)
    hwm: dict[str, int] = field(default_factory=dict)
    writes: int | None = None


def report(run: Run, recorder: Recorder) -> None:
    n = run.count
    ok = recorder.times("succeeded")
    first, last = min(ok.values()) - run.start, max(ok.values()) - run.start
    kinds = Counter(run.mix[i % len(run.mix)] for i in range(n))
    print(f"\ncdi-py controller bench on the real node: {n} DataVolumes ("
          + ", ".join(f"{v} {k}" for k, v in kinds.items())
          + f"; http = {run.image_mib} MiB qcow2, {run.image_bytes / MiB:.1f} MiB on the wire), "
          f"controller workers {run.workers}, {os.cpu_count()} cores")
    print(f"  created {n} in {run.create_seconds:.1f} s ({n / run.create_seconds:.0f}/s, {run.threads} threads)")
    print(f"  all Succeeded after {last:.1f} s: {n / last * 60:.1f} DVs/minute; first Succeeded after {first:.1f} s")
    if n != 500:
        print(f"  (linear extrapolation to 500, NOT measured: {last * 500 / n / 60:.1f} min)")
    to_ok = spans(recorder, "created", "succeeded")
    print(f"  DataVolume created -> Succeeded: median {statistics.median(to_ok):.1f} s, "
          f"p95 {pct(to_ok, 0.95):.1f} s")
    report_stages(run, recorder)
    allocatable, taken = run.slots
    each = cpu_quantity(recorder.pod_cpu or "0")
    bound = f"{int((allocatable - taken) / each)}" if each else "no CPU request: unbounded"
    print(f"  importer pods: at most {recorder.peak_alive} at once ({recorder.peak_running} Running); the "
          f"scheduler admits {bound} (node {allocatable:g} CPU, {taken:g} requested by the long-lived pods, "
          f"{each:g} per importer pod)")
    report_cpu(run)
    report_requests(run)
    mem = run.memory
    print(f"  controller memory: peak RSS (VmHWM) {mem.hwm / MiB:.1f} MiB ({mem.rss_before / MiB:.1f} MiB before the "
          f"first create); its container cgroup's max usage {mem.cgroup_max / MiB:.1f} MiB (page cache included)")
    if mem.throttled:
        print(f"  controller CPU limit (500m): throttled in {mem.throttled.get('nr_throttled', 0)} of "
              f"{mem.throttled.get('nr_periods', 0)} periods, {mem.throttled.get('throttled_time', 0) / 1e9:.1f} s")
    print("  peak RSS (VmHWM): " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in run.hwm.items()))


def report_stages(run: Run, recorder: Recorder) -> None:
    """Per stage: who does it, how long a DataVolume waits for it, when the last one got through."""
    print("  stage (done by): median / p95 wait for it, all through at (rate over the run)")
    for (before, _), (stage, who) in itertools.pairwise(STAGES):
        waits, reached = spans(recorder, before, stage), recorder.times(stage)
        if not waits:
            continue
        last = max(reached.values()) - run.start
        print(f"    {before} -> {stage} ({who}): {statistics.median(waits):5.1f} / {pct(waits, 0.95):5.1f} s, "
              f"all {len(reached)} at {last:5.1f} s ({len(reached) / last * 60:.0f}/min)")


CSI = ("hostpathplugin", "csi-node-driver-registrar", "csi-provisioner", "csi-resizer", "csi-snapshotter",
       "snapshot-controller")


def report_cpu(run: Run) -> None:
    before, after = run.cpu_before, run.cpu_after
    assert before is not None and after is not None
    host = {name: after.host[name] - before.host.get(name, 0.0) for name in after.host}
    pods = {f"pod {name}": after.pods[name] - before.pods.get(name, 0.0) for name in after.pods}
    importers = (after.kubepods - before.kubepods) - sum(pods.values())
    csi = {name: host.pop(name) for name in CSI if name in host}
    used = {**host, **pods, "importer pods (cgroups)": importers,
            "CSI driver + sidecars": sum(csi.values()), "this script": after.this_script - before.this_script}
    machine = after.machine - before.machine
    wall = run.settled - run.start
    cores = (os.cpu_count() or 1) * wall
    parts = sorted(used.items(), key=lambda kv: -kv[1])
    print(f"  CPU seconds from the first create until settled ({wall:.0f} s x {os.cpu_count()} cores = "
          f"{cores:.0f} available; the machine was busy {machine:.0f}, other agents' work included; "
          f"{machine - sum(used.values()):.0f} not attributed below: shims, runc, the rest of the host):")
    print("    " + ", ".join(f"{k} {v:.1f}" for k, v in parts if v >= 0.05))
    print("    CSI: " + ", ".join(f"{k} {v:.1f}" for k, v in csi.items()))
    print(f"    per DataVolume: importer pod {importers / run.count:.2f} s, controller "
          f"{pods.get('pod controller', 0.0) / run.count * 1000:.0f} ms, kubelet "
          f"{host.get('kubelet', 0.0) / run.count * 1000:.0f} ms, containerd "
          f"{host.get('containerd', 0.0) / run.count * 1000:.0f} ms")


def report_requests(run: Run) -> None:
    n, d, flow = run.count, delta(run.after, run.before), WANTED[1]
    at_ok = total(delta(run.at_success, run.before), flow, flow_schema=CONTROLLER_FLOW)
    schemas = by_label(d, flow, "flow_schema")
    ctl = schemas.get((CONTROLLER_FLOW,), 0)
    everyone = sum(schemas.values())
    print("  API requests (apiserver /metrics deltas, first create -> settled):")
    print(f"    controller (APF flow schema {CONTROLLER_FLOW}, reads+writes+watches): {ctl} = {ctl / n:.2f}/DV "
          f"({at_ok / n:.2f}/DV by the last Succeeded)")
    if run.writes is not None:
        print(f"    controller writes (its own counter, whole life incl. startup): {run.writes} = "
              f"{run.writes / n:.2f}/DV")
    print(f"    all clients: {everyone} = {everyone / n:.2f}/DV; by flow schema: "
          + ", ".join(f"{k[0]} {v}" for k, v in schemas.most_common()))
    verbs = by_label(d, WANTED[0], "verb", "resource", "subresource")
    print("    all clients by verb/resource (per DV): " + ", ".join(
        f"{v} {r}{'/' + s if s else ''} {c / n:.2f}" for (v, r, s), c in verbs.most_common(14)))


# -- main ----------------------------------------------------------------------------------------


def prepare(b: Bench) -> None:
    b.core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for("the namespace's default service account",
             lambda: b.core.list_namespaced_service_account(NAMESPACE).items, 60)
    wait_quiet(b.plane, quiet=3, timeout=30)


def bench(b: Bench, args: argparse.Namespace, run: Run) -> bool:
    prepare(b)
    recorder = Recorder(run.count)
    watchers = watch_all(b, recorder)
    controller = b.controller_pod()
    log_thread = follow_log(b.core, controller.metadata.name, b.workdir / "controller.log")
    cgroups = pod_cgroups(b)
    run.slots = node_cpu(b)
    url = f"{b.nginx.http}/{IMAGE}"
    bodies = [dv_body(f"{kind}-{i:04d}", kind, url, args.size)
              for i, kind in ((i, run.mix[i % len(run.mix)]) for i in range(run.count))]
    pid = ControllerMemory.pid(controller)
    run.before, run.memory.rss_before = scrape(b.plane), proc_status(pid, "VmRSS")
    run.cpu_before = Sample.take(b, cgroups)
    run.start = time.monotonic()
    log(f"creating {run.count} DataVolumes")
    run.create_seconds = create_all(b, bodies, run.threads)
    ok = wait_all(b, recorder, run.start, args.timeout)
    run.at_success = scrape(b.plane)
    if not ok:
        report_failure(recorder)
        return False
    log("all Succeeded; waiting for the importer pods to go and the controller to go quiet")
    wait_for("the importer pods removed", lambda: not recorder.pods_alive, 300, b.cluster)
    wait_quiet(b.plane, quiet=5, timeout=120)
    run.settled = time.monotonic()
    run.after = scrape(b.plane)
    run.cpu_after = Sample.take(b, cgroups)
    host = b.host_pids()
    run.hwm = {name: proc_status(host[name], "VmHWM") for name in ("kube-apiserver", "etcd", "kubelet", "containerd")}
    run.memory.hwm = proc_status(pid, "VmHWM")
    run.memory.cgroup_max = read_int(container_cgroup("memory", controller) / "memory.max_usage_in_bytes")
    run.memory.throttled = cpu_stat(container_cgroup("cpu", controller))
    for watcher in watchers:
        watcher.stop()
    stop_controller(b, log_thread)
    run.writes = controller_writes(b.workdir / "controller.log")
    report(run, recorder)
    return True


def stop_controller(b: Bench, log_thread: threading.Thread) -> None:
    """Scale the controller to 0: it stops as on any rollout, logging its write count to the stream."""
    client.AppsV1Api(b.api).patch_namespaced_deployment_scale(CONTROLLER, CDI_NAMESPACE, {"spec": {"replicas": 0}})
    log_thread.join(90)


def report_failure(recorder: Recorder) -> None:
    if recorder.failed:
        for name, message in list(recorder.failed.items())[:10]:
            print(f"FAILED {name}: {message}")
    else:
        print(f"TIMED OUT: {recorder.succeeded()}/{recorder.expected} Succeeded")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500, help="DataVolumes to create at once")
    parser.add_argument("--mix", default="blank,http", help="sources, taken in turn: blank, http")
    parser.add_argument("--workers", type=int, default=8, help="the controller's reconcile workers (WORKERS)")
    parser.add_argument("--threads", type=int, default=16, help="threads creating the DataVolumes")
    parser.add_argument("--image-mib", type=int, default=8, help="virtual size of the qcow2 served")
    parser.add_argument("--size", default="32Mi", help="each DataVolume's storage request")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all Succeeded")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if not set(args.mix.split(",")) <= {"blank", "http"}:
        parser.error("--mix takes blank and/or http")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cdi-bench-"))  # short: the node's unix sockets live below it
    failed = True
    try:
        with running(workdir, args.workers, args.image_mib) as b:
            run = Run(args.count, args.mix.split(","), args.workers, args.threads, args.image_mib,
                      (workdir / "images" / IMAGE).stat().st_size)
            failed = not bench(b, args, run)
            return int(failed)
    finally:
        if args.keep or failed:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
