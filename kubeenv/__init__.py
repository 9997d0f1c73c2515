"""A real Kubernetes environment for the tests and for people: the control plane built from the
pinned Kubernetes release (``kubeenv.controlplane``), its certificates (``kubeenv.pki``), and the
node agent that stands in for a kubelet (``kubeenv.nodeagent``). ``python -m kubeenv up|down``
is what ``scripts/kube-up`` and ``scripts/kube-down`` run.
"""
