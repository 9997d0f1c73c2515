"""A node agent that stands in for kubelet, for tests only.

It registers a Node and keeps it Ready, binds pods nobody schedules, provisions local volumes for
two StorageClasses, and runs each pod's containers as local processes that cannot tell they are
not in a pod: per container a mount namespace over an overlay of the host's ``/`` (volumes at
their ``mountPath``, block devices at their ``devicePath``, the termination message file at
``terminationMessagePath``), per pod a network namespace with its own IP on a host bridge, and
UTS, IPC and PID namespaces (the command is PID 1). It reports pod phase, conditions and
container states, and honours restart policies with back-off.

    agent = NodeAgent(kubeconfig, workdir).start()   # or: python -m kubeenv.nodeagent --kubeconfig K --workdir D
    ...                                               # pods reach the host at agent.node_ip
    agent.stop()                                      # kills every pod process, removes namespaces and the Node

Parts, one module each: ``node`` (Node, heartbeat, Lease), ``binder`` (pod binding), ``storage``
and ``backing`` (provisioner; directories, sparse files, loop devices), ``network`` (bridge,
netns, veth), ``volumes`` (a pod's volumes as host paths), ``envvars`` (the environment),
``images`` (image -> local command table), ``launch`` (the in-namespace launcher), ``container``
(one run), ``runtime`` (restart policy), ``probes``, ``status`` (pod status), ``podworker``
(one pod's life), ``pods`` (which pods run here), ``kube`` (API plumbing, informer).

Limits: needs root and a Linux kernel with overlayfs; no image pulls (see ``images``); processes
run as root whatever ``securityContext`` says; no resource limits, cgroups or eviction; no
``kubectl logs``/``exec``/port-forward (read logs with :meth:`NodeAgent.logs`); no Services, no
kube-proxy, no DNS; pods reach the host and each other but nothing beyond (no NAT); Secret and
ConfigMap volumes are not refreshed; finalizers on pods are left to their owners.
"""

from kubeenv.nodeagent.agent import NodeAgent
from kubeenv.nodeagent.binder import SCHEDULER_NAME
from kubeenv.nodeagent.storage import CLASS_IMMEDIATE, CLASS_WFFC, PROVISIONER

__all__ = ["NodeAgent", "CLASS_IMMEDIATE", "CLASS_WFFC", "PROVISIONER", "SCHEDULER_NAME"]
