"""Hand-made hostile images, built byte by byte (no tool would write them).

Each builder documents the trick it plays; the tests feed them to ``cdi import`` in a child
process and look at the outcome and at the child's peak memory.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
CDI = [sys.executable, "-m", "cdi.cli"]


def qcow2_alias(path: Path, virtual: int, cluster_bits: int = 16, fill: int = 0xAB) -> Path:
    """A qcow2 whose every L1 entry names the same L2 table and whose every L2 entry names
    the same data cluster: a file of a few clusters (plus the L1) that maps ``virtual``
    bytes. Layout: header, an empty refcount table, L1, the L2 table, the data cluster."""
    cs = 1 << cluster_bits
    span = cs * (cs // 8)
    l1_entries = -(-virtual // span)
    l1_clusters = -(-l1_entries * 8 // cs)
    l1_offset = 2 * cs
    l2_offset = l1_offset + l1_clusters * cs
    data_offset = l2_offset + cs
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 3, 0, 0, cluster_bits, virtual, 0,
                         l1_entries, l1_offset, cs, 1, 0, 0)
    header += struct.pack(">QQQII", 0, 0, 0, 4, 104) + bytes(8)
    with open(path, "wb") as f:
        f.write(header.ljust(2 * cs, b"\0"))
        f.write(struct.pack(">Q", l2_offset | 1 << 63) * l1_entries)
        f.seek(l2_offset)
        f.write(struct.pack(">Q", data_offset | 1 << 63) * (cs // 8))
        f.write(bytes([fill]) * cs)
    return path


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    """Peak resident set size of the child, in bytes."""


def _limit_memory() -> None:
    """In the child: a generous address-space cap so a regression fails the test instead of
    the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 * GiB, 4 * GiB))


def cdi_import(*args: str | Path, timeout: float = 300) -> Outcome:
    """Run ``cdi import ARGS --no-progress`` in a child; its outcome and its own peak RSS
    (from ``wait4``, so no other child of the test session counts)."""
    command = [*CDI, "import", *map(str, args), "--no-progress"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, preexec_fn=_limit_memory)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise AssertionError(f"cdi import {args} did not finish within {timeout} s")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Outcome(process.returncode, out.read().decode(), err.read().decode(),
                       usage.ru_maxrss * 1024)
