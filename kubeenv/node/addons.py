"""The cluster objects a node needs beyond kubelet: CoreDNS, and the apiserver's right to use
kubelet's API (logs, exec, port-forward).

CoreDNS runs as a Deployment from our own image (there is no registry.k8s.io here), behind the
``kube-dns`` Service at the IP kubelet gives pods as their nameserver. It listens on 1053 so it
needs no capability under the restricted profile; the Service maps 53 to it.
"""

from __future__ import annotations

from typing import Any

from kubeenv.node.layout import CLUSTER_DOMAIN, DNS_SERVICE_IP
from kubeenv.pki import KUBELET_CLIENT_USER

Manifest = dict[str, Any]
DNS_PORT = 1053

COREFILE = f""".:{DNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""
"""No ``forward`` to the host's resolver: pods here have nothing to look up outside the cluster, and
that resolver answered for a Service name CoreDNS did not serve yet (``cdi-upload-<pvc>.<ns>.svc``,
a second after its creation, once the search list ran out) with the address of this machine's
intercepting proxy, so the upload proxy met that proxy's certificate instead of a "not found" it
would retry."""


def kubelet_api_access() -> list[Manifest]:
    """What kubeadm grants: the apiserver's kubelet client may use every kubelet API."""
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "kube-apiserver-kubelet-api-admin"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "system:kubelet-api-admin"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}]}]


def coredns(image: str) -> list[Manifest]:
    meta = {"name": "coredns", "namespace": "kube-system"}
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", **meta}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": _coredns_pod(image)}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                              "labels": labels},
         "spec": {"clusterIP": DNS_SERVICE_IP, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": DNS_PORT},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": DNS_PORT}]}},
    ]


def _coredns_pod(image: str) -> Manifest:
    return {
        "serviceAccountName": "coredns",
        "dnsPolicy": "Default",
        "priorityClassName": "system-cluster-critical",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
        "containers": [{
            "name": "coredns", "image": image, "imagePullPolicy": "IfNotPresent",
            "args": ["-conf", "/etc/coredns/Corefile"],
            "ports": [{"containerPort": DNS_PORT, "protocol": "UDP"}, {"containerPort": DNS_PORT, "protocol": "TCP"}],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "50m", "memory": "32Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True},
        }],
    }
