"""The installer's steps against the API: CRDs, Secrets, ``deploy/``, then wait for it to run.

Everything is applied server-side under one field manager, so a second run updates what it owns
and leaves what others set (a user's CDIConfig fields, kubelet's status) alone.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

from cdi.install import pki
from cdi.install.customize import Manifest, Options, customize

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
DEPLOY_DIR = ROOT / "deploy"
FIELD_MANAGER = "cdi-py-install"
DEPLOYMENTS = ("cdi-py-controller", "cdi-apiserver", "cdi-uploadproxy")
APISERVICE = "v1beta1.upload.cdi.kubevirt.io"


class InstallError(RuntimeError):
    """A step failed; the message says which and why."""


def read_manifests(directory: Path) -> list[Manifest]:
    if not directory.is_dir():
        raise InstallError(f"{directory} is missing: run the installer from a cdi-py checkout")
    docs: list[Manifest] = []
    for path in sorted(directory.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@dataclass
class Installer:
    api: client.ApiClient
    dynamic: DynamicClient

    @classmethod
    def connect(cls, kubeconfig: Path | None) -> Installer:
        api = config.new_client_from_config(str(kubeconfig) if kubeconfig else None)
        return cls(api, DynamicClient(api))

    def install(self, options: Options, proxy_names: tuple[str, ...], *, wait: float) -> bytes:
        """Install; returns the CA that signs the upload proxy's certificate."""
        crds = read_manifests(CRD_DIR)
        self.apply(crds)
        self._wait_established([c["metadata"]["name"] for c in crds], deadline=time.monotonic() + 60)
        deploy = read_manifests(DEPLOY_DIR)
        namespace = [m for m in deploy if m["kind"] == "Namespace"]
        self.apply(namespace)
        api_ca, proxy_ca = self._secrets(proxy_names)
        options = Options(options.images, api_ca, options.nodeport, options.proxy_url, options.controller_env)
        self.apply([customize(m, options) for m in deploy if m["kind"] != "Namespace"])
        if wait > 0:
            self._wait_running(time.monotonic() + wait)
        return proxy_ca

    def apply(self, manifests: list[Manifest]) -> None:
        for manifest in manifests:
            resource = self._resource(manifest)
            namespace = manifest["metadata"].get("namespace")
            try:
                resource.server_side_apply(body=manifest, name=manifest["metadata"]["name"], namespace=namespace,
                                           field_manager=FIELD_MANAGER, force_conflicts=True)
            except DynamicApiError as error:
                raise InstallError(f"applying {manifest['kind']} {manifest['metadata']['name']}: {error.summary()}") \
                    from error

    def _resource(self, manifest: Manifest) -> Any:
        for _ in range(30):  # a CRD just established may take a moment to appear in discovery
            try:
                return self.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
            except ResourceNotFoundError:
                self.dynamic.resources.invalidate_cache()
                time.sleep(1)
        raise InstallError(f"the API serves no {manifest['apiVersion']} {manifest['kind']}")

    # -- Secrets -------------------------------------------------------------------------------

    def _secrets(self, proxy_names: tuple[str, ...]) -> tuple[bytes, bytes]:
        core = client.CoreV1Api(self.api)
        existing: dict[str, dict[str, bytes]] = {}
        names_annotation = None
        for secret in core.list_namespaced_secret(pki.NAMESPACE).items:
            existing[secret.metadata.name] = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            if secret.metadata.name == pki.PROXY_CERT:
                names_annotation = (secret.metadata.annotations or {}).get(pki.PROXY_NAMES_ANNOTATION)
        secrets, api_ca, proxy_ca = pki.plan(existing, names_annotation, proxy_names)
        self.apply([s.manifest() for s in secrets])
        return api_ca, proxy_ca

    # -- waiting -------------------------------------------------------------------------------

    def _wait_established(self, names: list[str], deadline: float) -> None:
        ext = client.ApiextensionsV1Api(self.api)
        for name in names:
            self._until(lambda: _true(ext.read_custom_resource_definition(name).status.conditions, "Established"),
                        f"CRD {name} established", deadline)

    def _wait_running(self, deadline: float) -> None:
        apps = client.AppsV1Api(self.api)
        for name in DEPLOYMENTS:
            self._until(lambda: _available(apps.read_namespaced_deployment(name, pki.NAMESPACE)),
                        f"Deployment {pki.NAMESPACE}/{name} available", deadline, lambda: self._why(name))
        registration = client.ApiregistrationV1Api(self.api)
        self._until(lambda: _true(registration.read_api_service(APISERVICE).status.conditions, "Available"),
                    f"APIService {APISERVICE} available", deadline)

    def _why(self, deployment: str) -> str:
        """The pods' states and recent events, for a Deployment that did not become available."""
        core = client.CoreV1Api(self.api)
        pods = core.list_namespaced_pod(pki.NAMESPACE, label_selector=f"app.kubernetes.io/name={deployment}").items
        lines = []
        for pod in pods:
            for status in pod.status.container_statuses or []:
                state = status.state.waiting or status.state.terminated
                lines.append(f"pod {pod.metadata.name}: {state.reason if state else 'running'} "
                             f"{getattr(state, 'message', '') or ''}".strip())
        events = core.list_namespaced_event(pki.NAMESPACE).items[-8:]
        lines += [f"event {e.involved_object.name}: {e.reason}: {e.message}" for e in events]
        return "\n".join(lines)

    @staticmethod
    def _until(check: Callable[[], bool], what: str, deadline: float, why: Callable[[], str] | None = None) -> None:
        while True:
            try:
                if check():
                    return
            except ApiException as error:
                if error.status != 404:
                    raise
            if time.monotonic() > deadline:
                detail = f"\n{why()}" if why else ""
                raise InstallError(f"timed out waiting for {what}{detail}")
            time.sleep(1)


def _true(conditions: list[Any] | None, kind: str) -> bool:
    """Whether the status condition ``kind`` is there and ``True``."""
    return any(c.type == kind and c.status == "True" for c in conditions or [])


def _available(deployment: Any) -> bool:
    """The rollout of the current spec is complete: every replica updated and available, none old."""
    status, want = deployment.status, deployment.spec.replicas
    return bool(status and (status.observed_generation or 0) >= deployment.metadata.generation
                and status.updated_replicas == want and status.available_replicas == want
                and status.replicas == want)
