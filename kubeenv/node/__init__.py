"""The test cluster's real node: containerd, kubelet, kube-proxy, CoreDNS and a CSI driver.

Parts, one module each: ``layout`` (paths and fixed addresses), ``containerd``, ``cni``,
``kubelet``, ``proxy`` (kube-proxy), ``addons`` (CoreDNS, RBAC the node needs), ``registry`` (the
loopback image registry), ``csi`` (csi-driver-host-path and its sidecars), ``teardown`` (what a
stopped node leaves on the host, and removing it), ``node`` (start/stop in order).
"""

from kubeenv.node.layout import NODE_NAME
from kubeenv.node.node import Node, NodeError

__all__ = ["NODE_NAME", "Node", "NodeError"]
