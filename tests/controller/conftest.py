"""The product under test, deployed as a user deploys it: ``python -m cdi.install`` applies the CRDs
and ``deploy/`` with our images (built from our Dockerfile and pulled by containerd), makes the
Secrets, fills the APIService's CA and exposes the upload proxy on a NodePort. The controller,
cdi-apiserver and the upload proxy run as pods under the ``restricted`` Pod Security level with
deploy/'s RBAC; every importer and upload server is a pod from our image on the real node.

Tests reach the upload proxy at ``https://<node IP>:<NodePort>`` trusting the installer's CA, read
the components' logs through ``kubectl logs`` (for their failure messages), and restart the
controller by deleting its pod. At the end of this package the product is uninstalled
(``kubectl delete -f deploy/``), so later tests (tests/kube writes DataVolume statuses by hand,
and applies deploy/ itself) see no controller.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client, config

from cdi.install import pki as install_pki
from kubeenv.cluster import Cluster
from kubeenv.controlplane import ControlPlane
from kubeenv.node import Node, csi
from tests.controller import dvs
from tests.kube.fixtures import make_namespace
from tests.servers.relay import TcpRelay
from tests.kube.fixtures import wait_for as poll
from tests.servers.images import Image
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA
from uploadproxy import tokens

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "cdi.kubevirt.io", "v1beta1"
NAMESPACE = "cdi"
CONTROLLER_ENV = {
    # fail fast in tests: short retry budgets inside the importer and across pod restarts
    "IMPORTER_EXTRA_ENV": "IMPORTER_RETRY_ATTEMPTS=4",
    "IMPORT_MAX_ATTEMPTS": "2",
}


def kubectl(plane: ControlPlane, *args: str, check: bool = True, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


@dataclass(frozen=True)
class Installation:
    """What the installer made: where the proxy is and the CA that clients trust for it."""

    plane: ControlPlane
    proxy_url: str
    proxy_ca: Path

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig


class Deployed:
    """One of the product's Deployments: its logs, and a restart by deleting its pod."""

    def __init__(self, plane: ControlPlane, name: str) -> None:
        self.plane, self.name = plane, name

    def log(self) -> str:
        return kubectl(self.plane, "logs", "-n", NAMESPACE, f"deployment/{self.name}", "--tail=400",
                       check=False).stdout

    def pod(self) -> str:
        return kubectl(self.plane, "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/name={self.name}",
                       "-o", "jsonpath={.items[0].metadata.name}").stdout

    def restart(self) -> None:
        """Delete the pod (what a node failure or an upgrade does) and wait for its replacement."""
        old = self.pod()
        kubectl(self.plane, "delete", "pod", "-n", NAMESPACE, old, "--wait=true", "--timeout=60s")
        kubectl(self.plane, "rollout", "status", "-n", NAMESPACE, f"deployment/{self.name}", "--timeout=120s")
        assert self.pod() != old


class Controller(Deployed):
    pass


class UploadProxy(Deployed):
    def __init__(self, plane: ControlPlane, url: str) -> None:
        super().__init__(plane, "cdi-uploadproxy")
        self.url = url


