"""Running a container for as long as its restart policy says, and recording its state.

:class:`ContainerRunner` starts a run, waits for it, records the termination (exit code, reason,
termination message), and restarts per policy (``Always``, ``OnFailure``, ``Never``) after a
back-off of 1, 2, 4, 8, then 10 s (kubelet's 10 s to 5 min, shortened for tests). A container whose
environment cannot be built yet waits (CreateContainerConfigError) and retries, as does one whose
image has no local command (ErrImagePull). :class:`ContainerRecord` is what the pod status shows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kubeenv.nodeagent.container import ContainerProcess, Exit
from kubeenv.nodeagent.envvars import ConfigError, Fetch, build_env, expand
from kubeenv.nodeagent.images import DEFAULT_PATH, UnknownImage, argv_for
from kubeenv.nodeagent.kube import Obj
from kubeenv.nodeagent.probes import Prober
from kubeenv.nodeagent.volumes import HostVolume

BACKOFF = (1.0, 2.0, 4.0, 8.0, 10.0)
DEFAULT_MESSAGE_PATH = "/dev/termination-log"


@dataclass
class PodContext:
    """What every container of one pod shares: the pod, its directory, network and volumes."""

    pod: Obj
    dir: Path
    netns: str | None
    pod_ip: str
    host_ip: str
    volumes: dict[str, HostVolume]
    fetch: Fetch
    changed: Callable[[], None]
    grace_cap: float = 3.0

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def grace(self) -> float:
        """terminationGracePeriodSeconds, capped: tests should not wait 30 s for a SIGKILL."""
        return min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), self.grace_cap)


@dataclass
class ContainerRecord:
    """The state a ContainerStatus reports; changed only by the container's runner and prober."""

    name: str
    image: str
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""

    def status(self) -> Obj:
        status: Obj = {"name": self.name, "image": self.image, "imageID": f"kubeenv://{self.image}",
                       "state": self.state, "lastState": self.last_state, "ready": self.ready,
                       "restartCount": self.restart_count, "started": self.started}
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        value: Obj | None = self.state.get("terminated")
        return value


def should_restart(policy: str, code: int) -> bool:
    return policy == "Always" or policy == "OnFailure" and code != 0


def terminated_state(exit: Exit, container_id: str) -> Obj:
    state: Obj = {"exitCode": exit.code, "reason": exit.reason, "startedAt": exit.started_at,
                  "finishedAt": exit.finished_at, "containerID": container_id}
    if exit.message:
        state["message"] = exit.message
    if exit.signal:
        state["signal"] = exit.signal
    return state


