"""S3 source throughput against plain boto3, side by side, on a real SeaweedFS.

``--rate MIB`` puts :class:`bench.throttle.Throttle` in front of SeaweedFS, holding every
connection to MIB MiB/s (as an object store caps each GET stream), and reads through it.

    .venv/bin/python bench/s3.py [--size-mib 512] [--repeat 3] [--connections 4] [--rate 32]

Prints MiB/s of ``get_object()["Body"].read(4 MiB)`` in a loop (boto3's single stream) and of
``S3Source.chunks()`` with one connection (our single resumable stream) and with
``--connections`` (parallel ranged GETs, delivered in order), and the ratios to boto3.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402

from importer.sources import SourceOptions  # noqa: E402
from importer.sources.s3 import S3Source  # noqa: E402
from bench.throttle import Throttle  # noqa: E402
from tests.servers.seaweed import run_seaweed  # noqa: E402

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=int, help="MiB/s per connection, shaped in front of the S3 server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_seaweed(Path(tmp)) as server:
        client = server.client()
        client.upload_fileobj(io.BytesIO(os.urandom(args.size_mib * MiB)), server.bucket, "bench.img",
                              Config=TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB))
        endpoint, throttle = server.http_endpoint, None
        if args.rate:
            throttle = Throttle(int(server.http_endpoint.rsplit(":", 1)[1]), args.rate * MiB)
            endpoint = f"http://127.0.0.1:{throttle.port}"
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, aws_access_key_id=server.access_key,
                aws_secret_access_key=server.secret_key, region_name=server.region,
                config=Config(s3={"addressing_style": "path"}))
        url = f"{endpoint}/{server.bucket}/bench.img"
        plain: list[float] = []
        ours: dict[int, list[float]] = {1: [], args.connections: []}
        for _ in range(args.repeat):
            start, total = time.monotonic(), 0
            body = client.get_object(Bucket=server.bucket, Key="bench.img")["Body"]
            while piece := body.read(4 * MiB):
                total += len(piece)
            plain.append(total / (time.monotonic() - start) / MiB)
            for connections, rates in ours.items():
                options = SourceOptions(access_key_id=server.access_key, secret_key=server.secret_key,
                                        connections=connections)
                with S3Source(url, options) as source:
                    source.open()
                    start, total = time.monotonic(), 0
                    for piece in source.chunks():
                        total += len(piece)
                    rates.append(total / (time.monotonic() - start) / MiB)
        if throttle is not None:
            throttle.stop()
        a = statistics.median(plain)
        single, parallel = (statistics.median(rates) for rates in ours.values())
        print(f"boto3 get_object: {a:.0f} MiB/s   S3Source 1 connection: {single:.0f} MiB/s ({single / a:.2f}x)   "
              f"{args.connections} connections: {parallel:.0f} MiB/s ({parallel / a:.2f}x)")


if __name__ == "__main__":
    main()
