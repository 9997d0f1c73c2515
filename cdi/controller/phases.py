"""DataVolume phases, condition types and the reasons the controller writes, as CDI spells them
(``pkg/apis/core/v1beta1/types.go`` and the DataVolume controllers). They are API: KubeVirt and
users' scripts compare against these strings."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    UNSET = ""
    PENDING = "Pending"
    PVC_BOUND = "PVCBound"
    WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
    IMPORT_SCHEDULED = "ImportScheduled"
    IMPORT_IN_PROGRESS = "ImportInProgress"
    UPLOAD_SCHEDULED = "UploadScheduled"
    UPLOAD_READY = "UploadReady"
    CLONE_SCHEDULED = "CloneScheduled"
    CLONE_IN_PROGRESS = "CloneInProgress"
    SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS = "SnapshotForSmartCloneInProgress"
    SMART_CLONE_PVC_IN_PROGRESS = "SmartClonePVCInProgress"
    CSI_CLONE_IN_PROGRESS = "CSICloneInProgress"
    EXPANSION_IN_PROGRESS = "ExpansionInProgress"
    CLONE_FROM_SNAPSHOT_SOURCE_IN_PROGRESS = "CloneFromSnapshotSourceInProgress"
    REBIND_IN_PROGRESS = "RebindInProgress"
    PENDING_POPULATION = "PendingPopulation"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)

    def __str__(self) -> str:
        return self.value


class ConditionType(str, Enum):
    BOUND = "Bound"
    RUNNING = "Running"
    READY = "Ready"

    def __str__(self) -> str:
        return self.value


class EventType(str, Enum):
    NORMAL = "Normal"
    WARNING = "Warning"

    def __str__(self) -> str:
        return self.value


class Reason:
    """Condition and event reasons (CDI's where CDI has one)."""

    BOUND = "Bound"
    PENDING = "Pending"
    NOT_FOUND = "NotFound"
    CLAIM_LOST = "ClaimLost"
    TRANSFER_RUNNING = "TransferRunning"
    ERROR = "Error"
    UNSCHEDULABLE = "Unschedulable"
    UNSUPPORTED_SOURCE = "UnsupportedSource"
    ERR_RESOURCE_EXISTS = "ErrResourceExists"
    CLAIM_NOT_VALID = "ErrClaimNotValid"
    # clones
    CLONE_SCHEDULED = "CloneScheduled"
    CLONE_IN_PROGRESS = "CloneInProgress"
    CLONE_SUCCEEDED = "CloneSucceeded"
    CLONE_FAILED = "CloneFailed"
    CLONE_SOURCE_IN_USE = "CloneSourceInUse"
    CLONE_WITHOUT_SOURCE = "CloneWithoutSource"
    CLONE_SOURCE_NOT_POPULATED = "CloneSourceNotPopulated"
    CLONE_VALIDATION_FAILED = "CloneValidationFailed"
    SMART_CLONE_SOURCE_IN_USE = "SmartCloneSourceInUse"
    SNAPSHOT_FOR_SMART_CLONE_IN_PROGRESS = "SnapshotForSmartCloneInProgress"
    CSI_CLONE_IN_PROGRESS = "CSICloneInProgress"
    EXPANSION_IN_PROGRESS = "ExpansionInProgress"
    CLONE_FROM_SNAPSHOT_SOURCE_IN_PROGRESS = "CloneFromSnapshotSourceInProgress"
    REBIND_IN_PROGRESS = "RebindInProgress"
    DATA_SOURCE_NOT_READY = "DataSourceNotReady"
    CLONE_TOKEN_INVALID = "CloneTokenInvalid"
    CLONE_FALLBACK = "CloneFallback"
    SIZE_DETECTION_POD_CREATED = "SizeDetectionPodCreated"
    SIZE_DETECTION_POD_NOT_READY = "SizeDetectionPodNotReady"
