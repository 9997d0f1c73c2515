"""``python -m cdi.install``: install (or update) cdi-py in the cluster of a kubeconfig.

    python -m cdi.install --image controller=REG/cdi-py/controller:TAG \\
        --image importer=REG/cdi-py/importer:TAG --image uploadserver=REG/cdi-py/uploadserver:TAG \\
        [--uploadproxy-nodeport 31443 --uploadproxy-name 192.0.2.2] [--uploadproxy-url URL] \\
        [--ca-out proxy-ca.crt] [--controller-env K=V ...] [--kubeconfig F] [--wait 300]

Applies ``crds/`` and ``deploy/`` (server-side apply, so running it again updates in place),
creates the Secrets the components need unless they exist, fills the APIService's ``caBundle``,
and waits until the three Deployments are available and the upload token API is served.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdi.install.customize import COMPONENTS, Options
from cdi.install.installer import Installer, InstallError


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"cdi.install: {what} wants NAME=VALUE, got {value!r}")
        out[key] = rest
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdi.install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--image", action="append", default=[], metavar="COMPONENT=REF",
                        help=f"one per component: {', '.join(COMPONENTS)}")
    parser.add_argument("--uploadproxy-nodeport", type=int, help="expose the upload proxy on this NodePort")
    parser.add_argument("--uploadproxy-name", action="append", default=[], metavar="NAME_OR_IP",
                        help="more names for the proxy's certificate (what clients dial)")
    parser.add_argument("--uploadproxy-url", help="publish this proxy URL in CDIConfig (uploadProxyURLOverride)")
    parser.add_argument("--controller-env", action="append", default=[], metavar="K=V")
    parser.add_argument("--ca-out", type=Path, help="write the CA that clients trust for the proxy here")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the Deployments (0: no wait)")
    args = parser.parse_args(argv)
    images = _pairs(args.image, "--image")
    missing = [c for c in COMPONENTS if c not in images]
    if missing:
        parser.error(f"--image missing for {', '.join(missing)}")
    options = Options(images, nodeport=args.uploadproxy_nodeport, proxy_url=args.uploadproxy_url,
                      controller_env=_pairs(args.controller_env, "--controller-env"))
    try:
        installer = Installer.connect(args.kubeconfig)
        proxy_ca = installer.install(options, tuple(args.uploadproxy_name), wait=args.wait)
    except InstallError as error:
        print(f"cdi.install: {error}", file=sys.stderr)
        return 1
    if args.ca_out:
        args.ca_out.write_bytes(proxy_ca)
    print("cdi.install: installed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
