"""Parallel ranged reads against one stream, side by side in one run, on real nginx.

Serves a file of random bytes (nothing to skip: the transfer is all that is measured) from
nginx on loopback, three ways: a port with ``limit_rate`` (per request, and nginx lets each
request send a second's worth at once, so ranges smaller than that are barely limited), the
same rate shaped steadily per connection from the first byte (:class:`bench.throttle.Throttle`
in front of nginx: a per-flow cap as CDNs and object stores apply), and unthrottled. Times,
medians of ``--repeat``:

- ``curl -o FILE && sync FILE``                 (one connection, what a user would run)
- an import with ``connections=1``              (our single resumable stream, as before)
- an import with ``connections=N`` (default 4)  (parallel ranged reads)

and prints MB/s and the ratios (ours / curl; parallel / single). The imports run in a child
process through ``importer.pipeline.run_import`` (fsynced, like the ``sync`` of curl's file).

    .venv/bin/python bench/ranged.py [--size-mib 256] [--rate 16] [--repeat 3] [--connections 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import drop, timed  # noqa: E402
from bench.throttle import Throttle  # noqa: E402
from tests.servers.nginx import start_nginx  # noqa: E402
from tests.servers.pki import make_ca  # noqa: E402

IMPORT = ("import sys; sys.path.insert(0, sys.argv[4]);"
          "from importer.pipeline import run_import; from importer.sources import SourceOptions, open_source;"
          "from importer.target import TargetSpec; from pathlib import Path;"
          "run_import(open_source(sys.argv[1], SourceOptions(connections=int(sys.argv[3]))), TargetSpec(Path(sys.argv[2])))")


def median_mbs(command: list[str] | str, size: int, repeat: int, out: Path, shell: bool = False) -> float:
    times = []
    for _ in range(repeat):
        drop(out)
        seconds, _ = timed(command, shell=shell)
        times.append(seconds)
    return size / statistics.median(times) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rate", type=int, default=16, help="MiB/s per connection (or per request)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="cdi-ranged-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    (work / "www").mkdir()
    with open(work / "www" / "disk.raw", "wb") as file:
        for _ in range(args.size_mib):
            file.write(os.urandom(1 << 20))
    nginx = start_nginx(work / "www", work / "nginx", make_ca(work / "ca"), rate=f"{args.rate}m")
    steady = Throttle(int(nginx.http.rsplit(":", 1)[1]), args.rate << 20)
    out = work / "out.img"
    print(f"{'server':26} {'curl MB/s':>10} {'1 conn MB/s':>12} {f'{args.connections} conn MB/s':>12} "
          f"{'vs curl':>8} {'vs 1 conn':>10}")
    try:
        servers = ((f"nginx limit_rate {args.rate}m", nginx.slow),
                   (f"steady {args.rate} MiB/s/conn", f"http://127.0.0.1:{steady.port}"), ("unthrottled", nginx.http))
        for label, base in servers:
            url = f"{base}/disk.raw"
            curl = median_mbs(f"curl -sf -o {out} {url} && sync {out}", size, args.repeat, out, shell=True)
            ours = [median_mbs([sys.executable, "-c", IMPORT, url, str(out), str(n), str(ROOT)], size, args.repeat, out)
                    for n in (1, args.connections)]
            print(f"{label:26} {curl:10.0f} {ours[0]:12.0f} {ours[1]:12.0f} {ours[1] / curl:8.2f} "
                  f"{ours[1] / ours[0]:10.2f}", flush=True)
    finally:
        steady.stop()
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
