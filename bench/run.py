"""Import throughput against the tools a user would otherwise use, side by side in one run.

Serves one generated disk (half random 64 KiB extents, half holes, like the environment's
baseline) from nginx on loopback in several forms, and times for each:

- raw:        ``curl -o``                     vs ``cdi import`` (sparse, no qemu-img)
- raw.zst:    ``curl | zstd -d > file``       vs ``cdi import``
- raw.zst-cdi: CDI's path for it: ``curl | zstd -d`` to scratch, then ``qemu-img convert``

Every baseline ends with ``sync FILE``: ``cdi import`` fsyncs before it reports success (as
CDI does), so both sides pay for durable data.
- qcow2:      CDI's path: ``curl -o`` to scratch then ``qemu-img convert``  vs ``cdi import``
              (our streaming qcow2 reader, no scratch)
- vmdk:       ``curl -o`` then ``qemu-img convert``  vs ``cdi import`` (our single-pass reader)
- vmdk-stream: the same for a streamOptimized VMDK (compressed grains, what OVAs carry)
- vdi, vhd, vhdx: the same for a dynamic VDI, VHD and VHDX (our single-pass readers)
- raw.gz, qcow2.xz: CDI's path: ``curl | gzip -d`` (``xz -d``) to scratch, then
              ``qemu-img convert``  vs ``cdi import`` (decompressed as it arrives, no scratch)

Prints MB/s of raw output, the ratio (ours / theirs; above 1 is faster), peak RSS, and the
bytes our import allocated on the target divided by the image's data bytes (non-zero 4 KiB
blocks): 1.00 means only data was written. Machines are noisy: compare the ratios of one run,
not absolute numbers across runs.

    .venv/bin/python bench/run.py [--size-mib 2048] [--repeat 3] [--cases raw.gz,qcow2.xz] [--before CMD]

``--before CMD`` times a second ``cdi`` (e.g. a launcher for the tree before a change) in the
same rounds, interleaved, so before and after see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.nginx import start_nginx  # noqa: E402
from tests.servers.pki import make_ca  # noqa: E402

CDI = str(ROOT / ".venv" / "bin" / "cdi")
MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL);"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def make_disk(path: Path, size: int) -> None:
    """Half data in 64 KiB extents at random places, half holes."""
    rng = random.Random(1)
    extent = 64 * 1024
    slots = size // extent
    chosen = sorted(rng.sample(range(slots), slots // 2))
    block = os.urandom(extent * 16)
    with open(path, "wb") as out:
        out.truncate(size)
        for i, slot in enumerate(chosen):
            start = (i * extent) % (len(block) - extent)
            out.seek(slot * extent)
            out.write(block[start:start + extent])


def data_size(path: Path, block: int = 4096) -> int:
    """Bytes in the non-zero ``block``-sized blocks of ``path``: what a perfectly sparse
    writer must write."""
    total, zero = 0, bytes(block)
    with open(path, "rb") as file:
        while piece := file.read(block * 256):
            for start in range(0, len(piece), block):
                if piece[start:start + block] != zero[:len(piece) - start]:
                    total += min(block, len(piece) - start)
    return total


def timed(command: str | list[str], shell: bool = False) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one command."""
    args = ["bash", "-c", command] if shell else list(command)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - started, int(out.stdout.strip() or 0)


