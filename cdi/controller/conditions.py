"""DataVolume conditions (Bound, Running, Ready) with CDI's reasons and time-keeping.

A condition's ``lastTransitionTime`` moves only when its status flips; ``lastHeartbeatTime``
moves whenever its status, reason or message changes. Nothing moves when nothing changed, so a
reconcile that finds the world as it was writes no status at all.
"""

from __future__ import annotations

from typing import Any

from . import annotations as ann
from .kube import now
from .phases import ConditionType

BOUND, RUNNING, READY = ConditionType.BOUND.value, ConditionType.RUNNING.value, ConditionType.READY.value
TRANSFER_RUNNING = "TransferRunning"
POD_RUNNING_REASON = "Pod is running"

Condition = dict[str, Any]


def find(conditions: list[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def update(conditions: list[Condition], kind: str, status: str, message: str = "", reason: str = "") -> None:
    """Set one condition in place, keeping CDI's timestamp rules."""
    kind = str(kind)
    condition = find(conditions, kind)
    if condition is None:
        condition = {"type": kind}
        conditions.append(condition)
    stamp = now()
    if condition.get("status") != status:
        condition.update(status=status, message=message, reason=reason,
                         lastTransitionTime=stamp, lastHeartbeatTime=stamp)
    elif condition.get("message", "") != message or condition.get("reason", "") != reason:
        condition.update(message=message, reason=reason, lastHeartbeatTime=stamp)
    for key in ("message", "reason"):
        if not condition.get(key):
            condition.pop(key, None)


def bound(conditions: list[Condition], pvc: dict[str, Any] | None, message: str = "", reason: str = "") -> None:
    """Bound from the PVC's phase (or its absence, with the caller's reason)."""
    if pvc is None:
        update(conditions, BOUND, "False", message or "No PVC found", reason or "NotFound")
        update(conditions, READY, "False")
        return
    name, phase = pvc["metadata"]["name"], (pvc.get("status") or {}).get("phase")
    if phase == "Bound":
        update(conditions, BOUND, "True", f"PVC {name} Bound", "Bound")
    elif phase == "Lost":
        update(conditions, BOUND, "False", "Claim Lost", "ClaimLost")
        update(conditions, READY, "False")
    else:
        update(conditions, BOUND, "False", f"PVC {name} Pending", "Pending")
        update(conditions, READY, "False")


def running(conditions: list[Condition], annotations: dict[str, str]) -> None:
    """Running from the worker pod's state mirrored on the PVC; Ready says TransferRunning while
    it runs (Running and Ready are never both true)."""
    message = annotations.get(ann.RUNNING_CONDITION_MESSAGE, "")
    reason = annotations.get(ann.RUNNING_CONDITION_REASON, "")
    if annotations.get(ann.POD_SCHEDULABLE) == "false":
        update(conditions, RUNNING, "False", "Importer pod cannot be scheduled", "Unschedulable")
        return
    value = annotations.get(ann.RUNNING_CONDITION, "").lower()
    if value == "true":
        update(conditions, RUNNING, "True", message, reason)
        update(conditions, READY, "False", "", TRANSFER_RUNNING)
    elif value in ("", "false"):
        update(conditions, RUNNING, "False", message, reason)
    else:
        update(conditions, RUNNING, "Unknown", message, reason)
