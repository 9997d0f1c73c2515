"""A pod's volumes as host paths, ready to bind-mount into its containers.

PVCs (and generic ephemeral volumes) resolve through their bound PV to the provisioner's
directory, or, for Block, to a loop device attached to the PV's file for as long as the pod runs.
Secret, ConfigMap, downward API and projected volumes (including service-account tokens, through
the TokenRequest API) are written once into the pod's directory; later changes to the source are
not propagated. emptyDir is a directory (``medium: Memory`` included); hostPath is used as is.

A claim not yet bound raises :class:`NotReady` (the pod keeps waiting, as kubelet's volume
manager does); an unusable source raises :class:`VolumeError`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kubernetes.client import ApiClient, CoreV1Api

from kubeenv.nodeagent import backing
from kubeenv.nodeagent.envvars import field_value, resource_value
from kubeenv.nodeagent.kube import Obj, ignore_missing, raw

TOKEN_SECONDS = 3600


class NotReady(RuntimeError):
    """A volume cannot be set up yet; retried until the pod goes away."""


class VolumeError(NotReady):
    """A volume's source is missing or unsupported (reported as FailedMount, retried too)."""


@dataclass(frozen=True)
class HostVolume:
    """Where a volume is on the host: a directory, a file or a block device."""

    path: str
    block: bool = False
    readonly: bool = False


