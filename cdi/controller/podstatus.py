"""What a worker pod's status means for its PVC: the annotations CDI mirrors, and the outcome.

The importer reports through its termination message (JSON, see ``importer/__main__.py``) and
its exit code; kubelet reports phase, restarts and waiting reasons. This module turns one pod
body into the PVC annotations virtctl and the DataVolume controller read, and into an
:class:`Outcome` the PVC import controller acts on (done, needs scratch, fatal, retry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import annotations as ann

TOO_SMALL = "DataVolume too small to contain image"
_TOO_SMALL_HINTS = ("is larger than the reported available", "no space left on device", "disk quota exceeded")
_WAITING_IGNORED = ("CrashLoopBackOff", "ContainerCreating", "PodInitializing")
_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")


def simplify(message: str) -> str:
    """CDI's short form of the size errors users hit most."""
    lowered = message.lower()
    return TOO_SMALL if any(hint in lowered for hint in _TOO_SMALL_HINTS) else message


def termination_payload(text: str | None) -> dict[str, Any] | None:
    """The importer's JSON termination message, or None for plain text (or nothing)."""
    if not text:
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


@dataclass
class Outcome:
    """What the last run of the importer container said, if it has finished one."""

    finished: bool = False
    succeeded: bool = False
    scratch_required: bool = False
    fatal: bool = False
    reason: str = ""
    message: str = ""
    preallocation_applied: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    failed_runs: int = 0
    """Runs that ended in failure so far (kubelet counts restarts, not failures)."""


def _container(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else None


def last_run(pod: dict[str, Any]) -> Outcome:
    """How the container's most recent finished run ended: its current state if it has stopped,
    else the last state kubelet kept (while it waits to restart, or runs again)."""
    container = _container(pod)
    if container is None:
        return Outcome()
    state = container.get("state") or {}
    current = state.get("terminated")
    terminated = current or (container.get("lastState") or {}).get("terminated")
    if not terminated:
        return Outcome()
    payload = termination_payload(terminated.get("message")) or {}
    message = simplify(str(payload.get("message") or terminated.get("message") or terminated.get("reason") or ""))
    code = terminated.get("exitCode")
    labels = {k: str(v) for k, v in (payload.get("labels") or {}).items() if "kubevirt.io/" in k}
    restarts = int(container.get("restartCount") or 0)
    failed_now = bool(current) and code != 0
    return Outcome(
        finished=True,
        succeeded=bool(current) and code == 0 and not payload.get("scratchSpaceRequired"),
        scratch_required=bool(payload.get("scratchSpaceRequired")),
        fatal=code != 0 and bool(payload.get("fatalError")),
        reason=str(payload.get("reason") or terminated.get("reason") or ("Completed" if code == 0 else "Error")),
        message=message,
        preallocation_applied=bool(payload.get("preallocationApplied")),
        labels=labels,
        failed_runs=restarts + (1 if failed_now or (state.get("waiting") and code != 0) else 0),
    )


def pod_annotations(pod: dict[str, Any], previous: dict[str, str]) -> dict[str, str]:
    """The ``storage.pod.*`` and ``storage.condition.running*`` annotations for this pod."""
    status = pod.get("status") or {}
    out = {ann.POD_PHASE: status.get("phase") or "Pending"}
    container = _container(pod)
    out[ann.POD_READY] = "true" if container and container.get("ready") else "false"
    restarts = int((container or {}).get("restartCount") or 0)
    out[ann.POD_RESTARTS] = str(max(restarts, int(previous.get(ann.POD_RESTARTS) or 0)))
    out[ann.POD_SCHEDULABLE] = "false" if _unschedulable(status) else "true"
    out.update(_running(pod, container))
    return out


def _unschedulable(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
               for c in status.get("conditions") or [])


def _running(pod: dict[str, Any], container: dict[str, Any] | None) -> dict[str, str]:
    def cond(value: str, message: str, reason: str) -> dict[str, str]:
        return {ann.RUNNING_CONDITION: value, ann.RUNNING_CONDITION_MESSAGE: message,
                ann.RUNNING_CONDITION_REASON: reason}

    if container is None:
        return cond("false", "", "Pending")
    state = container.get("state") or {}
    if state.get("running") is not None:
        return cond("true", "", "Pod is running")
    waiting = state.get("waiting")
    if waiting and waiting.get("reason") not in _WAITING_IGNORED:
        reason = "ImagePullFailed" if waiting.get("reason") in _PULL_FAILURES else str(waiting.get("reason") or "")
        return cond("false", simplify(str(waiting.get("message") or "")), reason)
    outcome = last_run(pod)
    if outcome.finished:
        if outcome.succeeded:
            return cond("false", "Import Complete", "Completed")
        if outcome.scratch_required:
            return cond("false", "Scratch space required", "Scratch space required")
        # CDI says "Error" for every failure; a permanent one keeps our precise reason
        return cond("false", outcome.message, outcome.reason if outcome.fatal else "Error")
    return cond("false", "", str((waiting or {}).get("reason") or "Pending"))
