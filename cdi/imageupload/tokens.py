"""Where the upload goes and what lets it in: the proxy URL and upload tokens.

A token comes from CDI's aggregated API (``UploadTokenRequest``; the apiserver signs a
5-minute JWT naming the PVC). Fetching one is a seam, :data:`TokenSource`, so tests and
callers with their own issuer can supply tokens; the uploader asks again after a 401, which
is how a long upload outlives its first token.

The proxy URL is found as virtctl finds it: the caller's, else CDIConfig ``config``'s
``spec.uploadProxyURLOverride``, else its ``status.uploadProxyURL`` (what the operator
published), with ``https://`` added when no scheme is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from cdi.api.v1beta1 import GROUP, VERSION

from . import manifests
from .errors import ImageUploadError, VolumeNotUsable

TokenSource = Callable[[str, str], str]
"""``(namespace, pvc) -> token``; called once before the upload and again after a 401."""
CDI_CONFIG = "config"


def api_token_source(api: client.ApiClient) -> TokenSource:
    """Tokens from ``UploadTokenRequest`` (create works through CustomObjectsApi for
    aggregated APIs too: it is a plain POST)."""
    custom = client.CustomObjectsApi(api)

    def token(namespace: str, pvc: str) -> str:
        try:
            answer = custom.create_namespaced_custom_object(
                manifests.UPLOAD_GROUP, VERSION, namespace, "uploadtokenrequests",
                manifests.token_request(namespace, pvc))
        except ApiException as error:
            raise _token_error(error, namespace) from error
        value = (answer.get("status") or {}).get("token") if isinstance(answer, dict) else None
        if not value:
            raise ImageUploadError(f"the UploadTokenRequest for {namespace}/{pvc} came back without a token")
        return str(value)

    return token


def _token_error(error: ApiException, namespace: str) -> ImageUploadError:
    if error.status == 404:
        return ImageUploadError("the cluster does not serve upload.cdi.kubevirt.io UploadTokenRequests: "
                                "is CDI's apiserver installed and its APIService available?")
    if error.status == 403:
        return ImageUploadError(f"not allowed to create uploadtokenrequests in namespace {namespace}: "
                                "ask for RBAC on upload.cdi.kubevirt.io uploadtokenrequests (create)")
    return ImageUploadError(f"cannot get an upload token: {error.status} {error.reason}",
                            permanent=error.status is not None and 400 <= error.status < 500)


def with_scheme(url: str) -> str:
    return (url if "://" in url else f"https://{url}").rstrip("/")


def discover_proxy_url(api: client.ApiClient, given: str | None) -> str:
    """``given``, else CDIConfig's override, else its published URL; VolumeNotUsable if none."""
    if given:
        return with_scheme(given)
    found = _from_cdi_config(_cdi_config(api))
    if not found:
        raise VolumeNotUsable("no upload proxy URL: pass --uploadproxy-url, or set "
                              "spec.uploadProxyURLOverride in CDIConfig config")
    return with_scheme(found)


def _cdi_config(api: client.ApiClient) -> dict[str, Any]:
    try:
        found = client.CustomObjectsApi(api).get_cluster_custom_object(GROUP, VERSION, "cdiconfigs", CDI_CONFIG)
    except ApiException as error:
        if error.status in (403, 404):
            return {}
        raise ImageUploadError(f"cannot read CDIConfig {CDI_CONFIG}: {error.status} {error.reason}",
                               permanent=False) from error
    return found if isinstance(found, dict) else {}


def _from_cdi_config(cdi_config: dict[str, Any]) -> str | None:
    override = (cdi_config.get("spec") or {}).get("uploadProxyURLOverride")
    published = (cdi_config.get("status") or {}).get("uploadProxyURL")
    return str(override or published or "") or None
