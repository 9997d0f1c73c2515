"""``deploy/`` as this installation needs it: our images, a NodePort for the proxy, the
APIService's and the DataVolume webhooks' CA, the proxy's URL in CDIConfig, extra controller environment.

Pure functions over the manifests (dicts as read from the YAML), so what the installer changes is
easy to test and to show (``--print``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

IMAGE_ENV = {"IMPORTER_IMAGE": "importer", "UPLOADSERVER_IMAGE": "uploadserver"}
COMPONENTS = ("controller", "importer", "uploadserver")
WEBHOOK_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")


@dataclass(frozen=True)
class Options:
    """What the user asked for; ``images`` maps component -> image reference."""

    images: dict[str, str]
    api_ca: bytes = b""
    nodeport: int | None = None
    proxy_url: str | None = None
    controller_env: dict[str, str] = field(default_factory=dict)


def customize(manifest: Manifest, options: Options) -> Manifest:
    kind, name = manifest.get("kind"), manifest.get("metadata", {}).get("name")
    if kind == "Deployment":
        _images(manifest, options)
        if name == "cdi-py-controller":
            _controller_env(manifest, options.controller_env)
    elif kind == "Service" and name == "cdi-uploadproxy" and options.nodeport is not None:
        manifest["spec"]["type"] = "NodePort"
        for port in manifest["spec"]["ports"]:
            port["nodePort"] = options.nodeport
    elif kind == "APIService" and options.api_ca:
        manifest["spec"]["caBundle"] = base64.b64encode(options.api_ca).decode()
    elif kind in WEBHOOK_KINDS and options.api_ca:
        for hook in manifest["webhooks"]:
            hook["clientConfig"]["caBundle"] = base64.b64encode(options.api_ca).decode()
    elif kind == "CDIConfig" and options.proxy_url:
        manifest.setdefault("spec", {})["uploadProxyURLOverride"] = options.proxy_url
    return manifest


def _containers(manifest: Manifest) -> list[dict[str, Any]]:
    return list(manifest["spec"]["template"]["spec"]["containers"])


def _images(manifest: Manifest, options: Options) -> None:
    for container in _containers(manifest):
        container["image"] = options.images["controller"]
        for env in container.get("env", []):
            if env["name"] in IMAGE_ENV:
                env["value"] = options.images[IMAGE_ENV[env["name"]]]


def _controller_env(manifest: Manifest, extra: dict[str, str]) -> None:
    for container in _containers(manifest):
        env = container.setdefault("env", [])
        names = {e["name"]: e for e in env}
        for key, value in extra.items():
            if key in names:
                names[key].clear()
                names[key].update({"name": key, "value": value})
            else:
                env.append({"name": key, "value": value})
