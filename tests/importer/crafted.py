"""Hand-made hostile images, built byte by byte (no tool would write them).

Each builder documents the trick it plays; the tests feed them to ``cdi import`` in a child
process and look at the outcome and at the child's peak memory.
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
CDI = [sys.executable, "-m", "cdi.cli"]
_MEASURED = """
import atexit, sys
def report():
    with open("/proc/self/status") as status:
        peak = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    sys.stderr.write(f"\\n@peak-rss-kib {peak[0]}\\n")
atexit.register(report)
from cdi.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""``cdi`` that reports its own peak RSS (VmHWM: since exec, so not the pages of the test
process it was forked from, which ``wait4``'s ``ru_maxrss`` would count) on stderr at exit."""


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
    """Run ``cdi import ARGS --no-progress`` in a child; its outcome and its own peak RSS."""
    command = [sys.executable, "-c", _MEASURED, "import", *map(str, args), "--no-progress"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"cdi import {args} did not finish within {timeout} s") from None
    stderr, _, peak = done.stderr.rpartition("\n@peak-rss-kib ")
    if not peak.strip().isdigit():  # died before atexit ran (a signal, the memory cap)
        return Outcome(done.returncode, done.stdout, done.stderr, 1 << 62)
    return Outcome(done.returncode, done.stdout, stderr, int(peak) * 1024)
