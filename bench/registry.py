"""A containerDisk import against ``skopeo copy`` of the same image, side by side in one run.

Builds a containerDisk the usual way (one gzip layer holding ``disk/disk.img``, the bench's
disk of half random 64 KiB extents and half holes), pushes it to a real CNCF registry
(``docker-registry``) on loopback over plain http, and times, medians of ``--repeat``:

- ``skopeo copy docker://... dir:DIR && sync``  (fetches and verifies the blobs, converts
  nothing: the floor of any registry import)
- CDI's path, modelled: that copy, then ``tar -x`` of the disk from the layer to scratch, then
  ``qemu-img convert`` into the target (CDI's importer stages the image, then converts)
- ``cdi import docker://...``  (the layer decompressed and untarred as it streams; gzip
  through ISA-L when ``isal`` is installed; the disk written sparse, fsynced)

    .venv/bin/python bench/registry.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import CDI, drop, make_disk, timed  # noqa: E402
from tests.servers.registry import OCI_CONFIG, OCI_MANIFEST, config_blob, start_registry, stop  # noqa: E402

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while piece := file.read(1 << 20):
            digest.update(piece)
    return "sha256:" + digest.hexdigest()


def push_blob(base: str, repository: str, body: Path | bytes) -> dict[str, object]:
    """A monolithic upload (POST, then PUT ?digest=), streamed from the file when a path."""
    if isinstance(body, Path):
        digest, size = file_digest(body), body.stat().st_size
    else:
        digest, size = "sha256:" + hashlib.sha256(body).hexdigest(), len(body)
    started = requests.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=60)
    location = requests.compat.urljoin(base + "/", started.headers["Location"])
    joiner = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream"}
    if isinstance(body, Path):
        with open(body, "rb") as file:
            done = requests.put(f"{location}{joiner}digest={digest}", data=file, headers=headers, timeout=600)
    else:
        done = requests.put(f"{location}{joiner}digest={digest}", data=body, headers=headers, timeout=60)
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": size}


def push_image(base: str, work: Path, size: int) -> str:
    """Build and push the containerDisk as ``disks/bench:v1``; returns the layer's digest."""
    disk_dir = work / "layer" / "disk"
    disk_dir.mkdir(parents=True)
    make_disk(disk_dir / "disk.img", size)
    layer = work / "layer.tar.gz"
    subprocess.run(f"tar -C {work / 'layer'} --owner=107 --group=107 --mode=0440 -cf - disk | gzip -1 > {layer}",
                   shell=True, check=True)
    shutil.rmtree(work / "layer")
    blob = push_blob(base, "disks/bench", layer)
    config_ref = push_blob(base, "disks/bench", config_blob())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **config_ref},
                "layers": [{"mediaType": GZIP_LAYER, **blob}]}
    response = requests.put(f"{base}/v2/disks/bench/manifests/v1", data=json.dumps(manifest),
                            headers={"Content-Type": OCI_MANIFEST}, timeout=60)
    assert response.status_code == 201, response.text
    layer.unlink()
    return str(blob["digest"])


def median_mbs(command: list[str] | str, size: int, repeat: int, *outputs: Path, shell: bool = False) -> float:
    times = []
    for _ in range(repeat):
        drop(*outputs)
        seconds, _ = timed(command, shell=shell)
        times.append(seconds)
    return size / statistics.median(times) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cdi", default=CDI, help="the cdi command to measure (e.g. an older tree's)")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="cdi-registry-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    host, process = start_registry(work / "registry", work / "storage")
    try:
        layer = push_image(f"http://{host}", work, size).split(":", 1)[1]
        image = f"docker://{host}/disks/bench:v1"
        copied, scratch, out = work / "copied", work / "scratch", work / "out.img"
        copy = f"skopeo copy -q --src-tls-verify=false {image} dir:{copied}"
        cdi_path = (f"{copy} && mkdir -p {scratch} && tar -xzf {copied}/{layer} -C {scratch} disk/disk.img && "
                    f"qemu-img convert -t writeback -f raw -O raw {scratch}/disk/disk.img {out} && sync {out}")
        ours = [args.cdi, "import", image, str(out), "--no-progress", "--insecure"]
        skopeo = median_mbs(f"{copy} && sync {copied}/*", size, args.repeat, copied, shell=True)
        cdi = median_mbs(cdi_path, size, args.repeat, copied, scratch, out, shell=True)
        mine = median_mbs(ours, size, args.repeat, out)
        print(f"skopeo copy to dir {skopeo:.0f} MB/s   CDI's path (copy, untar, convert) {cdi:.0f} MB/s   "
              f"cdi import {mine:.0f} MB/s   vs skopeo {mine / skopeo:.2f}x   vs CDI's path {mine / cdi:.2f}x",
              flush=True)
    finally:
        stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
