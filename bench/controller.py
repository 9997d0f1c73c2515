"""The DataVolume controller under load: many small DataVolumes created at once, end to end.

What runs (all real, all started here and stopped at the end): the control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler) from ``kubeenv``, the node agent as its
own process (``python -m kubeenv.nodeagent``: every importer pod is a real ``python -m importer``
process), nginx on the node IP serving a small qcow2 made here with ``qemu-img``, and the
controller process (``python -m cdi.controller``) logged in as the service account ``deploy/``
creates, so it runs with its production RBAC.

What is measured, from the moment the first DataVolume is created:

- time to the first and to the last DataVolume ``Succeeded`` (seen on a watch), DVs per minute;
- each DataVolume's way there, stage by stage, with who moves it on: PVC created (controller),
  PV provisioned (node agent's provisioner), PVC Bound (kube-controller-manager), importer pod
  created (controller), Running (scheduler + node agent), ended (the importer), DataVolume
  Succeeded (controller): the median and p95 wait for each stage and when the last DataVolume got
  through it, which shows the stage that sets the pace; and how many importer pods ran at once
  (the node holds 250). Everything shares 2 cores, so the CPU seconds each part used (from
  ``/proc/<pid>/stat``; the importer pods' share is the node agent's reaped children) say where
  the cores went;
- API requests per DataVolume, from the apiserver's own ``/metrics`` scraped as admin before the
  first create and once everything has settled (importer pods removed, controller quiet). The
  controller is the only client in API Priority and Fairness' ``service-accounts`` flow schema
  (kube-controller-manager's controllers match ``kube-system-service-accounts``, the scheduler
  its own, and the admin user of the node agent and of this script ``exempt``), so
  ``apiserver_flowcontrol_dispatched_requests_total`` by flow schema counts the controller's
  requests (reads and writes, watches included) apart from everyone else's. The controller's
  writes alone come from its own counter (``Kube.requests``, logged when it stops; it reads only
  from its watch cache, so its requests are those writes plus its watches' (re)connections).
  ``apiserver_request_total`` by verb and resource covers every client. (No audit log: kubeenv's
  ``ControlPlane`` takes no extra apiserver flags, and the flow schemas give the split anyway);
- controller peak RSS (``VmHWM`` from ``/proc/<pid>/status``, read before it stops), and the
  apiserver's and etcd's.

Nothing is simulated: a number printed is a number measured in this run. With ``--count`` below
500 the 500-DataVolume time is also shown as a linear extrapolation, labelled as such.

    .venv/bin/python bench/controller.py [--count 500] [--mix blank,http] [--workers 8]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
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

from kubernetes import client, config

from kubeenv.controlplane import ControlPlane
from kubeenv.nodeagent.kube import Informer
from kubeenv.process import Process
from tests.controller.conftest import kubectl, service_account_kubeconfig
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import make_ca

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"
NODE = "cdi-bench-node"
NAMESPACE = "bench"
CONTROLLER_FLOW = "service-accounts"  # the APF flow schema the controller's service account lands in
IMAGE = "disk.qcow2"
TICK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20

MetricKey = tuple[str, tuple[tuple[str, str], ...]]
Metrics = dict[MetricKey, float]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


# -- processes and their /proc figures ------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` in bytes (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own user+system, reaped children's user+system) CPU seconds of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    return Process.spawn(name, argv, workdir / "logs" / f"{name}.log", die_with_parent=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def wait_for(what: str, check: Callable[[], Any], timeout: float, *watched: Process) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for process in watched:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited while waiting for {what}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- the cluster ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    plane: ControlPlane
    agent: Process
    node_ip: str
    nginx: Nginx
    controller: Process
    api: client.ApiClient
    workdir: Path

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def pids(self) -> dict[str, int]:
        by_name = {p.name: p.pid for p in self.plane.processes}
        return {"controller": self.controller.pid, "node agent": self.agent.pid,
                "kube-apiserver": by_name["kube-apiserver"], "etcd": by_name["etcd"],
                "kube-controller-manager": by_name["kube-controller-manager"],
                "kube-scheduler": by_name["kube-scheduler"]}


def start_agent(plane: ControlPlane, workdir: Path) -> tuple[Process, str]:
    """The node agent as its own process (as kubelet is); returns it and the node IP it reports."""
    agent = spawn("node-agent", [sys.executable, "-m", "kubeenv.nodeagent", "--kubeconfig", str(plane.kubeconfig),
                                 "--workdir", str(workdir / "node"), "--node-name", NODE], workdir)

    def node_ip() -> str | None:
        match = re.search(r"node IP (\S+);", agent.log_tail(200))
        return match.group(1) if match else None
    return agent, str(wait_for("the node agent", node_ip, 120, agent))


def install(plane: ControlPlane) -> None:
    """CRDs and ``deploy/``; the Deployment goes (its image is not on this node): the process runs."""
    kubectl(plane, "apply", "-f", str(ROOT / "crds"))
    kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    kubectl(plane, "apply", "-f", str(ROOT / "deploy"))
    kubectl(plane, "delete", "deployment", "-n", "cdi", "cdi-py-controller", "--ignore-not-found")


def start_controller(plane: ControlPlane, api: client.ApiClient, workdir: Path, workers: int) -> Process:
    kubeconfig = service_account_kubeconfig(plane, client.CoreV1Api(api), workdir / "controller.kubeconfig")
    return spawn("controller", [sys.executable, "-m", "cdi.controller", "--kubeconfig", str(kubeconfig),
                                "--standalone", "-A", "--workers", str(workers)],
                 workdir, env={"IMPORTER_IMAGE": "cdi-py-importer"})


@contextlib.contextmanager
def cluster(workdir: Path, workers: int, image_mib: int) -> Iterator[Cluster]:
    """Everything started, in order; everything stopped on the way out, whatever happened."""
    with contextlib.ExitStack() as stack:
        log("starting the control plane")
        plane = ControlPlane.start(workdir / "kube")
        stack.callback(plane.stop)
        api = config.new_client_from_config(str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        stack.callback(api.close)
        agent, node_ip = start_agent(plane, workdir)
        stack.callback(stop_agent, agent)
        image = make_image(workdir / "images", image_mib)
        nginx = start_nginx(image.parent, workdir / "nginx", make_ca(workdir / "ca"), host=node_ip)
        stack.callback(nginx.stop)
        install(plane)
        controller = start_controller(plane, api, workdir, workers)
        stack.callback(controller.stop, 30)
        yield Cluster(plane, agent, node_ip, nginx, controller, api, workdir)
        log("stopping")


def mounts_under(directory: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(directory))]


def stop_agent(agent: Process) -> None:
    agent.stop(grace=180)


def controller_ready(c: Cluster) -> bool:
    """The controller has listed everything: StorageProfiles exist for the node agent's classes."""
    classes = client.StorageV1Api(c.api).list_storage_class().items
    profiles = c.custom.list_cluster_custom_object(GROUP, VERSION, "storageprofiles")["items"]
    return bool(classes) and len(profiles) >= len(classes)


