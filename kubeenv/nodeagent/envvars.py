"""A container's environment, built the way kubelet builds it.

Order: the image's ENV, ``envFrom`` (prefixed), then ``env`` in order, where a value may use
``$(NAME)`` of any earlier variable (``$$`` escapes). ``valueFrom`` reads Secret and ConfigMap keys,
the pod's own fields (``fieldRef``) and its resources (``resourceFieldRef``). A missing Secret,
ConfigMap or key that is not optional is a :class:`ConfigError`: the container then waits with
reason CreateContainerConfigError, as it would on a real node.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, Callable

from kubeenv.nodeagent.storage import parse_quantity

Obj = dict[str, Any]
Fetch = Callable[[str, str], "Obj | None"]  # (kind "Secret"|"ConfigMap", name) -> object or None


class ConfigError(RuntimeError):
    """The environment cannot be built yet (a referenced Secret or ConfigMap or key is missing)."""


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` -> ``$``."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _REFERENCE.sub(replace, text)


def field_value(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    """The downward API's ``fieldRef`` paths that kubelet supports in env."""
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    values = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": pod_ip, "status.podIPs": pod_ip, "status.hostIP": host_ip, "status.hostIPs": host_ip,
    }
    if path not in values:
        raise ConfigError(f"unsupported fieldRef {path!r}")
    return str(values[path])


def resource_value(container: Obj, ref: Obj) -> str:
    """``resourceFieldRef``: the container's limit (or request), divided as asked, rounded up."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources", {})
    value = resources.get(kind, {}).get(name) or resources.get("limits", {}).get(name)
    if value is None:
        value = {"cpu": "32", "memory": "64Gi", "ephemeral-storage": "1Ti"}.get(name, "0")  # node allocatable
    divisor = ref.get("divisor", "1")
    if name == "cpu":
        cores = _cpu(value)
        return str(max(1, math.ceil(cores / _cpu(divisor))))
    return str(math.ceil(parse_quantity(value) / parse_quantity(divisor)))


def _cpu(value: str) -> float:
    value = str(value)
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _decode(kind: str, obj: Obj) -> dict[str, str]:
    if kind == "Secret":
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def _key_ref(kind: str, ref: Obj, fetch: Fetch) -> str | None:
    obj = fetch(kind, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    data = _decode(kind, obj)
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {obj['metadata']['namespace']}/{ref['name']}")
    return data[ref["key"]]


def _from_sources(container: Obj, fetch: Fetch) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
        obj = fetch(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        for name, value in _decode(kind, obj).items():
            env[source.get("prefix", "") + name] = value
    return env


def build_env(pod: Obj, container: Obj, base: dict[str, str], fetch: Fetch, pod_ip: str,
              host_ip: str) -> dict[str, str]:
    """The full environment of ``container``: ``base`` (PATH, HOSTNAME, the image's ENV) then the spec's."""
    env = dict(base)
    env.update(_from_sources(container, fetch))
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        value: str | None
        if "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], fetch)
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], fetch)
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"])
        else:
            raise ConfigError(f"unsupported valueFrom for {var['name']}: {sorted(source)}")
        if value is not None:
            env[var["name"]] = value
    return env
