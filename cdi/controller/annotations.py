"""The annotation and label keys CDI puts on DataVolumes, PVCs and worker pods.

They are part of the API: virtctl polls ``pod.phase``/``pod.ready`` on the PVC, KubeVirt reads
the conditions, and users set the ``bind.immediate``/``retainAfterCompletion``/preallocation keys
on DataVolumes. Names as CDI's ``pkg/controller/common`` spells them.
"""

from __future__ import annotations

PREFIX = "cdi.kubevirt.io"
STORAGE = f"{PREFIX}/storage"

# -- the import source, copied from the DataVolume onto its PVC (CDI's legacy import flow) ------
IMPORT_ENDPOINT = f"{STORAGE}.import.endpoint"
IMPORT_SOURCE = f"{STORAGE}.import.source"
IMPORT_SECRET = f"{STORAGE}.import.secretName"
IMPORT_CERT_CONFIG_MAP = f"{STORAGE}.import.certConfigMap"
IMPORT_CHECKSUM = f"{STORAGE}.import.checksum"
IMPORT_INSECURE_SKIP_VERIFY = f"{STORAGE}.import.insecureSkipVerify"
IMPORT_EXTRA_HEADERS = f"{STORAGE}.import.extraHeaders"  # .0, .1, ...
IMPORT_SECRET_EXTRA_HEADERS = f"{STORAGE}.import.secretExtraHeaders"  # .0, .1, ...
IMPORT_REGISTRY_METHOD = f"{STORAGE}.import.registryImportMethod"
IMPORT_REGISTRY_ARCHITECTURE = f"{STORAGE}.import.registryImageArchitecture"
IMPORT_POD_NAME = f"{STORAGE}.import.importPodName"
CONTENT_TYPE = f"{STORAGE}.contentType"

# -- controller state on the PVC --------------------------------------------------------------
REQUIRES_SCRATCH = f"{STORAGE}.import.requiresScratch"
REQUIRES_DIRECT_IO = f"{STORAGE}.import.requiresDirectIo"
FATAL_ERROR = f"{STORAGE}.import.fatalError"
PREALLOCATION_REQUESTED = f"{STORAGE}.preallocation.requested"
PREALLOCATION_APPLIED = f"{STORAGE}.preallocation"
UPLOAD_TARGET = f"{STORAGE}.upload.target"
UPLOAD_POD_NAME = f"{STORAGE}.uploadPodName"

# -- clones -------------------------------------------------------------------------------------
CLONE_REQUEST = "k8s.io/CloneRequest"
"""On a host-assisted clone's target PVC: ``<source namespace>/<source PVC>`` (CDI's key)."""
CLONE_TOKEN = f"{STORAGE}.clone.token"
"""On a DataVolume: the clone token the mutating webhook stamped (short-lived)."""
EXTENDED_CLONE_TOKEN = f"{STORAGE}.extended.clone.token"
"""The controller's long-lived token, minted once the webhook's was validated; copied to the target PVC."""
CLONE_TYPE = f"{PREFIX}/cloneType"
"""The strategy used: ``copy``, ``snapshot`` or ``csi-clone``."""
CLONE_FALLBACK_REASON = f"{PREFIX}/cloneFallbackReason"
PERMISSIVE_CLONE = f"{PREFIX}/permissiveClone"
"""Skip the target-at-least-source size check."""
ALLOW_CLAIM_ADOPTION = f"{PREFIX}/allowClaimAdoption"
CLONE_PHASE = f"{STORAGE}.clone.phase"
"""On a host-assisted clone's target PVC: the clone's progress in DataVolume phase terms (ours)."""
CLONE_SOURCE_POD = f"{STORAGE}.clone.sourcePodName"
"""On the target PVC: ``<namespace>/<name>`` of the cloner pod (its progress metric is read there)."""
CLONE_TARGET = f"{STORAGE}.clone.target"
"""On a cloner pod or Secret (in the source namespace): ``<namespace>/<name>`` of the target PVC."""
CLONE_FOR_DATAVOLUME = f"{STORAGE}.clone.dataVolume"
"""On a smart clone's temporary objects: ``<namespace>/<name>`` of the DataVolume they serve."""
SOURCE_RUNNING_CONDITION = f"{STORAGE}.condition.source.running"
SOURCE_RUNNING_CONDITION_MESSAGE = f"{STORAGE}.condition.source.running.message"
SOURCE_RUNNING_CONDITION_REASON = f"{STORAGE}.condition.source.running.reason"

