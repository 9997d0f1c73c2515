"""What differs between kinds of DataVolume: the interface each source kind's flow implements.

The shared reconciler (:mod:`.base`) renders the PVC spec and hands it to the flow's
:meth:`Flow.prepare`, which either completes the claim (annotations for its worker, a size or a
``dataSource`` for a clone) or says what the DataVolume waits for. Once the claim exists,
:meth:`Flow.follow` turns the claim's state into the DataVolume's phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import ControllerConfig
from ..context import Context
from ..phases import EventType, Phase

Body = dict[str, Any]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Claim:
    """The PVC to create: its spec, and the annotations the flow adds."""

    spec: Body
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Wait:
    """No PVC yet: the DataVolume shows ``phase`` with the reason and message, and is looked at
    again after ``again`` seconds (None: when something it watches changes)."""

    phase: Phase
    reason: str
    message: str
    event_type: EventType = EventType.NORMAL
    again: float | None = None


class Flow(Protocol):
    component: str
    """The events' source component, as CDI names its controllers."""
    progress_phase: Phase | None
    """The phase in which the worker's progress metric is read (every ``poll_seconds``), if any."""

    def refusal(self, dv: Body) -> tuple[str, str] | None:
        """(reason, message) if this controller cannot serve the DataVolume at all."""

    def prepare(self, ctx: Context, dv: Body, spec: Body) -> Claim | Wait:
        """The claim to create from the rendered ``spec``, or what the DataVolume waits for."""

    def follow(self, ctx: Context, dv: Body, pvc: Body) -> tuple[Phase, Event] | None:
        """The DataVolume phase (and its event) the worker's state on the PVC implies, if any."""

    def running_annotations(self, annotations: dict[str, str]) -> dict[str, str]:
        """The PVC annotations the Running condition is read from (``condition.running*`` keys)."""

    def progress_pod(self, pvc: Body) -> tuple[str, str] | None:
        """(namespace, name) of the pod whose metric gives the progress."""


class WorkerFlow:
    """What the flows with one worker pod in the target's namespace share (import, upload): the
    claim carries the flow's annotations, the phase and the Running condition come from the pod's
    state mirrored on the PVC, the progress from that pod's metric."""

    pod_annotation: str
    """The PVC annotation naming the worker pod."""

    def claim_annotations(self, dv: Body, config: ControllerConfig) -> dict[str, str]:
        raise NotImplementedError

    def worker_phase(self, annotations: dict[str, str], claim_name: str) -> tuple[Phase, Event] | None:
        raise NotImplementedError

    def prepare(self, ctx: Context, dv: Body, spec: Body) -> Claim | Wait:
        return Claim(spec, self.claim_annotations(dv, ctx.config()))

    def follow(self, ctx: Context, dv: Body, pvc: Body) -> tuple[Phase, Event] | None:
        return self.worker_phase(pvc["metadata"].get("annotations") or {}, pvc["metadata"]["name"])

    def running_annotations(self, annotations: dict[str, str]) -> dict[str, str]:
        return annotations

    def progress_pod(self, pvc: Body) -> tuple[str, str] | None:
        name = (pvc["metadata"].get("annotations") or {}).get(self.pod_annotation)
        return (pvc["metadata"]["namespace"], name) if name else None
