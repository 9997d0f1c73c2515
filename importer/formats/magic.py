"""What an image is, from its first bytes: one table of magic numbers.

Detection is stacked by the pipeline: a compression layer is peeled off, then the
decompressed stream is detected again, until a disk format (or raw) is found. ISO and
anything unrecognised are raw: they are copied as they are.

| kind     | magic                          | offset  |
|----------|--------------------------------|---------|
| gz       | 1f 8b                          | 0       |
| xz       | fd 37 7a 58 5a 00              | 0       |
| zst      | 28 b5 2f fd                    | 0       |
| bz2      | 42 5a 68 ('BZh') + digit 1-9   | 0       |
| qcow2    | 51 46 49 fb ('QFI\\xfb')        | 0       |
| vmdk     | 4b 44 4d 56 ('KDMV')           | 0       |
| vhdx     | 'vhdxfile'                     | 0       |
| vhd      | 'conectix'                     | 0 (dynamic) / size-512 (fixed: looks raw) |
| vdi      | 7f 10 da be                    | 0x40    |
| tar      | 'ustar'                        | 0x101   |
| iso      | 'CD001'                        | 0x8001  |
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_BYTES = 0x8001 + 5
"""Enough leading bytes to see every magic in the table (the ISO one is the furthest)."""

COMPRESSIONS = ("gz", "xz", "zst", "bz2")
CONVERTIBLE = ("qcow2", "vmdk", "vhdx", "vhd", "vdi")
"""Formats that must be converted to raw (qcow2 by our own reader, the others by qemu-img)."""

QEMU_FORMAT = {"qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vhd": "vpc", "vdi": "vdi", "raw": "raw"}
"""Our format names mapped to qemu-img's ``-f`` names."""


@dataclass(frozen=True)
class Magic:
    kind: str
    offset: int
    signature: bytes


MAGICS = (
    Magic("gz", 0, b"\x1f\x8b"),
    Magic("xz", 0, b"\xfd7zXZ\x00"),
    Magic("zst", 0, b"\x28\xb5\x2f\xfd"),
    Magic("qcow2", 0, b"QFI\xfb"),
    Magic("vmdk", 0, b"KDMV"),
    Magic("vhdx", 0, b"vhdxfile"),
    Magic("vhd", 0, b"conectix"),
    Magic("vdi", 0x40, b"\x7f\x10\xda\xbe"),
    Magic("tar", 0x101, b"ustar"),
    Magic("iso", 0x8001, b"CD001"),
)


def detect(header: bytes) -> str:
    """The kind of data starting with ``header``: a compression, a disk format, 'tar',
    'iso' or 'raw'."""
    for magic in MAGICS:
        if header[magic.offset:magic.offset + len(magic.signature)] == magic.signature:
            return magic.kind
    if header[:3] == b"BZh" and header[3:4].isdigit() and header[3:4] != b"0" \
            and header[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"
    return "raw"


def is_compression(kind: str) -> bool:
    return kind in COMPRESSIONS


def needs_conversion(kind: str) -> bool:
    return kind in CONVERTIBLE