class ContainerRunner:
    """Runs one container of a pod under ``policy`` until it is done or the pod stops."""

    def __init__(self, ctx: PodContext, container: Obj, policy: str, record: ContainerRecord | None = None) -> None:
        self.ctx = ctx
        self.container = container
        self.policy = policy
        self.record = record or ContainerRecord(container["name"], container.get("image", ""))
        self.dir = ctx.dir / "containers" / container["name"]
        self.last_exit: Exit | None = None
        self._process: ContainerProcess | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._halt = threading.Event()

    # -- control ----------------------------------------------------------------------------

    def start(self) -> ContainerRunner:
        self._thread = threading.Thread(target=self.run, name=f"ctr-{self.record.name}", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def halt(self) -> None:
        """No further runs; the current one, if any, keeps going (see :meth:`stop`)."""
        self._halt.set()

    def stop(self, grace: float) -> None:
        """No further runs, and kill the current one (SIGTERM, then SIGKILL after ``grace``)."""
        self._halt.set()
        process = self._process
        if process is not None:
            process.terminate(grace)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Exit | None:
        """Runs until the policy says stop; returns the last exit (None if it never started)."""
        failures = 0
        while not self._halt.is_set():
            spec = self._spec_or_wait(failures)
            if spec is None:
                failures += 1
                continue
            exit = self._run_once(spec)
            self.last_exit = exit
            if self._halt.is_set() or not should_restart(self.policy, exit.code):
                return exit
            self._back_off(failures, exit)
            failures += 1
        return self.last_exit

    def _spec_or_wait(self, failures: int) -> dict[str, Any] | None:
        """The launcher spec, or None after showing why it cannot be built and waiting a back-off."""
        try:
            return launcher_spec(self.ctx, self.container)
        except (ConfigError, UnknownImage) as error:
            reason = "ErrImagePull" if isinstance(error, UnknownImage) else "CreateContainerConfigError"
            self._set(state={"waiting": {"reason": reason, "message": str(error)}})
            self._halt.wait(BACKOFF[min(failures, len(BACKOFF) - 1)])
            return None

    def _run_once(self, spec: dict[str, Any]) -> Exit:
        run = self.record.restart_count if self.record.container_id == "" else self.record.restart_count + 1
        policy = self.container.get("terminationMessagePolicy", "File")
        process = ContainerProcess(self.dir, run, spec, fallback_to_logs=policy == "FallbackToLogsOnError")
        container_id = f"kubeenv://{self.ctx.uid}/{self.record.name}/{run}"
        process.start()
        self._process = process
        if self._halt.is_set():  # stop() came while this run was being set up
            process.terminate(self.ctx.grace)
        self._set(state={"running": {"startedAt": process.started_at}}, container_id=container_id,
                  restart_count=run, started=True, ready="readinessProbe" not in self.container)
        self._started.set()
        prober = Prober.start_for(self.container, self.ctx, process, self._set_ready)
        exit = process.wait()
        if prober is not None:
            prober.stop()
        self._set(state={"terminated": terminated_state(exit, container_id)}, ready=False, started=False)
        return exit

    def _back_off(self, failures: int, exit: Exit) -> None:
        delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
        pod = self.ctx.pod["metadata"]["name"]
        message = f"back-off {delay:g}s restarting failed container={self.record.name} pod={pod}"
        last = self.record.state
        self._set(state={"waiting": {"reason": "CrashLoopBackOff", "message": message}}, last_state=last)
        self._halt.wait(delay)

    def _set_ready(self, ready: bool) -> None:
        if self.record.ready != ready and self.record.running:
            self._set(ready=ready)

    def _set(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.record, name, value)
        self.ctx.changed()


def launcher_spec(ctx: PodContext, container: Obj) -> dict[str, Any]:
    """Everything launch.py needs for this container, except the per-run directories."""
    argv, local = argv_for(container)
    base = {"PATH": DEFAULT_PATH, "HOSTNAME": ctx.pod["metadata"]["name"], "HOME": "/root"}
    base.update(local.env if local else {})
    env = build_env(ctx.pod, container, base, ctx.fetch, ctx.pod_ip, ctx.host_ip)
    return {
        "netns": ctx.netns, "hostname": ctx.pod["metadata"]["name"],
        "argv": [expand(arg, env) for arg in argv], "env": env,
        "cwd": container.get("workingDir") or (local.workdir if local else "/"),
        "mounts": container_mounts(ctx, container, env),
        "termination_message_path": container.get("terminationMessagePath") or DEFAULT_MESSAGE_PATH,
    }


def container_mounts(ctx: PodContext, container: Obj, env: dict[str, str]) -> list[Obj]:
    """Bind mounts: the pod's /etc/hosts and /etc/hostname, volumeMounts (with subPath), volumeDevices."""
    mounts: list[Obj] = [{"source": str(ctx.dir / "hosts"), "target": "/etc/hosts"},
              {"source": str(ctx.dir / "hostname"), "target": "/etc/hostname"}]
    for mount in container.get("volumeMounts") or []:
        volume = _volume(ctx, mount["name"])
        source = Path(volume.path)
        sub_path = mount.get("subPath") or expand(mount.get("subPathExpr") or "", env)
        if sub_path:
            source = source / sub_path
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        mounts.append({"source": str(source), "target": mount["mountPath"],
                       "readonly": bool(mount.get("readOnly") or volume.readonly)})
    for device in container.get("volumeDevices") or []:
        volume = _volume(ctx, device["name"])
        if not volume.block:
            raise ConfigError(f"volume {device['name']} is not a block volume, cannot be a volumeDevice")
        mounts.append({"source": volume.path, "target": device["devicePath"], "readonly": volume.readonly})
    return mounts


def _volume(ctx: PodContext, name: str) -> HostVolume:
    if name not in ctx.volumes:
        raise ConfigError(f"volume {name!r} is not defined in the pod")
    return ctx.volumes[name]
