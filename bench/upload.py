"""Upload throughput: curl through our proxy and upload server into a volume file, against curl
to a plain TLS sink that only reads and discards, side by side in one run.

The file is sparse-ish but every byte goes on the wire: half random 64 KiB extents, half zeros
(holes in the source file, holes again in the volume). Both sides are ``curl -T`` of the same
file over TLS on loopback:

- sink:   curl -> a tiny aiohttp HTTPS server that reads the body and throws it away;
- upload: curl -> ``python -m uploadproxy.proxy`` (token check, mTLS) ->
          ``python -m uploadproxy.server`` -> the import pipeline -> ``disk.img``,
          with each data path: ``UPLOADPROXY_DATA_PATH=nginx`` (nginx relays, asking the proxy
          process about each request with ``auth_request``) and ``python`` (the process relays).

The upload uses the async path, answered once every byte was received and written (the fsync
of the commit follows; its time is printed separately as "committed"). Prints, per path, MB/s,
the ratio to the sink (the goal: >= 0.8 through the nginx data path) and the CPU seconds per GiB
of each process (curl; the relay: proxy process with its nginx, or the bare nginx; the server or
sink), which show where the time goes on a host whose cores they share, and the proxy's peak RSS.
Machines are noisy: compare the rows of one run, not absolute numbers.

``--hops`` adds, per hop, the same upload without our proxy (curl with the proxy's client
certificate straight to the upload server: the server hop alone) and through nginx as the
proxy (a TLS relay written in C, terminating the client's TLS and re-encrypting with the
client certificate, request buffering off): our proxy's cost is the gap to nginx's. It also
times nginx in the upload server's place (WebDAV PUT to a file: TLS and the write in C), alone
and behind the nginx relay, the whole path with no Python on it.

    .venv/bin/python bench/upload.py [--size-mib 4096] [--repeat 1] [--verify] [--client] [--hops]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import make_disk  # noqa: E402
from tests.servers.pki import make_ca  # noqa: E402
from tests.servers.ports import free_port, wait_listening  # noqa: E402
from uploadproxy import tokens  # noqa: E402
from uploadproxy.settings import PROXY_CLIENT_NAME  # noqa: E402

MiB = 1 << 20


def run_sink(port: int, cert: str, key: str) -> None:
    """The baseline server: read every byte of the body, keep none."""
    from aiohttp import web

    from uploadproxy.tls import server_context

    async def discard(request: web.Request) -> web.Response:
        total = 0
        async for data in request.content.iter_any():
            total += len(data)
        return web.Response(text=str(total))

    app = web.Application(client_max_size=1 << 62, handler_args={"read_bufsize": MiB})
    app.router.add_route("*", "/{tail:.*}", discard)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=server_context(Path(cert), Path(key)),
                access_log=None, print=None)


class Pki:
    def __init__(self, directory: Path) -> None:
        ca = make_ca(directory / "ca")
        self.ca = ca.cert
        self.server = ca.issue(directory / "server", "upload-server")
        self.proxy = ca.issue(directory / "proxy", "upload-proxy")
        self.client = ca.issue(directory / "client", PROXY_CLIENT_NAME, client=True)
        self.key = tokens.generate_key()


def curl(url: str, file: Path, ca: Path, *headers: str, cert: tuple[Path, Path] | None = None,
         method: str = "POST") -> float:
    args = ["curl", "-sS", "-f", "-o", "/dev/null", "--cacert", str(ca), "-X", method, "-T", str(file)]
    if cert:
        args += ["--cert", str(cert[0]), "--key", str(cert[1])]
    for header in headers:
        args += ["-H", header]
    started = time.perf_counter()
    subprocess.run([*args, url], check=True)
    return time.perf_counter() - started


def wait_rss(process: subprocess.Popen[bytes], timeout: float = 600) -> tuple[int, float]:
    """Exit status and peak RSS (MiB) of a child, once it exited."""
    status, rss, _ = wait_usage(process, timeout)
    return status, rss


def wait_usage(process: subprocess.Popen[bytes], timeout: float = 600) -> tuple[int, float, float]:
    """Exit status, peak RSS (MiB) and CPU seconds (user + system, with its children) of a child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"process {process.args} did not exit")


