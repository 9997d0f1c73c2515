"""S3 source throughput against plain boto3, side by side, on a real SeaweedFS.

    .venv/bin/python bench/s3.py [--size-mib 512] [--repeat 3]

Prints MiB/s of ``S3Source.chunks()`` and of ``get_object()["Body"].read(4 MiB)`` in a loop;
the ratio shows what our wrapper (retries, resume, pinning with If-Match) costs.
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

from boto3.s3.transfer import TransferConfig  # noqa: E402

from importer.sources import SourceOptions  # noqa: E402
from importer.sources.s3 import S3Source  # noqa: E402
from tests.servers.seaweed import run_seaweed  # noqa: E402

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_seaweed(Path(tmp)) as server:
        client = server.client()
        client.upload_fileobj(io.BytesIO(os.urandom(args.size_mib * MiB)), server.bucket, "bench.img",
                              Config=TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB))
        options = SourceOptions(access_key_id=server.access_key, secret_key=server.secret_key)
        url = f"{server.http_endpoint}/{server.bucket}/bench.img"
        plain, ours = [], []
        for _ in range(args.repeat):
            start, total = time.monotonic(), 0
            body = client.get_object(Bucket=server.bucket, Key="bench.img")["Body"]
            while piece := body.read(4 * MiB):
                total += len(piece)
            plain.append(total / (time.monotonic() - start) / MiB)
            with S3Source(url, options) as source:
                source.open()
                start, total = time.monotonic(), 0
                for piece in source.chunks():
                    total += len(piece)
                ours.append(total / (time.monotonic() - start) / MiB)
        a, b = statistics.median(plain), statistics.median(ours)
        print(f"boto3 get_object: {a:.0f} MiB/s   S3Source.chunks(): {b:.0f} MiB/s   ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