@pytest.fixture(scope="package")
def installed(cluster: Cluster, node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    workdir = tmp_path_factory.mktemp("install")
    plane = cluster.plane
    argv = cluster.install_command(ca_out=workdir / "proxy-ca.crt", controller_env=CONTROLLER_ENV)
    proc = subprocess.run([*argv, "--wait=240"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dvs.use_csi_state(csi.state_dir(node.layout))
    describe_storage(client.CustomObjectsApi(config.new_client_from_config(str(plane.kubeconfig))))
    yield Installation(plane, cluster.uploadproxy_url(), workdir / "proxy-ca.crt")
    # uninstall as a user would (the CRDs stay, as their data would): later tests apply deploy/
    # to a cluster without it
    kubectl(plane, "delete", "-f", str(ROOT / "deploy"), "--ignore-not-found", "--wait=true", "--timeout=180s",
            check=False, timeout=240)


CLAIM_PROPERTY_SETS = [{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
                       {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"}]


def describe_storage(custom: client.CustomObjectsApi) -> None:
    """What a CDI admin does for a provisioner CDI's capability table does not know: say in each
    StorageProfile's spec which claims the class serves (Filesystem first, so a DataVolume that
    names no volume mode gets a directory), and wait until the controller reports it."""
    for name in (csi.CLASS_IMMEDIATE, csi.CLASS_WFFC):
        poll(f"StorageProfile {name}", lambda: _profile(custom, name), 60)
        custom.patch_cluster_custom_object(GROUP, VERSION, "storageprofiles", name,
                                           {"spec": {"claimPropertySets": CLAIM_PROPERTY_SETS}})
        poll(f"StorageProfile {name} status", lambda: (_profile(custom, name) or {}).get("status", {})
             .get("claimPropertySets") == CLAIM_PROPERTY_SETS, 60)


def _profile(custom: client.CustomObjectsApi, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = custom.get_cluster_custom_object(GROUP, VERSION, "storageprofiles", name)
        return found
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


@pytest.fixture(scope="package")
def upload_pki(installed: Installation) -> Installation:
    """The proxy's CA for clients (``proxy_ca``), as the installer wrote it."""
    return installed


@pytest.fixture(scope="package")
def controller(installed: Installation) -> Controller:
    return Controller(installed.plane, "cdi-py-controller")


@pytest.fixture(scope="package")
def upload_proxy(installed: Installation) -> UploadProxy:
    return UploadProxy(installed.plane, installed.proxy_url)


@pytest.fixture(scope="package")
def token_key(installed: Installation, kube: client.ApiClient) -> rsa.RSAPrivateKey:
    """cdi-apiserver's signing key (the installer's Secret), for tests that make their own tokens."""
    secret = client.CoreV1Api(kube).read_namespaced_secret(install_pki.SIGNING_KEY, NAMESPACE)
    return tokens.load_private_key(base64.b64decode(secret.data["id_rsa"]))


@pytest.fixture(scope="session")
def pod_nginx(images: dict[str, Image], session_dir: Path, test_ca: TestCA, node: Node) -> Iterator[Nginx]:
    """nginx on the node IP, over a copy of the images a test may change (rename, remove)."""
    root = session_dir / "pod-images"
    shutil.copytree(next(iter(images.values())).path.parent, root)
    server = start_nginx(root, session_dir / "pod-nginx", test_ca, rate="2m", host=node.node_ip)
    yield server
    server.stop()


@pytest.fixture
def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


@pytest.fixture
def ns(core: client.CoreV1Api, controller: Controller) -> Iterator[str]:
    """A namespace held to the ``restricted`` Pod Security level: importer and upload pods must pass it."""
    name = make_namespace(core, "dv")
    core.patch_namespace(name, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def relay_to(node: Node) -> Iterator[object]:
    """relay_to("http://127.0.0.1:port") gives node_ip:port, which pods can reach (a TCP relay)."""
    relays: list[TcpRelay] = []

    def make(target: str) -> str:
        host, port = target.split("://", 1)[-1].rsplit(":", 1)
        relay = TcpRelay(node.node_ip, (host, int(port.split("/", 1)[0])))
        relays.append(relay)
        return relay.address
    yield make
    for relay in relays:
        relay.close()


@pytest.fixture
def golden_reader(custom: client.CustomObjectsApi) -> Iterator[str]:
    """What a cluster admin grants for golden images (CDI's doc/RBAC.md): ``create`` on
    ``datavolumes/source``, to be bound in the golden namespace."""
    rbac = client.RbacAuthorizationV1Api(custom.api_client)
    name = f"clone-source-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": [
        {"apiGroups": [GROUP], "resources": ["datavolumes/source"], "verbs": ["create"]}]})
    yield name
    rbac.delete_cluster_role(name)


# -- helpers for the tests ----------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90, controller: Deployed | None = None) -> Any:
    """The shared poll, showing the controller's log tail when it times out."""
    explain = (lambda: controller.log()[-3000:]) if controller is not None else None
    return poll(what, check, timeout, explain)
