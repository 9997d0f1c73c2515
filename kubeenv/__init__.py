"""A real single-node Kubernetes for the tests and for people: the control plane built from the
pinned Kubernetes release (``kubeenv.controlplane``, certificates in ``kubeenv.pki``), a real node
(``kubeenv.node``: containerd, kubelet, kube-proxy, CoreDNS, a CSI driver), our images
(``kubeenv.images``) and the whole together (``kubeenv.cluster``). ``python -m kubeenv up|down``
is what ``scripts/kube-up`` and ``scripts/kube-down`` run.
"""
