"""CDIConfig resolution (``cdi.controller.config``), as CDI's config controller does it.

Behaviours under test:

* no CDIConfig: CDI's defaults (overhead 0.06, no preallocation, worker pod resources
  100m/60M requests and 750m/600M limits, no proxy, no scratch class, no upload URL);
* filesystem overhead: a valid global replaces the default; per-class values apply to existing
  classes only, every existing class gets an entry; ``overhead_for`` falls back to the global;
* overhead validation with CDI's regex: invalid global -> default, invalid per-class -> global;
* pod resources: spec cpu/memory limits and requests override the defaults key by key;
* scratch space class only when that StorageClass exists;
* passthrough of preallocation, insecure registries, import proxy, upload proxy override and
  image pull secrets;
* the status JSON: CDI's field names (checked against ``CDIConfigStatus``), an empty import proxy
  written as empty strings, unset optional fields omitted.
"""

from __future__ import annotations

from typing import Any

import pytest

from cdi.api.schema import from_json, to_json
from cdi.api.v1beta1 import CDIConfigStatus
from cdi.controller.config import (DEFAULT_OVERHEAD, ControllerConfig, config_status, resolve_config,
                                   valid_overhead)


def storage_class(name: str) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": "example.com/csi"}


def cdiconfig(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig", "metadata": {"name": "config"},
            "spec": spec}


CLASSES = [storage_class("local"), storage_class("nfs")]


def test_defaults_without_a_cdiconfig() -> None:
    config = resolve_config(None, CLASSES)
    assert config == ControllerConfig(
        filesystem_overhead_global="0.06",
        filesystem_overhead_by_class={"local": "0.06", "nfs": "0.06"},
        preallocation=False,
        pod_resources={"limits": {"cpu": "750m", "memory": "600M"}, "requests": {"cpu": "100m", "memory": "60M"}},
        insecure_registries=[],
        import_proxy=None,
        scratch_storage_class=None,
        upload_proxy_url=None,
        image_pull_secrets=[],
    )


def test_empty_spec_is_the_same_as_no_cdiconfig() -> None:
    assert resolve_config(cdiconfig(), CLASSES) == resolve_config(None, CLASSES)
    assert resolve_config({"metadata": {"name": "config"}}, []) == resolve_config(None, [])


def test_per_class_overhead_for_existing_classes_only() -> None:
    spec = {"filesystemOverhead": {"global": "0.08", "storageClass": {"nfs": "0.1", "gone": "0.2"}}}
    config = resolve_config(cdiconfig(**spec), CLASSES)
    assert config.filesystem_overhead_global == "0.08"
    assert config.filesystem_overhead_by_class == {"local": "0.08", "nfs": "0.1"}


@pytest.mark.parametrize("storage_class_name, expected", [
    ("nfs", "0.1"), ("local", "0.08"), ("not-a-class", "0.08"), (None, "0.08"),
])
def test_overhead_for(storage_class_name: str | None, expected: str) -> None:
    spec = {"filesystemOverhead": {"global": "0.08", "storageClass": {"nfs": "0.1"}}}
    assert resolve_config(cdiconfig(**spec), CLASSES).overhead_for(storage_class_name) == expected


@pytest.mark.parametrize("value, valid", [
    ("0", True), ("1", True), ("0.06", True), ("0.5", True), ("0.055", True), ("0.999", True),
    ("0.1234", False), ("1.0", False), ("-0.1", False), ("0.", False), (".5", False), ("", False),
    ("abc", False), ("2", False), (0.1, False), (None, False),
])
def test_overhead_validation_uses_cdis_regex(value: object, valid: bool) -> None:
    assert valid_overhead(value) is valid


@pytest.mark.parametrize("bad", ["0.1234", "1.5", "ten percent", ""])
def test_invalid_global_overhead_falls_back_to_the_default(bad: str) -> None:
    config = resolve_config(cdiconfig(filesystemOverhead={"global": bad}), CLASSES)
    assert config.filesystem_overhead_global == DEFAULT_OVERHEAD
    assert config.filesystem_overhead_by_class == {"local": "0.06", "nfs": "0.06"}