# -- the apiserver's metrics ----------------------------------------------------------------------

WANTED = ("apiserver_request_total", "apiserver_flowcontrol_dispatched_requests_total")
_SAMPLE = re.compile(r'^(\w+)\{(.*)\} ([0-9.e+-]+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(plane: ControlPlane) -> Metrics:
    """The request counters from the apiserver's ``/metrics``, as the admin user."""
    context = ssl.create_default_context(cafile=str(plane.ca))
    context.load_cert_chain(str(plane.ca.parent / "admin.crt"), str(plane.ca.parent / "admin.key"))
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

# each DataVolume's way to Succeeded, one stage after another, and who moves it on
STAGES = (("created", "this script"), ("pvc", "controller"), ("pv", "node agent's provisioner"),
          ("bound", "kube-controller-manager"), ("pod", "controller"), ("running", "scheduler + node agent"),
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
        with self.lock:
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


def watch(c: Cluster, recorder: Recorder) -> list[Informer]:
    """Informers (list, then watch, relist on expiry) on the DataVolumes, claims, volumes and pods."""
    lists: list[tuple[str, Callable[..., Any], Callable[[str, dict[str, Any]], None]]] = [
        ("dvs", functools.partial(c.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL),
         recorder.on_dv),
        ("pvcs", functools.partial(c.core.list_namespaced_persistent_volume_claim, NAMESPACE), recorder.on_pvc),
        ("pvs", c.core.list_persistent_volume, recorder.on_pv),
        ("pods", functools.partial(c.core.list_namespaced_pod, NAMESPACE), recorder.on_pod),
    ]
    informers = [Informer(name, call, handler, resync=3600) for name, call, handler in lists]
    for informer in informers:
        informer.start().wait_synced()
    return informers


# -- the load ------------------------------------------------------------------------------------


def dv_body(name: str, kind: str, url: str, size: str) -> dict[str, Any]:
    source = {"blank": {}} if kind == "blank" else {"http": {"url": url}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume", "metadata": {"name": name},
            "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}}}


def create_all(c: Cluster, bodies: list[dict[str, Any]], threads: int) -> float:
    """Create every DataVolume from ``threads`` threads; the seconds it took."""
    custom = c.custom
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(custom.create_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL,
                                   body, _preload_content=False) for body in bodies]:
            future.result()
    return time.monotonic() - start


def wait_all(c: Cluster, recorder: Recorder, start: float, timeout: float) -> bool:
    """True once all Succeeded; False on a Failed DataVolume or the timeout. Logs progress."""
    deadline = start + timeout
    while not recorder.done.wait(15):
        with recorder.lock:
            alive, running = len(recorder.pods_alive), len(recorder.pods_running)
        log(f"{time.monotonic() - start:6.0f} s: {recorder.succeeded()}/{recorder.expected} Succeeded, "
            f"{alive} importer pods ({running} running)")
        for process in (c.controller, c.agent, *c.plane.processes):
            if not process.alive():
                raise RuntimeError(f"{process.name} died:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            return False
    return not recorder.failed


# -- the report ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spans(recorder: Recorder, begin: str, end: str) -> list[float]:
    first, then = recorder.times(begin), recorder.times(end)
    return [then[dv] - first[dv] for dv in then if dv in first]


def controller_writes(log_path: Path) -> int | None:
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
    before: Metrics = field(default_factory=dict)
    at_success: Metrics = field(default_factory=dict)
    after: Metrics = field(default_factory=dict)
    cpu_before: dict[str, tuple[float, float]] = field(default_factory=dict)
    cpu_after: dict[str, tuple[float, float]] = field(default_factory=dict)
    rss_before: int = 0
    hwm: dict[str, int] = field(default_factory=dict)
    writes: int | None = None
    cpu_self: float = 0.0


def report(run: Run, recorder: Recorder) -> None:
    n = run.count
    ok = recorder.times("succeeded")
    first, last = min(ok.values()) - run.start, max(ok.values()) - run.start
    kinds = Counter(run.mix[i % len(run.mix)] for i in range(n))
    print(f"\ncdi-py controller bench: {n} DataVolumes ("
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
    print(f"  importer pods: at most {recorder.peak_alive} at once ({recorder.peak_running} Running; "
          f"the node holds 250)")
    report_cpu(run)
    report_requests(run)
    print(f"  controller RSS: peak (VmHWM) {run.hwm['controller'] / MiB:.1f} MiB, "
          f"{run.rss_before / MiB:.1f} MiB before the first create")
    print("  peak RSS (VmHWM): " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in run.hwm.items()
                                              if k != "controller"))


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


def report_cpu(run: Run) -> None:
    used = {name: run.cpu_after[name][0] - run.cpu_before[name][0] for name in run.cpu_after}
    pods = run.cpu_after["node agent"][1] - run.cpu_before["node agent"][1]
    wall = run.settled - run.start
    cores = (os.cpu_count() or 1) * wall
    used["this script"] = run.cpu_self
    parts = sorted({"importer pods (reaped by the node agent)": pods, **used}.items(), key=lambda kv: -kv[1])
    print(f"  CPU seconds from the first create until settled ({wall:.0f} s x {os.cpu_count()} cores = "
          f"{cores:.0f} available; {sum(v for _, v in parts) / cores:.0%} used by these):")
    print("    " + ", ".join(f"{k} {v:.1f}" for k, v in parts))
    print(f"    per DataVolume: importer pod {pods / run.count:.2f} s, controller "
          f"{used['controller'] / run.count * 1000:.0f} ms, node agent {used['node agent'] / run.count * 1000:.0f} ms")


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


def bench(c: Cluster, args: argparse.Namespace, run: Run) -> bool:
    wait_for("the controller to list everything", lambda: controller_ready(c), 120, c.controller)
    c.core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for("the namespace's default service account",
             lambda: c.core.list_namespaced_service_account(NAMESPACE).items, 60)
    wait_quiet(c.plane, quiet=3, timeout=30)
    recorder = Recorder(run.count)
    informers = watch(c, recorder)
    pids = c.pids()
    url = f"{c.nginx.http}/{IMAGE}"
    bodies = [dv_body(f"{kind}-{i:04d}", kind, url, args.size)
              for i, kind in ((i, run.mix[i % len(run.mix)]) for i in range(run.count))]
    run.before, run.rss_before = scrape(c.plane), proc_status(pids["controller"], "VmRSS")
    run.cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    run.cpu_self = -cpu_seconds(os.getpid())[0]
    run.start = time.monotonic()
    log(f"creating {run.count} DataVolumes")
    run.create_seconds = create_all(c, bodies, run.threads)
    ok = wait_all(c, recorder, run.start, args.timeout)
    run.at_success = scrape(c.plane)
    if not ok:
        report_failure(recorder)
        return False
    log("all Succeeded; waiting for the importer pods to go and the controller to go quiet")
    wait_for("the importer pods removed", lambda: not recorder.pods_alive, 300, c.controller)
    wait_quiet(c.plane, quiet=5, timeout=120)
    run.settled = time.monotonic()
    run.after = scrape(c.plane)
    run.cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    run.cpu_self += cpu_seconds(os.getpid())[0]
    run.hwm = {name: proc_status(pid, "VmHWM") for name, pid in pids.items()}
    for informer in informers:
        informer.stop()
    c.controller.stop(30)
    run.writes = controller_writes(c.controller.log)
    report(run, recorder)
    return True


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
    parser.add_argument("--workers", type=int, default=8, help="the controller's reconcile workers")
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
    workdir = Path(tempfile.mkdtemp(prefix="cdi-bench-controller-"))
    try:
        with cluster(workdir, args.workers, args.image_mib) as c:
            run = Run(args.count, args.mix.split(","), args.workers, args.threads, args.image_mib,
                      (workdir / "images" / IMAGE).stat().st_size)
            return 0 if bench(c, args, run) else 1
    finally:
        left = mounts_under(workdir)
        if args.keep or left:
            log(f"work directory kept: {workdir}" + (f" (still mounted: {left[:3]})" if left else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