def drop(*paths: Path) -> None:
    """Remove the previous outputs, and let their writeback finish before the next timing."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    os.sync()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="", help="comma-separated subset of the cases")
    parser.add_argument("--cdi", default=CDI, help="the cdi command to measure (e.g. an older tree's)")
    parser.add_argument("--before", help="another cdi command (an older tree's) timed in the same rounds")
    args = parser.parse_args()
    cdi = args.cdi
    size = args.size_mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="cdi-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    www = work / "www"
    www.mkdir()
    print(f"generating a {args.size_mib} MiB disk in {work} ...", flush=True)
    make_disk(www / "disk.raw", size)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(www / "disk.raw"), str(www / "disk.qcow2")], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(www / "disk.raw"), str(www / "disk.vmdk")], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(www / "disk.raw"), str(www / "disk-stream.vmdk")], check=True)
    for fmt, qemu_format in (("vdi", "vdi"), ("vhd", "vpc"), ("vhdx", "vhdx")):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", qemu_format, str(www / "disk.raw"),
                        str(www / f"disk.{fmt}")], check=True)
    subprocess.run(["zstd", "-q", "-T0", "-3", str(www / "disk.raw"), "-o", str(www / "disk.raw.zst")], check=True)
    subprocess.run(f"gzip -1 -c {www / 'disk.raw'} > {www / 'disk.raw.gz'}", shell=True, check=True)
    subprocess.run(f"xz -T0 -0 -c {www / 'disk.qcow2'} > {www / 'disk.qcow2.xz'}", shell=True, check=True)
    data_bytes = data_size(www / "disk.raw")
    nginx = start_nginx(www, work / "nginx", make_ca(work / "ca"))
    base = nginx.http
    out = work / "out.img"
    scratch = work / "scratch.img"
    durable = f" && sync {out}"  # ours fsyncs before reporting success; theirs must too

    def cdi_path(file: str, fmt: str, decompress_to: str = "") -> str:
        """CDI's HTTP path: the download (decompressed on the way by ``decompress_to``, which
        names its output last) to scratch, then a convert."""
        fetch = f"curl -sf {base}/{file} | {decompress_to} {scratch}" if decompress_to \
            else f"curl -sf -o {scratch} {base}/{file}"
        return f"{fetch} && qemu-img convert -t writeback -f {fmt} -O raw {scratch} {out}" + durable

    theirs = {  # case: (what a user or CDI would run, the file our import reads)
        "raw": (f"curl -sf -o {out} {base}/disk.raw" + durable, "disk.raw"),
        "raw.zst": (f"curl -sf {base}/disk.raw.zst | zstd -q -d -o {out}" + durable, "disk.raw.zst"),
        "raw.zst-cdi": (cdi_path("disk.raw.zst", "raw", "zstd -q -d -o"), "disk.raw.zst"),
        "qcow2": (cdi_path("disk.qcow2", "qcow2"), "disk.qcow2"),
        "vmdk": (cdi_path("disk.vmdk", "vmdk"), "disk.vmdk"),
        "vmdk-stream": (cdi_path("disk-stream.vmdk", "vmdk"), "disk-stream.vmdk"),
        "vdi": (cdi_path("disk.vdi", "vdi"), "disk.vdi"),
        "vhd": (cdi_path("disk.vhd", "vpc"), "disk.vhd"),
        "vhdx": (cdi_path("disk.vhdx", "vhdx"), "disk.vhdx"),
        "raw.gz": (cdi_path("disk.raw.gz", "raw", "gzip -d >"), "disk.raw.gz"),
        "qcow2.xz": (cdi_path("disk.qcow2.xz", "qcow2", "xz -d >"), "disk.qcow2.xz"),
    }
    cases = {name: (shell, [cdi, "import", f"{base}/{file}", str(out), "--no-progress"])
             for name, (shell, file) in theirs.items()}
    if args.cases:
        cases = {name: cases[name] for name in args.cases.split(",")}
    sides = {"ours": cdi, **({"before": args.before} if args.before else {})}
    print(f"{'case':11} {'side':7} {'theirs MB/s':>12} {'ours MB/s':>10} {'ratio':>6} {'peak RSS':>9} "
          f"{'written/data':>13}")
    try:
        for name, (theirs, ours) in cases.items():
            their_times: list[float] = []
            times: dict[str, list[float]] = {side: [] for side in sides}
            rss: dict[str, list[int]] = {side: [] for side in sides}
            written: dict[str, int] = {}
            for _ in range(args.repeat):
                drop(out, scratch)
                their_times.append(timed(theirs, shell=True)[0])
                for side, command in sides.items():
                    drop(out, scratch)
                    t, r = timed([command, *ours[1:]])
                    times[side].append(t)
                    rss[side].append(r)
                    written[side] = out.stat().st_blocks * 512
            theirs_mbs = size / statistics.median(their_times) / 1e6
            for side in sides:
                mbs = size / statistics.median(times[side]) / 1e6
                print(f"{name:11} {side:7} {theirs_mbs:12.0f} {mbs:10.0f} {mbs / theirs_mbs:6.2f} "
                      f"{max(rss[side]) / 1024:5.0f} MiB {written[side] / data_bytes:13.3f}", flush=True)
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
