"""CDI's ``cdi.kubevirt.io/v1beta1`` API as Python types: DataVolume, DataSource, DataImportCron,
StorageProfile, CDIConfig and CDI, with CDI's exact JSON field names (``types.go`` in
containerized-data-importer-api), so existing manifests and KubeVirt's ``dataVolumeTemplates``
work unchanged. The CRDs in ``crds/`` are generated from these classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .core import (ConditionStatus, LabelSelector, LocalObjectReference, NodePlacement, OperatorCondition,
                   PersistentVolumeClaimSpec, ResourceRequirements, TypedLocalObjectReference,
                   TypedObjectReference, VolumeResourceRequirements)
from .schema import Api, Duration, RawObject, Rule, Time, prop

GROUP = "cdi.kubevirt.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

ContentType = Literal["kubevirt", "archive"]
CloneStrategy = Literal["copy", "snapshot", "csi-clone"]
SourceFormat = Literal["pvc", "snapshot"]

SOURCE_KINDS = ("http", "s3", "gcs", "registry", "pvc", "upload", "blank", "imageio", "vddk", "snapshot")
"""The keys of ``spec.source``; exactly one must be set."""

PHASES = ("", "Pending", "PVCBound", "ImportScheduled", "ImportInProgress", "CloneScheduled", "CloneInProgress",
          "SnapshotForSmartCloneInProgress", "CloneFromSnapshotSourceInProgress", "SmartClonePVCInProgress",
          "CSICloneInProgress", "ExpansionInProgress", "NamespaceTransferInProgress", "UploadScheduled",
          "UploadReady", "WaitForFirstConsumer", "PendingPopulation", "Succeeded", "Failed", "Unknown", "Paused",
          "PrepClaimInProgress", "RebindInProgress")
"""Every DataVolume phase CDI defines (``status.phase``)."""


# --- DataVolume sources ------------------------------------------------------------------------

@dataclass(kw_only=True)
class DataVolumeSourceHTTP(Api):
    """An http(s) endpoint, with optional basic auth, extra CAs, extra headers and a checksum."""

    url: str = prop("http(s) URL of the image", required=True)
    secret_ref: str | None = prop("Secret with accessKeyId (user) and secretKey (password)")
    cert_config_map: str | None = prop("ConfigMap with extra CA certificates")
    extra_headers: list[str] | None = prop("Extra request headers, each 'Name: value'")
    secret_extra_headers: list[str] | None = prop("Secrets whose values are extra headers")
    checksum: str | None = prop("Expected digest, 'algorithm:hex' (md5, sha1, sha256, sha512)")
    insecure_skip_verify: bool | None = prop("Skip TLS certificate verification")


@dataclass(kw_only=True)
class DataVolumeSourceS3(Api):
    """An object in an S3-compatible store."""

    url: str = prop("https://host/bucket/key", required=True)
    secret_ref: str | None = prop("Secret with accessKeyId and secretKey")
    cert_config_map: str | None = prop("ConfigMap with extra CA certificates")


@dataclass(kw_only=True)
class DataVolumeSourceGCS(Api):
    """An object in Google Cloud Storage."""

    url: str = prop("gs://bucket/object or https://storage.googleapis.com/bucket/object", required=True)
    secret_ref: str | None = prop("Secret with a JSON service account key; anonymous without")


@dataclass(kw_only=True)
class PlatformOptions(Api):
    """The platform of the container image to pick from a multi-arch manifest."""

    architecture: str | None = prop()


@dataclass(kw_only=True)
class DataVolumeSourceRegistry(Api):
    """A container disk image in a registry (docker:// or oci-archive:), or an ImageStream."""

    url: str | None = prop("docker://... or oci-archive:...")
    image_stream: str | None = prop("ImageStream name (node pull only)")
    pull_method: Literal["pod", "node"] | None = prop("pod (default) or node (node's image cache)")
    secret_ref: str | None = prop()
    cert_config_map: str | None = prop()
    platform: PlatformOptions | None = prop()


@dataclass(kw_only=True)
class DataVolumeSourcePVC(Api):
    """An existing PVC to clone."""

    namespace: str = prop(required=True)
    name: str = prop(required=True)


@dataclass(kw_only=True)
class DataVolumeSourceSnapshot(Api):
    """An existing VolumeSnapshot to restore."""

    namespace: str = prop(required=True)
    name: str = prop(required=True)


@dataclass(kw_only=True)
class DataSourceRefSourceDataSource(Api):
    """Another DataSource a DataSource points to (chains at most one deep)."""

    namespace: str = prop(required=True)
    name: str = prop(required=True)


@dataclass(kw_only=True)
class DataVolumeSourceUpload(Api):
    """The volume is filled by an upload through the upload proxy."""


@dataclass(kw_only=True)
class DataVolumeBlankImage(Api):
    """A new blank raw disk image."""


@dataclass(kw_only=True)
class DataVolumeSourceImageIO(Api):
    """A disk of an oVirt/RHV engine, read through imageio."""

    url: str = prop("URL of the ovirt-engine API", required=True)
    disk_id: str = prop(json="diskId", required=True)
    secret_ref: str | None = prop()
    cert_config_map: str | None = prop()
    insecure_skip_verify: bool | None = prop()


@dataclass(kw_only=True)
class DataVolumeSourceVDDK(Api):
    """A virtual disk of a VMware VM, read with the VDDK library."""

    url: str | None = prop("URL of the vCenter or ESXi host")
    uuid: str | None = prop("UUID of the virtual machine")
    backing_file: str | None = prop("Path of the virtual disk on the datastore")
    thumbprint: str | None = prop("Certificate thumbprint of the host")
    secret_ref: str | None = prop()
    init_image_url: str | None = prop("Image holding the VDDK library", json="initImageURL")
    extra_args: str | None = prop("ConfigMap with extra VDDK arguments")


def _has_any(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"has(self.{n})" for n in names) + "]"


@dataclass(kw_only=True)
class DataVolumeSource(Api):
    """Where the data comes from: exactly one of the source kinds."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(f"{_has_any(SOURCE_KINDS)}.exists(x, x)", "Missing Data volume source"),
        Rule(f"{_has_any(SOURCE_KINDS)}.filter(x, x).size() <= 1", "Multiple Data volume sources"),
    )

    http: DataVolumeSourceHTTP | None = prop()
    s3: DataVolumeSourceS3 | None = prop()
    gcs: DataVolumeSourceGCS | None = prop()
    registry: DataVolumeSourceRegistry | None = prop()
    pvc: DataVolumeSourcePVC | None = prop()
    upload: DataVolumeSourceUpload | None = prop()
    blank: DataVolumeBlankImage | None = prop()
    imageio: DataVolumeSourceImageIO | None = prop()
    vddk: DataVolumeSourceVDDK | None = prop()
    snapshot: DataVolumeSourceSnapshot | None = prop()


@dataclass(kw_only=True)
class DataVolumeSourceRef(Api):
    """An indirect source: a DataSource (in this namespace unless ``namespace`` is set)."""

    kind: str = prop('Only "DataSource"', required=True)
    namespace: str | None = prop()
    name: str = prop(required=True)


@dataclass(kw_only=True)
class StorageSpec(Api):
    """Like a PVC spec, but every field optional: what is missing is filled from the
    StorageProfile and the default (virt) storage class, and Filesystem sizes are inflated for
    filesystem overhead."""

    access_modes: list[str] | None = prop()
    selector: LabelSelector | None = prop()
    resources: VolumeResourceRequirements | None = prop()
    volume_name: str | None = prop()
    storage_class_name: str | None = prop()
    volume_mode: str | None = prop("Block, Filesystem or FromStorageProfile")
    data_source: TypedLocalObjectReference | None = prop()
    data_source_ref: TypedObjectReference | None = prop()


@dataclass(kw_only=True)
class DataVolumeCheckpoint(Api):
    """One stage of a multi-stage (warm) import."""

    previous: str = prop(required=True)
    current: str = prop(required=True)


_EXTERNALLY_POPULATED = ("(has(self.pvc) && has(self.pvc.dataSourceRef))"
                         " || (has(self.storage) && has(self.storage.dataSourceRef))")


@dataclass(kw_only=True)
class DataVolumeSpec(Api):
    """What to import/clone/upload and into what kind of volume.

    The rules are the checks of CDI's validating webhook that a schema can express, with CDI's
    messages; a DataVolume without source or sourceRef is allowed only if its PVC is populated
    externally (``dataSourceRef``), as CDI allows.
    """

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(f"has(self.source) ? !has(self.sourceRef) : (has(self.sourceRef) || {_EXTERNALLY_POPULATED})",
             "Data volume should have either Source or SourceRef"),
        Rule("has(self.pvc) || has(self.storage)", "Missing Data volume PVC or Storage"),
        Rule("!(has(self.pvc) && has(self.storage))",
             "Duplicate storage definition, both target storage and target pvc defined"),
        Rule("!has(self.contentType) || self.contentType in ['kubevirt', 'archive']",
             "ContentType not one of: kubevirt, archive"),
        Rule("!(has(self.source) && has(self.source.blank) && has(self.contentType)"
             " && self.contentType == 'archive')",
             "SourceType cannot be blank and the contentType be archive"),
    )

    source: DataVolumeSource | None = prop()
    source_ref: DataVolumeSourceRef | None = prop()
    pvc: PersistentVolumeClaimSpec | None = prop("A PVC spec used verbatim")
    storage: StorageSpec | None = prop("A PVC spec completed from the StorageProfile")
    priority_class_name: str | None = prop("PriorityClass of the worker pods")
    # No schema enum: it would fail first and hide the CEL rule that gives CDI's message.
    content_type: ContentType | None = prop("kubevirt (a disk image, the default) or archive (a tar)", enum=None)
    checkpoints: list[DataVolumeCheckpoint] | None = prop()
    final_checkpoint: bool | None = prop()
    preallocation: bool | None = prop("Allocate the whole volume up front")


@dataclass(kw_only=True)
class DataVolumeCondition(Api):
    """A DataVolume condition: Ready, Bound or Running."""

    type: str = prop(required=True)
    status: ConditionStatus = prop(required=True)
    last_transition_time: Time | None = prop()
    last_heartbeat_time: Time | None = prop()
    reason: str | None = prop()
    message: str | None = prop()


@dataclass(kw_only=True)
class DataVolumeStatus(Api):
    """What the controller observed; written through the status subresource only."""

    claim_name: str | None = prop("The PVC holding the data")
    phase: str | None = prop("One of PHASES")
    progress: str | None = prop('"NN.NN%" or "N/A"')
    restart_count: int | None = prop("Times the worker pod restarted")
    conditions: list[DataVolumeCondition] | None = prop()


@dataclass(kw_only=True)
class DataVolume(Api):
    """A PVC plus how to fill it: the resource users create."""

    spec: DataVolumeSpec = prop(required=True)
    status: DataVolumeStatus | None = prop()


# --- DataSource --------------------------------------------------------------------------------

@dataclass(kw_only=True)
class DataSourceSource(Api):
    """What a DataSource points to: a PVC, a VolumeSnapshot or another DataSource."""

    pvc: DataVolumeSourcePVC | None = prop()
    snapshot: DataVolumeSourceSnapshot | None = prop()
    data_source: DataSourceRefSourceDataSource | None = prop()


@dataclass(kw_only=True)
class DataSourceSpec(Api):
    """The DataSource's target."""

    source: DataSourceSource = prop(required=True)


@dataclass(kw_only=True)
class DataSourceCondition(Api):
    """A DataSource condition (Ready)."""

    type: str = prop(required=True)
    status: ConditionStatus = prop(required=True)
    last_transition_time: Time | None = prop()
    last_heartbeat_time: Time | None = prop()
    reason: str | None = prop()
    message: str | None = prop()


@dataclass(kw_only=True)
class DataSourceStatus(Api):
    """The resolved source and readiness."""

    source: DataSourceSource | None = prop()
    conditions: list[DataSourceCondition] | None = prop()


@dataclass(kw_only=True)
class DataSource(Api):
    """A named, stable pointer to a golden image, consumed by DataVolumes' ``sourceRef``."""

    spec: DataSourceSpec = prop(required=True)
    status: DataSourceStatus | None = prop()


# --- DataImportCron ----------------------------------------------------------------------------

@dataclass(kw_only=True)
class DataVolumeTemplate(Api):
    """A DataVolume template: metadata kept verbatim, spec validated as a DataVolume's."""

    metadata: RawObject | None = prop()
    spec: DataVolumeSpec = prop(required=True)
    status: DataVolumeStatus | None = prop()


@dataclass(kw_only=True)
class DataImportCronSpec(Api):
    """Poll a source on a schedule and keep a DataSource pointing at the newest import."""

    template: DataVolumeTemplate = prop(required=True)
    schedule: str = prop("Cron schedule", required=True)
    garbage_collect: Literal["Outdated", "Never"] | None = prop()
    imports_to_keep: int | None = prop("Default 3")
    managed_data_source: str = prop("DataSource (same namespace) this cron manages", required=True)
    retention_policy: Literal["All", "None"] | None = prop()
    created_by: str | None = prop("Set by CDI's mutating webhook")


@dataclass(kw_only=True)
class ImportStatus(Api):
    """An import in progress."""

    data_volume_name: str = prop(json="DataVolumeName", required=True)
    digest: str = prop(json="Digest", required=True)


@dataclass(kw_only=True)
class DataImportCronCondition(Api):
    """A DataImportCron condition: Progressing or UpToDate."""

    type: str = prop(required=True)
    status: ConditionStatus = prop(required=True)
    last_transition_time: Time | None = prop()
    last_heartbeat_time: Time | None = prop()
    reason: str | None = prop()
    message: str | None = prop()


@dataclass(kw_only=True)
class DataImportCronStatus(Api):
    """Imports in progress and the last result."""

    current_imports: list[ImportStatus] | None = prop()
    last_imported_pvc: DataVolumeSourcePVC | None = prop(json="lastImportedPVC")
    last_execution_timestamp: Time | None = prop()
    last_import_timestamp: Time | None = prop()
    source_format: SourceFormat | None = prop()
    conditions: list[DataImportCronCondition] | None = prop()


@dataclass(kw_only=True)
class DataImportCron(Api):
    """Recurring import of a golden image."""

    spec: DataImportCronSpec = prop(required=True)
    status: DataImportCronStatus | None = prop()


# --- StorageProfile ----------------------------------------------------------------------------

@dataclass(kw_only=True)
class ClaimPropertySet(Api):
    """Access modes and volume mode that work for a storage class, in order of preference."""

    access_modes: list[str] = prop(required=True, maxItems=4, schema={"x-kubernetes-validations": [{
        "rule": "self.all(am, am in ['ReadWriteOnce', 'ReadOnlyMany', 'ReadWriteMany', 'ReadWriteOncePod'])",
        "message": "Illegal AccessMode"}]})
    volume_mode: Literal["Block", "Filesystem"] = prop(required=True)


@dataclass(kw_only=True)
class StorageProfileSpec(Api):
    """Administrator overrides of what CDI detects for a storage class."""

    clone_strategy: CloneStrategy | None = prop()
    claim_property_sets: list[ClaimPropertySet] | None = prop(maxItems=8)
    data_import_cron_source_format: SourceFormat | None = prop()
    snapshot_class: str | None = prop()


@dataclass(kw_only=True)
class StorageProfileStatus(Api):
    """The effective settings for the storage class."""

    storage_class: str | None = prop()
    provisioner: str | None = prop()
    clone_strategy: CloneStrategy | None = prop()
    claim_property_sets: list[ClaimPropertySet] | None = prop(maxItems=8)
    data_import_cron_source_format: SourceFormat | None = prop()
    snapshot_class: str | None = prop()


@dataclass(kw_only=True)
class StorageProfile(Api):
    """CDI's recommendations for one StorageClass (same name), used to complete ``storage``."""

    spec: StorageProfileSpec = prop(required=True)
    status: StorageProfileStatus | None = prop()


# --- CDIConfig ---------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ImportProxy(Api):
    """Proxy settings for importer pods."""

    http_proxy: str | None = prop(json="HTTPProxy")
    https_proxy: str | None = prop(json="HTTPSProxy")
    no_proxy: str | None = prop()
    trusted_ca_proxy: str | None = prop(json="trustedCAProxy")


_PERCENT = r"^(0(?:\.\d{1,3})?|1)$"


@dataclass(kw_only=True)
class FilesystemOverhead(Api):
    """Share of a Filesystem volume reserved for the filesystem, globally and per class."""

    global_: str | None = prop("Default 0.06", json="global", pattern=_PERCENT)
    storage_class: dict[str, str] | None = prop()


@dataclass(kw_only=True)
class TLSProfileCustom(Api):
    """A custom TLS profile."""

    ciphers: list[str] | None = prop()
    min_tls_version: str | None = prop(json="minTLSVersion")


@dataclass(kw_only=True)
class TLSProfilePredefined(Api):
    """A predefined TLS profile (no parameters)."""


@dataclass(kw_only=True)
class TLSSecurityProfile(Api):
    """TLS settings for CDI's servers (OpenShift ``TLSSecurityProfile`` shape)."""

    type: Literal["Old", "Intermediate", "Modern", "Custom"] | None = prop()
    old: TLSProfilePredefined | None = prop()
    intermediate: TLSProfilePredefined | None = prop()
    modern: TLSProfilePredefined | None = prop()
    custom: TLSProfileCustom | None = prop()


@dataclass(kw_only=True)
class CDIConfigSpec(Api):
    """Cluster-wide settings for imports."""

    upload_proxy_url_override: str | None = prop(json="uploadProxyURLOverride")
    import_proxy: ImportProxy | None = prop()
    scratch_space_storage_class: str | None = prop()
    pod_resource_requirements: ResourceRequirements | None = prop()
    feature_gates: list[str] | None = prop()
    filesystem_overhead: FilesystemOverhead | None = prop()
    preallocation: bool | None = prop()
    insecure_registries: list[str] | None = prop()
    data_volume_ttl_seconds: int | None = prop("Deprecated", json="dataVolumeTTLSeconds")
    tls_security_profile: TLSSecurityProfile | None = prop(json="tlsSecurityProfile")
    image_pull_secrets: list[LocalObjectReference] | None = prop()
    log_verbosity: int | None = prop()


@dataclass(kw_only=True)
class CDIConfigStatus(Api):
    """The effective settings, resolved by the controller."""

    upload_proxy_url: str | None = prop(json="uploadProxyURL")
    upload_proxy_ca: str | None = prop(json="uploadProxyCA")
    import_proxy: ImportProxy | None = prop()
    scratch_space_storage_class: str | None = prop()
    default_pod_resource_requirements: ResourceRequirements | None = prop()
    filesystem_overhead: FilesystemOverhead | None = prop()
    preallocation: bool | None = prop()
    image_pull_secrets: list[LocalObjectReference] | None = prop()


@dataclass(kw_only=True)
class CDIConfig(Api):
    """The singleton ``config``: user settings and what the controller resolved from them."""

    spec: CDIConfigSpec = prop(required=True)
    status: CDIConfigStatus | None = prop()


# --- CDI (operator) ----------------------------------------------------------------------------

@dataclass(kw_only=True)
class CertConfig(Api):
    """Lifetime and renewal of one kind of certificate."""

    duration: Duration | None = prop()
    renew_before: Duration | None = prop()


@dataclass(kw_only=True)
class CDICertConfig(Api):
    """Certificate settings for CA, server and client certificates."""

    ca: CertConfig | None = prop()
    server: CertConfig | None = prop()
    client: CertConfig | None = prop()


@dataclass(kw_only=True)
class ComponentConfig(NodePlacement):
    """Placement and replica counts of CDI's own deployments."""

    deployment_replicas: int | None = prop()
    api_server_replicas: int | None = prop()
    upload_proxy_replicas: int | None = prop()


@dataclass(kw_only=True)
class CustomizeComponentsPatch(Api):
    """A patch applied to one resource the operator deploys."""

    resource_name: str = prop(required=True, minLength=1)
    resource_type: str = prop(required=True, minLength=1)
    patch: str = prop(required=True)
    type: Literal["json", "merge", "strategic"] = prop(required=True)


@dataclass(kw_only=True)
class Flags(Api):
    """Command-line flags replacing those of CDI's components."""

    api: dict[str, str] | None = prop()
    controller: dict[str, str] | None = prop()
    upload_proxy: dict[str, str] | None = prop()


@dataclass(kw_only=True)
class CustomizeComponents(Api):
    """Patches and flags for the operator's deployments."""

    patches: list[CustomizeComponentsPatch] | None = prop(schema={"x-kubernetes-list-type": "atomic"})
    flags: Flags | None = prop()


@dataclass(kw_only=True)
class CDISpec(Api):
    """How CDI is installed."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = prop()
    uninstall_strategy: Literal["RemoveWorkloads", "BlockUninstallIfWorkloadsExist"] | None = prop()
    infra: ComponentConfig | None = prop()
    workload: NodePlacement | None = prop("Placement of worker (importer, uploader, cloner) pods")
    customize_components: CustomizeComponents | None = prop()
    clone_strategy_override: CloneStrategy | None = prop()
    config: CDIConfigSpec | None = prop()
    cert_config: CDICertConfig | None = prop()
    priority_class: str | None = prop()


@dataclass(kw_only=True)
class CDIStatus(Api):
    """Deployment phase, conditions and versions of the installation."""

    phase: str | None = prop()
    conditions: list[OperatorCondition] | None = prop()
    operator_version: str | None = prop()
    target_version: str | None = prop()
    observed_version: str | None = prop()


@dataclass(kw_only=True)
class CDI(Api):
    """The operator resource: one per cluster."""

    spec: CDISpec = prop(required=True)
    status: CDIStatus | None = prop()
