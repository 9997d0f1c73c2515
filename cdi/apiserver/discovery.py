"""What this server serves, in the shapes API discovery expects.

kube-apiserver's aggregator first asks ``GET /apis`` for *aggregated* discovery; a plain
``APIGroupList`` answer makes it fall back to the legacy documents, ``/apis/<group>/<version>``
(an ``APIResourceList``), which it then merges into its own ``/apis`` for kubectl. Its
availability check (``APIService`` condition ``Available``) is a GET of that same version path.
The resource is create-only (verbs ``["create"]``), as CDI's is; short names ``utr``/``utrs``
are CDI's too.
"""

from __future__ import annotations

from typing import Any

GROUP = "upload.cdi.kubevirt.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
RESOURCE = "uploadtokenrequests"
SINGULAR = "uploadtokenrequest"
KIND = "UploadTokenRequest"
SHORT_NAMES = ["utr", "utrs"]
VERBS = ["create"]

GROUP_PATH = f"/apis/{GROUP}"
VERSION_PATH = f"{GROUP_PATH}/{VERSION}"
COLLECTION_PATH = VERSION_PATH + "/namespaces/{namespace}/" + RESOURCE


def api_group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version],
            "preferredVersion": version}


def api_group_list() -> dict[str, Any]:
    group = api_group()
    del group["kind"], group["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def api_resource_list() -> dict[str, Any]:
    resource = {"name": RESOURCE, "singularName": SINGULAR, "namespaced": True, "group": GROUP,
                "version": VERSION, "kind": KIND, "verbs": list(VERBS), "shortNames": list(SHORT_NAMES)}
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": [resource]}


def root_paths() -> dict[str, Any]:
    """``GET /``: the paths this server answers, as every Kubernetes API server lists them."""
    paths = ["/apis", "/apis/", GROUP_PATH, VERSION_PATH, "/healthz", "/readyz", "/openapi/v2", "/openapi/v3"]
    return {"paths": sorted(paths)}