def tree_cpu(pid: int | None) -> float:
    """CPU seconds so far of a running process and its descendants (nginx's workers)."""
    if pid is None:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
        cpu[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(cpu.get(p, 0.0) for p in tree)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


SERVER_RSS: list[float] = []
"""Peak RSS (MiB) of every upload server run."""
CPU: dict[str, list[tuple[float, float, float]]] = {}
"""Per path: CPU seconds of curl, of the relay (proxy process and its nginx, or the nginx
reference), of the server (upload server, or the sink), one tuple per run."""


def measured(name: str, upload: Callable[[], float], relay: int | None = None,
             server: subprocess.Popen[bytes] | None = None, sink: int | None = None) -> float:
    """``upload()``'s seconds; its CPU by process goes to :data:`CPU`. ``server`` is waited for."""
    curl0, relay0, sink0 = children_cpu(), tree_cpu(relay), tree_cpu(sink)
    elapsed = upload()
    curl_cpu, relay_cpu = children_cpu() - curl0, tree_cpu(relay) - relay0
    server_cpu = tree_cpu(sink) - sink0
    if server is not None:
        status, server_rss, server_cpu = wait_usage(server)
        assert status == 0, f"the upload server exited with {status}"
        SERVER_RSS.append(server_rss)
    CPU.setdefault(name, []).append((curl_cpu, relay_cpu, server_cpu))
    return elapsed


def sha256(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while length > 0 and (block := file.read(min(length, 8 * MiB))):
            digest.update(block)
            length -= len(block)
    return digest.hexdigest()


class Bench:
    def __init__(self, work: Path, pki: Pki) -> None:
        self.work, self.pki = work, pki
        self.server_port = free_port()
        self.children: list[subprocess.Popen[bytes]] = []
        """Every upload server started, killed at the end if a failed run left one waiting."""

    def start_proxy(self, data_path: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {**os.environ, "APISERVER_PUBLIC_KEY": tokens.public_key_pem(self.pki.key).decode(),
               "TLS_CERT_FILE": str(self.pki.proxy.cert), "TLS_KEY_FILE": str(self.pki.proxy.key),
               "CLIENT_CERT_FILE": str(self.pki.client.cert), "CLIENT_KEY_FILE": str(self.pki.client.key),
               "SERVER_CA_FILE": str(self.pki.ca), "UPLOADPROXY_ADDRESS": "127.0.0.1", "UPLOADPROXY_PORT": str(port),
               "UPLOAD_SERVERS": f"bench/disk=https://localhost:{self.server_port}",
               "UPLOADPROXY_DATA_PATH": data_path}
        process = subprocess.Popen([sys.executable, "-m", "uploadproxy.proxy"], cwd=ROOT, env=env,
                                   stderr=open(self.work / "proxy.log", "ab"))
        wait_listening(port)
        return process, port

    def start_server(self, volume: Path) -> subprocess.Popen[bytes]:
        volume.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TLS_CERT_FILE": str(self.pki.server.cert), "TLS_KEY_FILE": str(self.pki.server.key),
               "CLIENT_CERT_FILE": str(self.pki.ca), "CLIENT_NAME": PROXY_CLIENT_NAME,
               "DESTINATION": str(volume / "disk.img"), "UPLOAD_SERVER_ADDRESS": "127.0.0.1",
               "UPLOAD_SERVER_PORT": str(self.server_port), "SCRATCH_DIR": str(self.work / "no-scratch"),
               "TERMINATION_MESSAGE_PATH": str(self.work / "termination-log")}
        process = subprocess.Popen([sys.executable, "-m", "uploadproxy.server"], cwd=ROOT, env=env,
                                   stderr=open(self.work / "server.log", "ab"))
        self.children.append(process)
        wait_listening(self.server_port)
        return process

    def start_nginx_relay(self, upstream: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
        """nginx in our proxy's place: TLS in, mutual TLS out to the upload server (or to
        ``upstream``), unbuffered."""
        port, prefix = free_port(), self.work / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        pki = self.pki
        conf = f"""
daemon off; master_process off; worker_processes 1; pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  server {{
    listen 127.0.0.1:{port} ssl; ssl_certificate {pki.proxy.cert}; ssl_certificate_key {pki.proxy.key};
    client_max_body_size 0; proxy_request_buffering off; proxy_buffering off; proxy_http_version 1.1;
    location / {{
      proxy_pass https://127.0.0.1:{upstream or self.server_port};
      proxy_ssl_certificate {pki.client.cert}; proxy_ssl_certificate_key {pki.client.key};
      proxy_ssl_trusted_certificate {pki.ca}; proxy_ssl_verify on; proxy_ssl_name localhost;
      proxy_read_timeout 1h; proxy_send_timeout 1h;
    }}
  }}
}}
"""
        (prefix / "nginx.conf").write_text(conf)
        process = subprocess.Popen(["nginx", "-c", str(prefix / "nginx.conf"), "-p", str(prefix)],
                                   stderr=open(self.work / "nginx.log", "ab"))
        wait_listening(port)
        return process, port

    def start_nginx_file_server(self, volume: Path) -> tuple[subprocess.Popen[bytes], int]:
        """nginx in the upload server's place: TLS in, the body written to a file under
        ``volume`` (WebDAV PUT: a temporary file, renamed when complete). A reference for the
        server hop written in C; it writes every byte, zeros included, and does not fsync."""
        port, prefix = free_port(), self.work / "nginx-file"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (volume / "tmp").mkdir(parents=True, exist_ok=True)
        conf = f"""
daemon off; master_process off; worker_processes 1; pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port} ssl; ssl_certificate {self.pki.server.cert}; ssl_certificate_key {self.pki.server.key};
    client_max_body_size 0; client_body_buffer_size 2m; client_body_temp_path {volume}/tmp;
    location / {{ root {volume}; dav_methods PUT; create_full_put_path on; }}
  }}
}}
"""
        (prefix / "nginx.conf").write_text(conf)
        process = subprocess.Popen(["nginx", "-c", str(prefix / "nginx.conf"), "-p", str(prefix)],
                                   stderr=open(self.work / "nginx-file.log", "ab"))
        wait_listening(port)
        return process, port

    def start_sink(self) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        process = subprocess.Popen([sys.executable, __file__, "sink", str(port), str(self.pki.server.cert),
                                    str(self.pki.server.key)], cwd=ROOT)
        wait_listening(port)
        return process, port


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--verify", action="store_true", help="compare the volume with the file (slow)")
    parser.add_argument("--client", action="store_true", help="also time the Python client library")
    parser.add_argument("--hops", action="store_true", help="also time the server alone and nginx as the proxy")
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="cdi-bench-upload-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    try:
        run(work, size, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


SINK = "curl -T -> TLS sink (aiohttp, discard)"
NGINX_PATH = "curl -T -> proxy (nginx data path) -> server"
PYTHON_PATH = "curl -T -> proxy (python data path) -> server"
DIRECT = "curl -T -> upload server (no proxy)"
NGINX_RELAY = "curl -T -> nginx relay -> upload server"
NGINX_FILE = "curl -T -> nginx writing a file (C server hop)"
ALL_C = "curl -T -> nginx relay -> nginx file (all C)"


def run(work: Path, size: int, args: argparse.Namespace) -> None:
    print(f"generating a {size // MiB} MiB file in {work} ...", flush=True)
    source = work / "disk.raw"
    make_disk(source, size)
    bench = Bench(work, Pki(work / "pki"))
    token = tokens.issue(bench.pki.key, "bench", "disk", lifetime=24 * 3600)
    sink, sink_port = bench.start_sink()
    proxy, proxy_port = bench.start_proxy("nginx")
    python_proxy, python_port = bench.start_proxy("python")
    times: dict[str, list[float]] = {}
    committed_times, client_times = [], []
    try:
        for attempt in range(args.repeat):
            times.setdefault(SINK, []).append(measured(SINK, lambda: curl(
                f"https://127.0.0.1:{sink_port}/sink", source, bench.pki.ca), sink=sink.pid))
            started = time.perf_counter()
            times.setdefault(NGINX_PATH, []).append(time_upload(bench, work, NGINX_PATH, proxy, proxy_port, token, source))
            committed_times.append(time.perf_counter() - started)
            if args.verify and attempt == 0:
                assert sha256(work / "volume" / "disk.img", size) == sha256(source, size), "volume differs"
                print("verified: the volume holds the file", flush=True)
            times.setdefault(PYTHON_PATH, []).append(
                time_upload(bench, work, PYTHON_PATH, python_proxy, python_port, token, source))
            if args.client:
                client_times.append(time_client(bench, work, proxy_port, token, source))
            if args.hops:
                time_hops(bench, work, source, times)
    finally:
        for child in bench.children:
            if child.returncode is None and child.poll() is None:
                child.kill()
        sink.terminate()
        sink.wait(10)
        python_proxy.terminate()
        wait_rss(python_proxy)
        proxy.terminate()
        _, proxy_rss = wait_rss(proxy)
    report(size, times, committed_times, client_times)
    print(f"peak RSS: proxy (nginx data path) {proxy_rss:.0f} MiB, upload server "
          f"{max(SERVER_RSS, default=0):.0f} MiB (the largest of {len(SERVER_RSS)} runs)", flush=True)


def time_upload(bench: Bench, work: Path, name: str, proxy: subprocess.Popen[bytes], proxy_port: int, token: str,
                source: Path) -> float:
    drop(work / "volume")
    server = bench.start_server(work / "volume")
    return measured(name, lambda: curl(f"https://127.0.0.1:{proxy_port}/v1beta1/upload-async", source, bench.pki.ca,
                                       f"Authorization: Bearer {token}"), relay=proxy.pid, server=server)


def time_client(bench: Bench, work: Path, proxy_port: int, token: str, source: Path) -> float:
    from uploadproxy.client import upload

    drop(work / "volume")
    server = bench.start_server(work / "volume")
    started = time.perf_counter()
    upload(f"https://127.0.0.1:{proxy_port}", token, source, ca=bench.pki.ca)
    elapsed = time.perf_counter() - started
    wait_rss(server)
    return elapsed


def time_hops(bench: Bench, work: Path, source: Path, times: dict[str, list[float]]) -> None:
    """The server hop alone (curl presents the proxy's client certificate), then nginx as the
    proxy; each into a fresh volume, timed to the answer like the upload above."""
    drop(work / "volume")
    server = bench.start_server(work / "volume")
    times.setdefault(DIRECT, []).append(measured(DIRECT, lambda: curl(
        f"https://127.0.0.1:{bench.server_port}/v1beta1/upload-async", source, bench.pki.ca,
        cert=(bench.pki.client.cert, bench.pki.client.key)), server=server))
    drop(work / "volume")
    server = bench.start_server(work / "volume")
    nginx, port = bench.start_nginx_relay()
    try:
        times.setdefault(NGINX_RELAY, []).append(measured(NGINX_RELAY, lambda: curl(
            f"https://127.0.0.1:{port}/v1beta1/upload-async", source, bench.pki.ca), relay=nginx.pid, server=server))
    finally:
        nginx.terminate()
        nginx.wait(10)
    time_c_references(bench, work, source, times)


def time_c_references(bench: Bench, work: Path, source: Path, times: dict[str, list[float]]) -> None:
    """The same uploads with nginx in the upload server's place (a TLS server in C that writes
    the body to a file), alone and behind the nginx relay: what the hops cost when no Python
    is on the data path."""
    for name, relayed in ((ALL_C, True), (NGINX_FILE, False)):
        drop(work / "volume")
        server, server_port = bench.start_nginx_file_server(work / "volume")
        relay, port = bench.start_nginx_relay(server_port) if relayed else (None, server_port)
        try:
            times.setdefault(name, []).append(measured(name, lambda: curl(
                f"https://127.0.0.1:{port}/v1beta1/disk.img", source, bench.pki.ca, method="PUT"),
                relay=relay.pid if relay else None, sink=server.pid))
        finally:
            for process in (relay, server):
                if process is not None:
                    process.terminate()
                    process.wait(10)


def report(size: int, times: dict[str, list[float]], committed: list[float], client: list[float]) -> None:
    """MB/s (median run), the ratio to the sink, and CPU seconds per GiB by process (medians)."""
    def mbs(runs: list[float]) -> float:
        return size / statistics.median(runs) / 1e6

    def per_gib(name: str, index: int) -> float:
        return statistics.median(run[index] for run in CPU[name]) * (1 << 30) / size

    sink = mbs(times[SINK])
    print(f"{'path':46} {'MB/s':>6} {'x sink':>6}   CPU s/GiB: {'curl':>5} {'relay':>5} {'server':>6}")
    for name, runs in times.items():
        print(f"{name:46} {mbs(runs):6.0f} {mbs(runs) / sink:6.2f}              "
              f"{per_gib(name, 0):5.2f} {per_gib(name, 1):5.2f} {per_gib(name, 2):6.2f}")
    print(f"{'  nginx data path until committed (fsync, exit)':46} {mbs(committed):6.0f}")
    if client:
        print(f"{'uploadproxy.client (resumable) -> nginx path':46} {mbs(client):6.0f}")
    print(f"ratio nginx data path/sink: {mbs(times[NGINX_PATH]) / sink:.2f} (goal >= 0.8); "
          f"to the server alone: {mbs(times[NGINX_PATH]) / mbs(times.get(DIRECT, times[NGINX_PATH])):.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        run_sink(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
