"""A pod's status from its containers' records, by kubelet's rules, and writing it to the apiserver.

Phase: Pending until the init containers are done and every container has started once; Running
while a container runs or will be restarted; Succeeded when all exited 0 and none will restart;
Failed when all stopped, one failed, and the policy will not restart it (or an init container
failed under ``Never``). Conditions: PodScheduled, PodReadyToStartContainers, Initialized,
ContainersReady, Ready. The status is written as a JSON merge patch of ``status`` (lists are
replaced whole), so it never conflicts and leaves fields it does not own (``qosClass``) alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from kubernetes.client import ApiClient, ApiException, CoreV1Api

from kubeenv.nodeagent.kube import MERGE_PATCH, Obj, log, now_rfc3339, raw
from kubeenv.nodeagent.runtime import ContainerRecord


@dataclass
class PodState:
    """What the pod worker knows beyond the container records."""

    host_ip: str
    pod_ip: str = ""
    start_time: str = field(default_factory=now_rfc3339)
    sandbox: bool = False
    init_done: bool = False
    init_failed: bool = False
    finished: bool = False
    init: list[ContainerRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)


def phase(policy: str, state: PodState) -> str:
    if state.init_failed:
        return "Failed"
    if not state.init_done:
        return "Pending"
    running = stopped = succeeded = waiting = 0
    for record in state.containers:
        terminated = record.terminated
        if record.running:
            running += 1
        elif terminated is not None:
            stopped += 1
            succeeded += terminated.get("exitCode") == 0
        elif record.last_state.get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running or not state.finished:
        return "Running"
    if succeeded == len(state.containers):
        return "Succeeded"
    return "Running" if policy == "Always" else "Failed"


class Conditions:
    """Pod conditions, keeping each one's lastTransitionTime until its status actually changes."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, str]] = {}

    def make(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        previous = self._since.get(kind)
        if previous is None or previous[0] != status:
            self._since[kind] = (status, now_rfc3339())
        condition = {"type": kind, "status": status, "lastProbeTime": None,
                     "lastTransitionTime": self._since[kind][1]}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        return condition


def pod_status(policy: str, state: PodState, conditions: Conditions) -> Obj:
    current = phase(policy, state)
    terminal = current in ("Succeeded", "Failed")
    unready = [r.name for r in state.containers if not r.ready]
    ready = not unready and not terminal and state.init_done
    why = ("PodCompleted", "") if terminal else \
        ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    uninit = [r.name for r in state.init if not r.terminated or r.terminated.get("exitCode") != 0]
    status: Obj = {
        "phase": current,
        "hostIP": state.host_ip, "hostIPs": [{"ip": state.host_ip}],
        "startTime": state.start_time,
        "conditions": [
            conditions.make("PodReadyToStartContainers", state.sandbox),
            conditions.make("Initialized", state.init_done, *(() if state.init_done else
                            ("ContainersNotInitialized", f"containers with incomplete status: [{' '.join(uninit)}]"))),
            conditions.make("Ready", ready, *(() if ready else why)),
            conditions.make("ContainersReady", ready, *(() if ready else why)),
            conditions.make("PodScheduled", True),
        ],
        "containerStatuses": [r.status() for r in state.containers],
    }
    if state.init:
        status["initContainerStatuses"] = [r.status() for r in state.init]
    if state.pod_ip:
        status["podIP"] = state.pod_ip
        status["podIPs"] = [{"ip": state.pod_ip}]
    return status


class StatusWriter:
    """Writes a pod's status when it changed; one writer per pod, safe to call from any thread."""

    def __init__(self, api: ApiClient, namespace: str, name: str, render: Callable[[], Obj]) -> None:
        self.core = CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.render = render
        self._lock = threading.Lock()
        self._last: Obj | None = None
        self.gone = False

    def write(self) -> None:
        with self._lock:
            if self.gone:
                return
            status = self.render()
            if status == self._last:
                return
            try:
                raw(self.core.patch_namespaced_pod_status, self.name, self.namespace,
                    body={"status": status}, _content_type=MERGE_PATCH)
                self._last = status
            except ApiException as error:
                if error.status == 404:
                    self.gone = True
                else:
                    log.warning("status of %s/%s: %s", self.namespace, self.name, error.reason)
            except Exception as error:  # noqa: BLE001 - the next change writes again
                log.warning("status of %s/%s: %s", self.namespace, self.name, error)
