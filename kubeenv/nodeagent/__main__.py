"""``python -m kubeenv.nodeagent --kubeconfig K --workdir D [--node-name N]``: run until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from kubeenv.nodeagent.agent import NodeAgent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeenv.nodeagent", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="pods, volumes and logs live here")
    parser.add_argument("--node-name", default="cdi-test-node")
    parser.add_argument("--pod-subnet", help="a /24 for pods (default: the first free 10.244.N.0/24)")
    parser.add_argument("--bridge", help="host bridge name (default: kubeenvN)")
    parser.add_argument("--keep-node", action="store_true",
                        help="mark the Node NotReady on exit instead of deleting it")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = NodeAgent(args.kubeconfig, args.workdir, args.node_name, pod_subnet=args.pod_subnet,
                      bridge=args.bridge, delete_node_on_stop=not args.keep_node).start()
    print(f"node {args.node_name} ready; node IP {agent.node_ip}; pods in {agent.pod_subnet}", flush=True)
    try:
        stop.wait()
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
