"""Hand edits of VMDK images that ``qemu-img`` made: the layouts qemu-img never writes, to show
which ones our single-pass reader declines (and where they go instead) or refuses.

Only the sparse extent header is read here (little endian, VMware's "Virtual Disk Format 1.1"):
capacity, grain size and grain directory offset in sectors, entries per grain table.
"""

from __future__ import annotations

import struct

GRAIN = 64 * 1024
HEADER = struct.Struct("<4sIIQQQQIQQQ?4sH")


def header(image: bytes) -> dict[str, int]:
    (_, _, flags, capacity, grain, _, _, gtes, _, gd, overhead, _, _, _) = HEADER.unpack_from(image)
    return {"flags": flags, "capacity": capacity, "grain": grain, "gtes": gtes, "gd": gd,
            "overhead": overhead}


def gte_offsets(image: bytes) -> list[tuple[int, int]]:
    """(file offset of the entry, entry) for every allocated grain table entry, disk order."""
    h = header(image)
    tables = -(-h["capacity"] // (h["grain"] * h["gtes"]))
    found = []
    for n in range(tables):
        (gt,) = struct.unpack_from("<I", image, h["gd"] * 512 + 4 * n)
        for i in range(h["gtes"]) if gt else ():
            at = gt * 512 + 4 * i
            (entry,) = struct.unpack_from("<I", image, at)
            if entry:
                found.append((at, entry))
    return found


def put(image: bytearray, offset: int, fmt: str, *values: int) -> None:
    struct.pack_into(fmt, image, offset, *values)


def swap_first_grains(image: bytearray) -> None:
    """A valid monolithicSparse image whose first two grains sit in the file in reverse disk
    order: still the same disk, but not one a single pass in file order can place."""
    (a_at, a), (b_at, b) = gte_offsets(bytes(image))[:2]
    first, second = bytes(image[a * 512:a * 512 + GRAIN]), bytes(image[b * 512:b * 512 + GRAIN])
    image[a * 512:a * 512 + GRAIN], image[b * 512:b * 512 + GRAIN] = second, first
    put(image, a_at, "<I", b)
    put(image, b_at, "<I", a)