def test_invalid_class_overhead_falls_back_to_the_global() -> None:
    spec = {"filesystemOverhead": {"global": "0.1", "storageClass": {"nfs": "lots", "local": "0.2"}}}
    config = resolve_config(cdiconfig(**spec), CLASSES)
    assert config.filesystem_overhead_by_class == {"local": "0.2", "nfs": "0.1"}


def test_pod_resources_override_key_by_key() -> None:
    spec = {"podResourceRequirements": {"limits": {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "1Gi"},
                                        "requests": {"memory": "1Gi"}}}
    config = resolve_config(cdiconfig(**spec), [])
    assert config.pod_resources == {"limits": {"cpu": "2", "memory": "2Gi"},
                                    "requests": {"cpu": "100m", "memory": "1Gi"}}


@pytest.mark.parametrize("wanted, expected", [("nfs", "nfs"), ("missing", None), (None, None)])
def test_scratch_class_only_if_it_exists(wanted: str | None, expected: str | None) -> None:
    spec = {} if wanted is None else {"scratchSpaceStorageClass": wanted}
    assert resolve_config(cdiconfig(**spec), CLASSES).scratch_storage_class == expected


def test_passthrough_fields() -> None:
    proxy = {"HTTPSProxy": "http://proxy:3128", "noProxy": ".svc", "trustedCAProxy": "proxy-ca"}
    spec = {"preallocation": True, "insecureRegistries": ["registry.lab:5000"], "importProxy": proxy,
            "uploadProxyURLOverride": "https://upload.example.com", "imagePullSecrets": [{"name": "pull"}]}
    config = resolve_config(cdiconfig(**spec), [])
    assert config.preallocation is True
    assert config.insecure_registries == ["registry.lab:5000"]
    assert config.import_proxy == proxy and config.import_proxy is not proxy
    assert config.upload_proxy_url == "https://upload.example.com"
    assert config.image_pull_secrets == [{"name": "pull"}]


def test_status_of_the_defaults() -> None:
    status = config_status(resolve_config(None, CLASSES))
    assert status == {
        "filesystemOverhead": {"global": "0.06", "storageClass": {"local": "0.06", "nfs": "0.06"}},
        "defaultPodResourceRequirements": {"limits": {"cpu": "750m", "memory": "600M"},
                                           "requests": {"cpu": "100m", "memory": "60M"}},
        "preallocation": False,
        "importProxy": {"HTTPProxy": "", "HTTPSProxy": "", "noProxy": "", "trustedCAProxy": ""},
    }


def test_status_with_everything_set() -> None:
    spec = {"preallocation": True, "scratchSpaceStorageClass": "local",
            "importProxy": {"HTTPProxy": "http://proxy:3128"},
            "uploadProxyURLOverride": "https://upload.example.com", "imagePullSecrets": [{"name": "pull"}],
            "filesystemOverhead": {"global": "0.1", "storageClass": {"nfs": "0.2"}}}
    status = config_status(resolve_config(cdiconfig(**spec), CLASSES))
    assert status["scratchSpaceStorageClass"] == "local"
    assert status["uploadProxyURL"] == "https://upload.example.com"
    assert status["imagePullSecrets"] == [{"name": "pull"}]
    assert status["importProxy"] == {"HTTPProxy": "http://proxy:3128"}
    assert status["preallocation"] is True
    assert status["filesystemOverhead"] == {"global": "0.1", "storageClass": {"local": "0.1", "nfs": "0.2"}}


@pytest.mark.parametrize("spec", [{}, {"scratchSpaceStorageClass": "nfs", "uploadProxyURLOverride": "https://u",
                                       "imagePullSecrets": [{"name": "s"}], "importProxy": {"noProxy": ".svc"}}])
def test_status_field_names_match_the_api_type(spec: dict[str, Any]) -> None:
    status = config_status(resolve_config(cdiconfig(**spec), CLASSES))
    assert to_json(from_json(CDIConfigStatus, status)) == status


def test_status_does_not_share_state_with_the_config() -> None:
    config = resolve_config(cdiconfig(importProxy={"noProxy": ".svc"}), CLASSES)
    status = config_status(config)
    status["importProxy"]["noProxy"] = "changed"
    status["defaultPodResourceRequirements"]["limits"]["cpu"] = "9"
    assert config.import_proxy == {"noProxy": ".svc"}
    assert config.pod_resources["limits"]["cpu"] == "750m"