class PodVolumes:
    """Prepares one pod's volumes under ``poddir/volumes`` and releases what it attached."""

    def __init__(self, api: ApiClient, loops: backing.LoopDevices, poddir: Path, pod: Obj) -> None:
        self.core = CoreV1Api(api)
        self.loops = loops
        self.dir = poddir / "volumes"
        self.pod = pod
        self.namespace: str = pod["metadata"]["namespace"]
        self._attached: dict[str, Path] = {}

    def prepare(self) -> dict[str, HostVolume]:
        return {volume["name"]: self._one(volume) for volume in self.pod["spec"].get("volumes") or []}

    def release(self) -> None:
        for device in self._attached.values():
            self.loops.detach(device)
        self._attached.clear()

    def _one(self, volume: Obj) -> HostVolume:
        name = volume["name"]
        handlers: dict[str, Callable[[str, Obj], HostVolume]] = {
            "persistentVolumeClaim": lambda n, s: self._claim(s["claimName"], bool(s.get("readOnly"))),
            "ephemeral": lambda n, s: self._claim(f"{self.pod['metadata']['name']}-{n}", False),
            "emptyDir": lambda n, s: self._empty_dir(n),
            "hostPath": lambda n, s: self._host_path(s),
            "secret": lambda n, s: self._files(n, self._secret_files(s)),
            "configMap": lambda n, s: self._files(n, self._config_map_files(s)),
            "downwardAPI": lambda n, s: self._files(n, self._downward_files(s)),
            "projected": lambda n, s: self._files(n, self._projected_files(s)),
        }
        for kind, handler in handlers.items():
            if kind in volume:
                return handler(name, volume[kind] or {})
        raise VolumeError(f"volume {name}: unsupported source {sorted(set(volume) - {'name'})}")

    # -- claims -----------------------------------------------------------------------------

    def _claim(self, claim_name: str, readonly: bool) -> HostVolume:
        claim = ignore_missing(self.core.read_namespaced_persistent_volume_claim, claim_name, self.namespace)
        if claim is None:
            raise NotReady(f'persistentvolumeclaim "{claim_name}" not found')
        volume_name = claim["spec"].get("volumeName")
        if not volume_name or claim.get("status", {}).get("phase") != "Bound":
            raise NotReady(f'persistentvolumeclaim "{claim_name}" is not bound yet')
        volume = raw(self.core.read_persistent_volume, volume_name)
        spec = volume["spec"]
        path = (spec.get("local") or spec.get("hostPath") or {}).get("path")
        if not path:
            raise VolumeError(f"PV {volume_name} is neither local nor hostPath; this node cannot mount it")
        if spec.get("volumeMode") != "Block":
            return HostVolume(path, readonly=readonly)
        return HostVolume(str(self._device(claim_name, Path(path))), block=True, readonly=readonly)

    def _device(self, claim_name: str, path: Path) -> Path:
        if path.is_block_device():
            return path
        if claim_name not in self._attached:
            self._attached[claim_name] = self.loops.attach(path)
        return self._attached[claim_name]

    # -- local kinds ------------------------------------------------------------------------

    def _empty_dir(self, name: str) -> HostVolume:
        path = self.dir / name
        backing.create_dir(path)
        return HostVolume(str(path))

    def _host_path(self, source: Obj) -> HostVolume:
        path = Path(source["path"])
        kind = source.get("type") or ""
        if kind == "FileOrCreate" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        elif kind in ("DirectoryOrCreate", "") and not path.exists():
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise VolumeError(f"hostPath {path} does not exist (type {kind})")
        return HostVolume(str(path), block=path.is_block_device())

    def _files(self, name: str, files: dict[str, tuple[bytes, int]]) -> HostVolume:
        """Write ``{relative path: (content, mode)}`` into the volume's directory, read-only in the pod."""
        root = self.dir / name
        root.mkdir(parents=True, exist_ok=True)
        for relative, (content, mode) in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            os.chmod(path, mode)
        return HostVolume(str(root), readonly=True)

    # -- file sources -----------------------------------------------------------------------

    def _source_data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        read = self.core.read_namespaced_secret if kind == "Secret" else self.core.read_namespaced_config_map
        obj = ignore_missing(read, name, self.namespace)
        if obj is None:
            if optional:
                return None
            raise VolumeError(f'{kind.lower()} "{name}" not found')
        data = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
        for k, v in (obj.get("data") or {}).items():
            data[k] = base64.b64decode(v) if kind == "Secret" else v.encode()
        return data

    def _keyed(self, kind: str, name: str, source: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        data = self._source_data(kind, name, bool(source.get("optional")))
        if data is None:
            return {}
        items = source.get("items")
        if not items:
            return {k: (v, default_mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise VolumeError(f"{kind} {name} has no key {item['key']}")
            files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
        return files

    def _secret_files(self, source: Obj) -> dict[str, tuple[bytes, int]]:
        return self._keyed("Secret", source["secretName"], source, source.get("defaultMode", 0o644))

    def _config_map_files(self, source: Obj) -> dict[str, tuple[bytes, int]]:
        return self._keyed("ConfigMap", source["name"], source, source.get("defaultMode", 0o644))

    def _downward_files(self, source: Obj, default_mode: int | None = None) -> dict[str, tuple[bytes, int]]:
        mode = default_mode if default_mode is not None else source.get("defaultMode", 0o644)
        files = {}
        for item in source.get("items") or []:
            files[item["path"]] = (self._downward_value(item).encode(), item.get("mode", mode))
        return files

    def _downward_value(self, item: Obj) -> str:
        if "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            container = next((c for c in self.pod["spec"]["containers"] if c["name"] == ref.get("containerName")),
                             self.pod["spec"]["containers"][0])
            return resource_value(container, ref)
        path = item["fieldRef"]["fieldPath"]
        if path in ("metadata.labels", "metadata.annotations"):
            values = self.pod["metadata"].get(path.split(".")[1], {})
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        host_ip = ""
        return field_value(self.pod, path, self.pod.get("status", {}).get("podIP", ""), host_ip)

    def _projected_files(self, source: Obj) -> dict[str, tuple[bytes, int]]:
        mode = source.get("defaultMode", 0o644)
        files: dict[str, tuple[bytes, int]] = {}
        for part in source.get("sources") or []:
            if "secret" in part:
                files.update(self._keyed("Secret", part["secret"]["name"], part["secret"], mode))
            elif "configMap" in part:
                files.update(self._keyed("ConfigMap", part["configMap"]["name"], part["configMap"], mode))
            elif "downwardAPI" in part:
                files.update(self._downward_files(part["downwardAPI"], mode))
            elif "serviceAccountToken" in part:
                token = part["serviceAccountToken"]
                files[token["path"]] = (self._token(token).encode(), mode)
            else:
                raise VolumeError(f"unsupported projected source {sorted(part)}")
        return files

    def _token(self, source: Obj) -> str:
        """A bound service-account token from the TokenRequest API, as kubelet mounts it (no refresh)."""
        meta = self.pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": max(int(source.get("expirationSeconds", TOKEN_SECONDS)), 600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        answer = raw(self.core.create_namespaced_service_account_token, account, self.namespace,
                     body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        token: str = answer["status"]["token"]
        return token