# -- the worker pod, mirrored onto the PVC -----------------------------------------------------
POD_PHASE = f"{STORAGE}.pod.phase"
POD_READY = f"{STORAGE}.pod.ready"
POD_RESTARTS = f"{STORAGE}.pod.restarts"
POD_SCHEDULABLE = f"{STORAGE}.pod.schedulable"
RUNNING_CONDITION = f"{STORAGE}.condition.running"
RUNNING_CONDITION_MESSAGE = f"{STORAGE}.condition.running.message"
RUNNING_CONDITION_REASON = f"{STORAGE}.condition.running.reason"
BOUND_CONDITION = f"{STORAGE}.condition.bound"
BOUND_CONDITION_MESSAGE = f"{STORAGE}.condition.bound.message"
BOUND_CONDITION_REASON = f"{STORAGE}.condition.bound.reason"

# -- set by users on a DataVolume (and copied to the PVC) -------------------------------------
BIND_IMMEDIATE = f"{STORAGE}.bind.immediate.requested"  # present means requested, whatever its value (virtctl sets "")
RETAIN_AFTER_COMPLETION = f"{STORAGE}.pod.retainAfterCompletion"
POD_PRIORITY_CLASS = f"{STORAGE}.pod.priorityclassname"
POD_SERVICE_ACCOUNT = f"{STORAGE}.pod.serviceAccountName"
USE_POPULATOR = f"{STORAGE}.usePopulator"
PRE_POPULATED = f"{STORAGE}.prePopulated"
POPULATED_FOR = f"{STORAGE}.populatedFor"
"""On a PVC: the name of the DataVolume it was populated for (it takes it as it is)."""

# -- on StorageClasses and StorageProfiles -----------------------------------------------------
DEFAULT_VIRT_CLASS = "storageclass.kubevirt.io/is-default-virt-class"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
MINIMUM_PVC_SIZE = f"{PREFIX}/minimumSupportedPvcSize"

# -- Kubernetes' own, read by the controller ----------------------------------------------------
SELECTED_NODE = "volume.kubernetes.io/selected-node"

# -- annotations CDI copies from the DataVolume/PVC onto worker pods ---------------------------
POD_PASSTHROUGH = ("k8s.v1.cni.cncf.io/networks", "v1.multus-cni.io/default-network",
                   "sidecar.istio.io/inject", "linkerd.io/inject", POD_PRIORITY_CLASS, POD_SERVICE_ACCOUNT)
POD_PASSTHROUGH_DEFAULTS = {"sidecar.istio.io/inject": "false", "linkerd.io/inject": "disabled"}

# CDI's spelling, typo included: the virtual size of a source's disk.img found by a size-detection
# pod, valid while the source's capacity is still the one recorded beside it
VIRTUAL_IMAGE_SIZE = "cdi.Kubervirt.io/virtualSize"
SOURCE_CAPACITY = "cdi.Kubervirt.io/sourceCapacity"
SIZE_DETECTION_SOURCE = f"{PREFIX}/sizeDetectionSource"
"""On a size-detection pod: the source PVC it reads (the DataVolumes cloning it are told)."""

# -- labels ------------------------------------------------------------------------------------
APP_LABEL = "app"
APP = "containerized-data-importer"
COMPONENT_LABEL = PREFIX  # cdi.kubevirt.io=importer
PROMETHEUS_LABEL = f"prometheus.{PREFIX}"
IMPORTER_COMPONENT = "importer"
UPLOAD_SERVER_COMPONENT = "upload-server"
CLONER_COMPONENT = "cdi-clone-source"
SIZE_DETECTION_COMPONENT = "size-detection"
"""The values of ``COMPONENT_LABEL`` on worker pods."""
