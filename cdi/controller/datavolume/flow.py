"""What differs between kinds of DataVolume: the interface each source kind's flow implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..config import ControllerConfig


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


class Flow(Protocol):
    component: str
    """The events' source component, as CDI names its controllers."""
    progress_phase: str | None
    """The phase in which the worker's progress metric is read (every ``poll_seconds``), if any."""
    pod_annotation: str
    """The PVC annotation naming the worker pod, whose IP serves the metric."""

    def refusal(self, dv: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, message) if this controller cannot serve the DataVolume at all."""

    def claim_annotations(self, dv: dict[str, Any], config: ControllerConfig) -> dict[str, str]:
        """What the PVC must carry for its worker (the source, for an import)."""

    def worker_phase(self, annotations: dict[str, str], claim_name: str) -> tuple[str, Event] | None:
        """The DataVolume phase (and its event) the worker's state on the PVC implies, if any."""
