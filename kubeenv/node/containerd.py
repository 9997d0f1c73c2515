"""containerd (Debian's 1.6, with runc) configured for this node: its own sockets, state and CNI
directory, so it never touches or reads a system containerd's or buildah's files.

The settings that matter on these machines (see the README's node section):

- ``restrict_oom_score_adj``: root here lacks ``CAP_SYS_RESOURCE``, and runc fails every sandbox
  when asked for a negative ``oom_score_adj``;
- ``SystemdCgroup = false``: PID 1 is not systemd, cgroups are v1 (kubelet uses ``cgroupfs`` too);
- a private CNI ``conf_dir``: containerd takes the first file in its directory, and
  ``/etc/cni/net.d`` may hold buildah's;
- ``sandbox_image`` is our pause image from the loopback registry (there is no registry.k8s.io);
- ``config_path``: ``certs.d/<registry>/hosts.toml`` lets it pull over plain HTTP from loopback;
- ``device_ownership_from_security_context``: block devices owned by the pod's user, not root.
"""

from __future__ import annotations

from kubeenv.node.layout import NodeLayout

CNI_BIN_DIR = "/usr/lib/cni"


def write_config(layout: NodeLayout, pause_image: str, registry: str) -> None:
    """Write ``config.toml`` and the loopback registry's ``hosts.toml``."""
    layout.containerd_config.parent.mkdir(parents=True, exist_ok=True)
    layout.containerd_config.write_text(_config(layout, pause_image))
    hosts = layout.registry_hosts / registry / "hosts.toml"
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text(f'server = "http://{registry}"\n\n[host."http://{registry}"]\n'
                     f'  capabilities = ["pull", "resolve"]\n  skip_verify = true\n')


def argv(layout: NodeLayout) -> list[str]:
    return ["containerd", "--config", str(layout.containerd_config)]


def _config(layout: NodeLayout, pause_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{layout.images}"
state = "{layout.containerd_state}"
# the plugin that installs into /opt/containerd is of no use here
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  # a Block volume's device belongs to the pod's runAsUser/fsGroup, as KubeVirt and CDI ask of
  # containerd (the importer runs as 107 and writes the device)
  device_ownership_from_security_context = true
  enable_selinux = false
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{layout.registry_hosts}"
"""
