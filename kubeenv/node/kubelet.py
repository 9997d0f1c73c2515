"""kubelet's configuration for this machine kind, and its command line.

The settings that are not kubelet's defaults, and why:

- ``failCgroupV1: false``, ``cgroupDriver: cgroupfs``: a cgroup v1 host whose PID 1 is not systemd;
- ``failSwapOn: false`` and relaxed ``evictionHard``: the disk and memory are shared with
  everything else on the machine, and an eviction in the middle of a test explains nothing;
- ``imageGCHighThresholdPercent: 100``: never garbage-collect our images mid-run;
- webhook authentication and authorization with the cluster CA for x509: ``kubectl logs/exec``
  come from the apiserver's kubelet-client certificate and are authorized by SubjectAccessReview,
  as on any real cluster (no anonymous access);
- ``clusterDNS`` is CoreDNS's Service IP.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kubeenv.node.layout import (CLUSTER_DOMAIN, DNS_SERVICE_IP, KUBELET_HEALTHZ_PORT, KUBELET_PORT,
                                 POD_CIDR, NodeLayout)
from kubeenv.pki import NodeCerts


def write_config(layout: NodeLayout, ca: Path, certs: NodeCerts) -> None:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(certs.serving.cert),
        "tlsPrivateKeyFile": str(certs.serving.key),
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "podCIDR": POD_CIDR,
        "maxPods": 250,
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "registerNode": True,
        "enableServer": True,
        "localStorageCapacityIsolation": True,
        "containerLogMaxSize": "10Mi",
        "shutdownGracePeriod": "0s",
    }
    layout.kubelet_config.write_text(yaml.safe_dump(config))


def argv(binary: Path, layout: NodeLayout, kubeconfig: Path, node: str, node_ip: str) -> list[str]:
    return [str(binary), f"--config={layout.kubelet_config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={layout.kubelet_dir}", f"--hostname-override={node}", f"--node-ip={node_ip}",
            f"--cert-dir={layout.pki}", "--v=1"]
