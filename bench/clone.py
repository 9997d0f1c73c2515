"""Host-assisted clone throughput: our cloner and upload server against the limit and against
roughly CDI's way, side by side in one run.

The source is a sparse ``disk.img`` (default 4 GiB): half random data in 64 KiB extents at
random places, half holes. Fresh random bytes everywhere (a repeating block would let zstd's
window turn the baseline into a few KiB). Three ways to get it into a target volume
directory on the same filesystem:

- limit: ``cp --sparse=always`` (no network, no TLS, no verification);
- CDI-like: ``tar -cS disk.img | zstd -1 | curl -T -`` over HTTPS to a sink that runs
  ``zstd -d | tar -x`` into the target (CDI's cloner sends tar through snappy; zstd -1 is at
  least as fast and smaller);
- ours: ``python -m cloner`` -> mutual TLS -> ``python -m uploadproxy.server`` in clone mode
  (extents only, zstd when it pays, every segment read back and verified, fsync, exit).

Prints seconds (median of ``--repeat``), MB/s of source size, the ratio to ``cp``, bytes on the
wire (HTTP body) and the peak RSS of the sending and receiving processes (``wait4``). Each
result is checked against the source (sha256). The source stays in the page cache for all
three (so disk read speed is not measured); every way ends with the target on disk (ours
fsyncs before it answers; ``sync FILE`` after ``cp`` and after the tar pipeline, timed).

    .venv/bin/python bench/clone.py [--size-mib 4096] [--repeat 3] [--mixed]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.pki import make_ca  # noqa: E402
from tests.servers.ports import free_port, wait_listening  # noqa: E402
from uploadproxy.paths import CLONE  # noqa: E402

MiB = 1 << 20
CLONER_NAME = "bench-cloner"


def make_source(path: Path, size: int, seed: int = 1, mixed: bool = False) -> int:
    """Half data in 64 KiB extents at random places, half holes; returns data bytes. The data
    is fresh random bytes, or (``mixed``) each extent half random, half text (about 2:1 for
    zstd, like an OS disk)."""
    rng = random.Random(seed)
    extent = 64 * 1024
    slots = size // extent
    chosen = sorted(rng.sample(range(slots), slots // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.truncate(size)
        for slot in chosen:
            out.seek(slot * extent)
            if mixed:
                text = b"".join(b"/usr/lib/x86_64-linux-gnu/lib%d.so.%d\n" % (rng.randrange(999), i)
                                for i in range(1200))[:extent // 2]
                out.write(os.urandom(extent // 2) + text)
            else:
                out.write(os.urandom(extent))
    return len(chosen) * extent


class PeakRss:
    """Peak RSS of a process and its descendants, sampled from ``/proc`` (``VmHWM``, the
    kernel's own high-water mark, per process). ``wait4``'s ``ru_maxrss`` would count the
    Python parent's memory that a child had until its ``exec``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree(self.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))
            time.sleep(0.01)

    def _tree(self, pid: int) -> list[int]:
        pids = [pid]
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    pids += self._tree(int(child))
        except OSError:
            pass
        return pids

    def stop(self) -> tuple[float, float]:
        """(largest single process, sum over the processes) in MiB."""
        self._stop.set()
        self._thread.join()
        values = list(self.peaks.values()) or [0]
        return max(values) / 1024, sum(values) / 1024


def waited(process: subprocess.Popen[bytes], peak: PeakRss, timeout: float = 1800) -> tuple[int, float]:
    """Exit status and peak RSS (MiB, summed over a pipeline's processes) once it exited."""
    try:
        status = process.wait(timeout)
    finally:
        _, total = peak.stop()
    return status, total


def started(args: list[str], **kwargs: Any) -> tuple[subprocess.Popen[bytes], PeakRss]:
    process = subprocess.Popen(args, **kwargs)
    return process, PeakRss(process.pid)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def run_sink(port: int, cert: str, key: str, directory: str) -> None:
    """CDI's receiving side, roughly: the body through ``zstd -d | tar -x`` into ``directory``."""
    from aiohttp import web

    from uploadproxy.tls import server_context

    async def receive(request: web.Request) -> web.Response:
        import asyncio

        unpack = await asyncio.create_subprocess_shell(f"zstd -dc | tar -xf - -C {directory}",
                                                       stdin=asyncio.subprocess.PIPE)
        assert unpack.stdin is not None
        total = 0
        async for data in request.content.iter_any():
            total += len(data)
            unpack.stdin.write(data)
            await unpack.stdin.drain()
        unpack.stdin.close()
        code = await unpack.wait()
        return web.Response(status=200 if code == 0 else 500, text=str(total))

    app = web.Application(client_max_size=1 << 62, handler_args={"read_bufsize": MiB})
    app.router.add_route("*", "/{tail:.*}", receive)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=server_context(Path(cert), Path(key)),
                access_log=None, print=None)


