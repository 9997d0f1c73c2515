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

# -- labels ------------------------------------------------------------------------------------
APP_LABEL = "app"
APP = "containerized-data-importer"
COMPONENT_LABEL = PREFIX  # cdi.kubevirt.io=importer
PROMETHEUS_LABEL = f"prometheus.{PREFIX}"
