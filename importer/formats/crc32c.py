"""CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.

The standard library has only CRC-32 (IEEE). A VHDX checks 4 KiB headers and a 64 KiB region
table, so a table-driven loop in Python is quick enough (milliseconds) and needs no wheel.
"""

from __future__ import annotations

_POLY = 0x82F63B78
"""The Castagnoli polynomial, bit-reversed."""


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """The CRC-32C of ``data`` (initial value and final xor all ones, as iSCSI and VHDX)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def with_checksum_zeroed(data: bytes, at: int) -> int:
    """The CRC-32C of ``data`` with its 4-byte checksum field at ``at`` read as zeros (how
    VHDX structures are summed)."""
    return crc32c(data[:at] + bytes(4) + data[at + 4:])
