"""A qcow2 that maps one cluster many times imports as fast as any other qcow2.

    .venv/bin/python bench/qcow2_alias.py [--size-mib 1024] [--repeat 3]

Imports (``cdi import`` of a local file, in a child) two images of the same virtual size
whose every guest byte is data: a dense one made by ``qemu-img convert`` from random bytes,
and a crafted one of a few clusters whose L1 and L2 entries all name the same table and
cluster (tests/importer/crafted.py), with 64 KiB and 512-byte clusters. Prints MB/s of guest
output, the ratio aliasing / dense (about 1 or above: CPU follows bytes written, not the
mapping), and each child's peak RSS. Machines are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.importer.crafted import MiB, cdi_import, qcow2_alias  # noqa: E402


def dense(path: Path, size: int) -> Path:
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], check=True)
    raw.unlink()
    return path


def timed(image: Path, work: Path, size: int) -> tuple[float, int]:
    volume = work / "vol"
    shutil.rmtree(volume, ignore_errors=True)
    volume.mkdir()
    started = time.monotonic()
    outcome = cdi_import(image, volume)
    seconds = time.monotonic() - started
    if outcome.returncode != 0:
        raise SystemExit(f"import of {image} failed: {outcome.stderr}")
    return size / MiB / seconds, outcome.peak_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="cdi-bench-alias-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        images = {"dense (qemu-img)": dense(work / "dense.qcow2", size),
                  "alias 64k clusters": qcow2_alias(work / "a64k.qcow2", size, 16),
                  "alias 512 clusters": qcow2_alias(work / "a512.qcow2", size, 9)}
        results = {}
        for name, image in images.items():
            runs = [timed(image, work, size) for _ in range(args.repeat)]
            results[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
        base = results["dense (qemu-img)"][0]
        print(f"{'image':22} {'file':>10} {'MB/s':>8} {'ratio':>6} {'peak RSS':>9}")
        for name, (rate, rss) in results.items():
            print(f"{name:22} {images[name].stat().st_size // 1024:>8}Ki {rate:8.0f} "
                  f"{rate / base:6.2f} {rss // MiB:>7}Mi")


if __name__ == "__main__":
    main()