@dataclass
class Way:
    name: str
    seconds: list[float] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)
    sender_rss: list[float] = field(default_factory=list)
    receiver_rss: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        server_ca, client_ca = make_ca(work / "server-ca", "server-ca"), make_ca(work / "client-ca", "client-ca")
        self.server_ca = server_ca.cert
        self.server = server_ca.issue(work / "server", "upload-server")
        self.client_ca = client_ca.cert
        self.cloner = client_ca.issue(work / "cloner", CLONER_NAME, client=True)
        self.source = work / "source" / "disk.img"
        self.target = work / "target"

    def fresh_target(self) -> Path:
        shutil.rmtree(self.target, ignore_errors=True)
        os.sync()
        self.target.mkdir()
        return self.target / "disk.img"

    def cp(self, way: Way) -> None:
        target = self.fresh_target()
        begin = time.perf_counter()
        _, rss = waited(*started(["cp", "--sparse=always", str(self.source), str(target)]))
        subprocess.run(["sync", str(target)], check=True)  # on disk, as ours leaves it
        way.seconds.append(time.perf_counter() - begin)
        way.sender_rss.append(rss)
        way.wire.append(0)

    def cdi_like(self, way: Way) -> None:
        target = self.fresh_target()
        port = free_port()
        sink, sink_peak = started([sys.executable, __file__, "sink", str(port), str(self.server.cert),
                                   str(self.server.key), str(self.target)], cwd=ROOT)
        wait_listening(port)
        counted = self.work / "wire-bytes"
        command = (f"tar -cS -C {self.source.parent} disk.img | zstd -1 -q -c | tee >(wc -c > {counted}) | "
                   f"curl -sS -f -o /dev/null --cacert {self.server_ca} -T - https://127.0.0.1:{port}/upload")
        begin = time.perf_counter()
        status, rss = waited(*started(["bash", "-c", command]))
        way.seconds.append(time.perf_counter() - begin)
        assert status == 0, "the tar | zstd | curl pipeline failed"
        subprocess.run(["sync", str(target)], check=True)
        way.seconds[-1] = time.perf_counter() - begin
        sink.terminate()
        _, sink_rss = waited(sink, sink_peak)
        way.sender_rss.append(rss)
        way.receiver_rss.append(sink_rss)
        way.wire.append(int(counted.read_text().strip() or 0))
        assert target.exists()

    def ours(self, way: Way) -> None:
        target = self.fresh_target()
        port = free_port()
        env = {**os.environ, "TLS_CERT_FILE": str(self.server.cert), "TLS_KEY_FILE": str(self.server.key),
               "CLIENT_CERT_FILE": str(self.client_ca), "CLIENT_NAME": CLONER_NAME, "DESTINATION": str(target),
               "UPLOAD_IMAGE_SIZE": str(self.source.stat().st_size), "FILESYSTEM_OVERHEAD": "0",
               "UPLOAD_SERVER_ADDRESS": "127.0.0.1", "UPLOAD_SERVER_PORT": str(port),
               "TERMINATION_MESSAGE_PATH": str(self.work / "server.termination")}
        server, server_peak = started([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env,
                                      stderr=open(self.work / "server.log", "ab"))
        wait_listening(port)
        cloner_env = {**os.environ, "UPLOAD_URL": f"https://127.0.0.1:{port}{CLONE}",
                      "CLIENT_CERT_FILE": str(self.cloner.cert), "CLIENT_KEY_FILE": str(self.cloner.key),
                      "SERVER_CA_FILE": str(self.server_ca), "SOURCE_VOLUME_MODE": "Filesystem",
                      "CONTENT_TYPE": "kubevirt", "CLONE_SOURCE_DIR": str(self.source.parent),
                      "CLONE_METRICS_PORT": "0", "TERMINATION_MESSAGE_PATH": str(self.work / "cloner.termination")}
        begin = time.perf_counter()
        status, cloner_rss = waited(*started([sys.executable, "-m", "cloner"], cwd=ROOT, env=cloner_env,
                                             stderr=open(self.work / "cloner.log", "ab")))
        server_status, server_rss = waited(server, server_peak)
        way.seconds.append(time.perf_counter() - begin)
        assert status == 0 and server_status == 0, (self.work / "cloner.log").read_text()[-2000:]
        way.sender_rss.append(cloner_rss)
        way.receiver_rss.append(server_rss)
        way.wire.append(int(json.loads((self.work / "cloner.termination").read_text())["bytesSent"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mixed", action="store_true", help="half-compressible data instead of random")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdi-bench-clone-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    try:
        run(Bench(work), args.size_mib * MiB, args.repeat, args.mixed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(bench: Bench, size: int, repeat: int, mixed: bool) -> None:
    print(f"generating a {size // MiB} MiB source in {bench.work} ...", flush=True)
    data = make_source(bench.source, size, mixed=mixed)
    expected = sha256(bench.source)
    ways = [Way("cp --sparse=always (the limit)"), Way("tar -cS | zstd -1 | curl -T (CDI-like)"),
            Way("cloner -> upload server (ours)")]
    steps = [bench.cp, bench.cdi_like, bench.ours]
    for attempt in range(repeat):
        for way, step in zip(ways, steps):
            step(way)
            if attempt == 0:
                assert sha256(bench.target / "disk.img") == expected, f"{way.name}: the target differs"
        print(f"run {attempt + 1}: " + ", ".join(f"{w.seconds[-1]:.1f}s" for w in ways), flush=True)
    report(size, data, ways)


def report(size: int, data: int, ways: list[Way]) -> None:
    limit = statistics.median(ways[0].seconds)
    print(f"source: {size // MiB} MiB, {data // MiB} MiB of data; medians of {len(ways[0].seconds)}")
    print(f"{'way':42} {'s':>6} {'MB/s':>6} {'x cp':>5} {'wire MiB':>9} {'send RSS':>9} {'recv RSS':>9}")
    for way in ways:
        seconds = statistics.median(way.seconds)
        receiver = f"{max(way.receiver_rss):.0f} MiB" if way.receiver_rss else "-"
        print(f"{way.name:42} {seconds:6.1f} {size / seconds / 1e6:6.0f} {seconds / limit:5.2f} "
              f"{statistics.median(way.wire) / MiB:9.0f} {max(way.sender_rss):5.0f} MiB {receiver:>9}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        run_sink(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        main()
