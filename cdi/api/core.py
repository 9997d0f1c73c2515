"""The Kubernetes core/meta types CDI's API embeds (``corev1``/``metav1``), with the fields and
JSON names of k8s.io/api, so a DataVolume's ``pvc``/``storage`` read exactly as a PVC's spec does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .schema import Api, Quantity, RawObject, Time, prop

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(kw_only=True)
class LabelSelectorRequirement(Api):
    """One ``matchExpressions`` term of a label selector."""

    key: str = prop(required=True)
    operator: str = prop("In, NotIn, Exists or DoesNotExist", required=True)
    values: list[str] | None = prop()


@dataclass(kw_only=True)
class LabelSelector(Api):
    """A label query (``metav1.LabelSelector``), e.g. to pick the PersistentVolume to bind."""

    match_labels: dict[str, str] | None = prop()
    match_expressions: list[LabelSelectorRequirement] | None = prop()


@dataclass(kw_only=True)
class VolumeResourceRequirements(Api):
    """A volume's size: ``requests.storage`` is the size asked for."""

    limits: dict[str, Quantity] | None = prop()
    requests: dict[str, Quantity] | None = prop()


@dataclass(kw_only=True)
class ResourceClaim(Api):
    """A dynamic resource claim a container uses (``corev1.ResourceClaim``)."""

    name: str = prop(required=True)
    request: str | None = prop()


@dataclass(kw_only=True)
class ResourceRequirements(Api):
    """CPU/memory for CDI's worker pods (``corev1.ResourceRequirements``)."""

    limits: dict[str, Quantity] | None = prop()
    requests: dict[str, Quantity] | None = prop()
    claims: list[ResourceClaim] | None = prop()


@dataclass(kw_only=True)
class TypedLocalObjectReference(Api):
    """A typed reference to an object in the same namespace (a PVC or VolumeSnapshot)."""

    api_group: str | None = prop()
    kind: str = prop(required=True)
    name: str = prop(required=True)


@dataclass(kw_only=True)
class TypedObjectReference(Api):
    """A typed reference to an object, possibly a volume populator CR (``dataSourceRef``)."""

    api_group: str | None = prop()
    kind: str = prop(required=True)
    name: str = prop(required=True)
    namespace: str | None = prop()


@dataclass(kw_only=True)
class LocalObjectReference(Api):
    """A reference by name to an object in the same namespace (an image pull Secret)."""

    name: str | None = prop()


@dataclass(kw_only=True)
class PersistentVolumeClaimSpec(Api):
    """A raw PVC spec, as in core/v1: used verbatim by the DataVolume's ``pvc`` field."""

    access_modes: list[str] | None = prop()
    selector: LabelSelector | None = prop()
    resources: VolumeResourceRequirements | None = prop()
    volume_name: str | None = prop()
    storage_class_name: str | None = prop()
    volume_mode: str | None = prop("Block or Filesystem (the default)")
    data_source: TypedLocalObjectReference | None = prop()
    data_source_ref: TypedObjectReference | None = prop()
    volume_attributes_class_name: str | None = prop()


@dataclass(kw_only=True)
class Toleration(Api):
    """A pod toleration (``corev1.Toleration``)."""

    key: str | None = prop()
    operator: str | None = prop()
    value: str | None = prop()
    effect: str | None = prop()
    toleration_seconds: int | None = prop(format="int64")


@dataclass(kw_only=True)
class NodePlacement(Api):
    """Where pods may run (controller-lifecycle-operator-sdk ``NodePlacement``)."""

    node_selector: dict[str, str] | None = prop()
    affinity: RawObject | None = prop("A core/v1 Affinity")
    tolerations: list[Toleration] | None = prop()


@dataclass(kw_only=True)
class OperatorCondition(Api):
    """A condition of the operator-managed CDI resource (openshift ``conditionsv1.Condition``)."""

    type: str = prop(required=True)
    status: ConditionStatus = prop(required=True)
    reason: str | None = prop()
    message: str | None = prop()
    last_heartbeat_time: Time | None = prop()
    last_transition_time: Time | None = prop()
