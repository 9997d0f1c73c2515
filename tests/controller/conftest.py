"""The controller under test: the real ``python -m cdi.controller`` process, against the real
control plane and node agent, with the CRDs and ``deploy/`` applied and the controller logged in
as the service account ``deploy/`` creates (so its RBAC is proved sufficient by every test).

Importer pods run the project's importer (image ``cdi-py-importer``, see the node agent's image
table) and fetch from an nginx listening on the node IP, where pods reach the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client

from kubeenv.controlplane import ControlPlane
from kubeenv.nodeagent import NodeAgent
from tests.kube.fixtures import make_namespace
from tests.kube.fixtures import wait_for as poll
from tests.servers.images import Image
from tests.servers.nginx import Nginx, start_nginx
from tests.servers.pki import TestCA
from tests.servers.ports import free_port
from tests.servers.token_api import TokenApi
from tests.servers.uploadstack import ProxyProcess, UploadPki, make_upload_pki
from uploadproxy import tokens

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "cdi.kubevirt.io", "v1beta1"
SERVICE_ACCOUNT = ("cdi", "cdi-py-controller")
CONTROLLER_ENV = {
    "IMPORTER_IMAGE": "cdi-py-importer",
    # fail fast in tests: short retry budgets inside the importer and across pod restarts
    "IMPORTER_EXTRA_ENV": "IMPORTER_RETRY_ATTEMPTS=4",
    "IMPORT_MAX_ATTEMPTS": "2",
}


def kubectl(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


def service_account_kubeconfig(plane: ControlPlane, core: client.CoreV1Api, path: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of the controller's service account."""
    namespace, name = SERVICE_ACCOUNT
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 24 * 3600}}).status.token
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": "controller", "user": {"token": token}}],
        "contexts": [{"name": "controller", "context": {"cluster": cluster["name"], "user": "controller"}}],
        "current-context": "controller"}))
    return path


class ControllerProcess:
    """``python -m cdi.controller`` as a child process that a test may kill and restart."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        env = {**os.environ, **CONTROLLER_ENV, **self.env, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "cdi.controller", "--kubeconfig",
                                             str(self.kubeconfig), "--standalone", "-A"],
                                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def installed(control_plane: ControlPlane) -> ControlPlane:
    kubectl(control_plane, "apply", "-f", str(ROOT / "crds"))
    kubectl(control_plane, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    kubectl(control_plane, "apply", "-f", str(ROOT / "deploy"))
    # the Deployments are not run here (no images on this node): the processes are. The shipped
    # APIService points at a server that never runs, which would break discovery (and namespace
    # deletion) for everyone: the upload tests register their own (token_api).
    kubectl(control_plane, "delete", "deployment", "-n", "cdi", "cdi-py-controller", "cdi-apiserver", "cdi-uploadproxy",
            "--ignore-not-found")
    kubectl(control_plane, "delete", "apiservice", "v1beta1.upload.cdi.kubevirt.io", "--ignore-not-found")
    return control_plane


@pytest.fixture(scope="session")
def upload_pki(session_dir: Path, test_ca: TestCA, node_agent: NodeAgent) -> UploadPki:
    return make_upload_pki(session_dir / "upload-pki", test_ca, (node_agent.node_ip,))


@pytest.fixture(scope="session")
def proxy_port() -> int:
    """Chosen before the controller starts: it publishes the proxy's URL in CDIConfig."""
    return free_port()


@pytest.fixture(scope="package")
def controller(installed: ControlPlane, kube: client.ApiClient, node_agent: NodeAgent, upload_pki: UploadPki,
               proxy_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """Stopped when this package's tests end: it is cluster-wide, and other tests (tests/kube)
    write DataVolume statuses by hand."""
    workdir = tmp_path_factory.mktemp("controller")
    kubeconfig = service_account_kubeconfig(installed, client.CoreV1Api(kube), workdir / "kubeconfig")
    env = {**upload_pki.controller_env(), "UPLOADSERVER_IMAGE": "cdi-py-uploadserver",
           "UPLOADPROXY_URL": f"https://127.0.0.1:{proxy_port}"}
    process = ControllerProcess(kubeconfig, workdir / "controller.log", env).start()
    yield process
    process.stop()


@pytest.fixture(scope="package")
def token_api(installed: ControlPlane, kube: client.ApiClient, node_agent: NodeAgent,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenApi]:
    """``UploadTokenRequest`` served by ``python -m cdi.apiserver`` through the aggregation layer."""
    with TokenApi.start(kube, installed, node_agent.node_ip, tmp_path_factory.mktemp("token-api")) as api:
        yield api


@pytest.fixture(scope="package")
def token_key(token_api: TokenApi) -> rsa.RSAPrivateKey:
    """The token API's signing key, for tests that make their own (expired, other volume) tokens."""
    return tokens.load_private_key(token_api.private_key_path.read_bytes())


@pytest.fixture(scope="package")
def upload_proxy(controller: ControllerProcess, installed: ControlPlane, upload_pki: UploadPki, proxy_port: int,
                 token_api: TokenApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The upload proxy on the host, asking the cluster where each volume's upload server is."""
    workdir = tmp_path_factory.mktemp("uploadproxy")
    proxy = ProxyProcess(upload_pki, installed.kubeconfig, token_api.public_key_pem,
                         workdir / "proxy.log", port=proxy_port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def pod_nginx(images: dict[str, Image], session_dir: Path, test_ca: TestCA, node_agent: NodeAgent) -> Iterator[Nginx]:
    """nginx on the node IP, over a copy of the images a test may change (rename, remove)."""
    root = session_dir / "pod-images"
    shutil.copytree(next(iter(images.values())).path.parent, root)
    server = start_nginx(root, session_dir / "pod-nginx", test_ca, rate="2m", host=node_agent.node_ip)
    yield server
    server.stop()


@pytest.fixture
def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


@pytest.fixture
def ns(core: client.CoreV1Api, controller: ControllerProcess) -> Iterator[str]:
    name = make_namespace(core, "dv")
    yield name
    core.delete_namespace(name)


# -- helpers for the tests ----------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90, controller: ControllerProcess | None = None) -> Any:
    """The shared poll, showing the controller's log tail when it times out."""
    explain = (lambda: controller.log()[-3000:]) if controller is not None else None
    return poll(what, check, timeout, explain)
