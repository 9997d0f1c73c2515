"""The DataVolume webhooks of the deployed product: cdi-apiserver's pod, registered by deploy/ through
the installer (which filled their caBundle), called by kube-apiserver through the ``cdi-api`` Service.

Behaviours under test:

* a clone DataVolume is stamped with a clone token that verifies with the installed token key's
  public half (what the controller mounts as ``CLONE_TOKEN_PUBLIC_KEY_FILE``);
* a user allowed to create DataVolumes in their namespace (``edit``) but granted nothing in the
  source namespace is refused with CDI's message;
* the spec of a created DataVolume cannot change.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client

from cdi import clonetoken
from kubeenv.controlplane import ControlPlane
from tests.controller.conftest import Installation, wait_for
from uploadproxy import tokens

GROUP, VERSION = "cdi.kubevirt.io", "v1beta1"


def dv(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume", "metadata": {"name": name}, "spec": spec}


def test_deployed_webhooks(installed: Installation, ns: str, custom: client.CustomObjectsApi,
                           token_key: rsa.RSAPrivateKey, control_plane: ControlPlane) -> None:
    spec = {"source": {"pvc": {"namespace": ns, "name": "golden"}}, "storage": {}}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, "datavolumes", dv("clone-1", spec))
    token = created["metadata"]["annotations"][clonetoken.ANNOTATION]
    clonetoken.validate(token, tokens.public_key_pem(token_key), source=("pvc", ns, "golden"), target=(ns, "clone-1"))

    with pytest.raises(client.ApiException) as caught:
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "datavolumes", "clone-1",
                                              {"spec": {"preallocation": True}})
    assert "Cannot update DataVolume Spec" in json.loads(caught.value.body)["message"]

    user = "cdi-py-tests:editor-without-source-rights"
    client.RbacAuthorizationV1Api(custom.api_client).create_namespaced_role_binding(ns, {
        "metadata": {"name": "editor"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                    "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    attrs = {"namespace": ns, "verb": "create", "group": GROUP, "resource": "datavolumes"}
    wait_for("the RoleBinding to take effect", lambda: client.AuthorizationV1Api(custom.api_client)
             .create_subject_access_review({"spec": {"user": user, "resourceAttributes": attrs}}).status.allowed, 30)
    editor = client.ApiClient(custom.api_client.configuration)
    editor.set_default_header("Impersonate-User", user)
    cross = {"source": {"pvc": {"namespace": "default", "name": "golden"}}, "storage": {}}
    with pytest.raises(client.ApiException) as caught:
        client.CustomObjectsApi(editor).create_namespaced_custom_object(GROUP, VERSION, ns, "datavolumes",
                                                                        dv("clone-2", cross))
    assert caught.value.status == 403
    assert json.loads(caught.value.body)["message"] == (
        'admission webhook "datavolume-mutate.cdi.kubevirt.io" denied the request: '
        f"User {user} has insufficient permissions in clone source namespace default")
