"""The generated CRDs: committed YAML matches the types, and the real apiserver accepts CDI's
documented DataVolume shapes, refuses the invalid ones with CDI's messages, and prints CDI's
columns."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from cdi.api import crds
from kubeenv.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).parent / "manifests"
NAMESPACE = "crd-test"


def test_committed_crds_match_a_fresh_generation() -> None:
    fresh = crds.generate()
    committed = {p.name: p.read_text() for p in crds.CRD_DIR.glob("cdi.kubevirt.io_*.yaml")}
    assert committed == fresh, "crds/ is stale: run `python -m cdi.api.crds`"


def kubectl(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args],
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The CRDs applied with ``kubectl apply -f crds/`` and Established, and a test namespace."""
    kubectl(control_plane, "apply", "-f", str(crds.CRD_DIR))
    kubectl(control_plane, "wait", "--for=condition=Established", "--timeout=30s",
            *[f"crd/{k.name}" for k in crds.KINDS])
    kubectl(control_plane, "create", "namespace", NAMESPACE)
    yield control_plane
    kubectl(control_plane, "delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.mark.parametrize("manifest", sorted(p.name for p in (MANIFESTS / "valid").glob("*.yaml")))
def test_documented_shapes_are_accepted(installed: ControlPlane, manifest: str) -> None:
    kubectl(installed, "apply", "-n", NAMESPACE, "-f", str(MANIFESTS / "valid" / manifest))


def expected_message(path: Path) -> str:
    """The ``# expect: <message>`` first line of an invalid manifest."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("manifest", sorted(p.name for p in (MANIFESTS / "invalid").glob("*.yaml")))
def test_invalid_shapes_are_refused_with_cdis_message(installed: ControlPlane, manifest: str) -> None:
    path = MANIFESTS / "invalid" / manifest
    proc = kubectl(installed, "apply", "-n", NAMESPACE, "-f", str(path), check=False)
    assert proc.returncode != 0, proc.stdout
    assert expected_message(path) in proc.stderr


def test_get_dv_prints_phase_progress_restarts_age(installed: ControlPlane, kube: client.ApiClient) -> None:
    kubectl(installed, "apply", "-n", NAMESPACE, "-f", str(MANIFESTS / "valid" / "blank-filesystem.yaml"))
    status = {"phase": "ImportInProgress", "progress": "42.50%", "restartCount": 3}
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        "cdi.kubevirt.io", "v1beta1", NAMESPACE, "datavolumes", "blank-fs", {"status": status})
    out = kubectl(installed, "get", "dv", "blank-fs", "-n", NAMESPACE).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    assert out[1].split()[:4] == ["blank-fs", "ImportInProgress", "42.50%", "3"]


def test_short_names_and_scopes(installed: ControlPlane) -> None:
    rows = kubectl(installed, "api-resources", "--api-group=cdi.kubevirt.io", "--no-headers").stdout
    table = {line.split()[-1]: line.split() for line in rows.splitlines()}
    assert table["DataVolume"][1:3] == ["dv,dvs", "cdi.kubevirt.io/v1beta1"]
    assert table["DataVolume"][3] == "true"
    assert table["CDI"][3] == "false" and table["CDIConfig"][2] == "false"
    assert table["StorageProfile"][2] == "false"


def test_types_round_trip_cdi_json() -> None:
    """The Python types read and write CDI's JSON names (``secretRef``, ``DataVolumeName``...)."""
    import yaml

    from cdi.api import DataVolume, from_json, to_json

    doc = yaml.safe_load((MANIFESTS / "valid" / "http-checksum-storage.yaml").read_text())
    dv = from_json(DataVolume, doc)
    assert dv.spec.source is not None and dv.spec.source.http is not None
    assert dv.spec.source.http.secret_ref == "web-creds"
    assert to_json(dv) == {"spec": doc["spec"]}
