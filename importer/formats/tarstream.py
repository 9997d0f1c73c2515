"""Reading a tar archive as a stream: one pass, no seeking, bounded memory.

Container image layers and CDI's ``archive`` content are tar streams that arrive over the
network, often compressed; we want one member out of them (the disk image) without writing the
rest anywhere. :class:`TarStream` walks the headers and hands out a member's content as chunks;
:func:`find_member` picks the first regular file under a directory, the way CDI picks a
containerDisk's ``disk/`` file, and refuses paths that try to escape.

Header layout (one 512-byte block per member, numbers in octal ASCII or, for large values,
GNU base-256 with the top bit of the first byte set):

========  ======  =========================================================
offset    length  field
========  ======  =========================================================
0         100     name (NUL-terminated when shorter)
100       8       mode
124       12      size
148       8       checksum: sum of the header bytes, this field as spaces
156       1       type flag (see ``REGULAR`` and friends below)
157       100     link name
257       6       magic: ``ustar\\0`` (POSIX) or ``ustar `` (old GNU)
345       155     POSIX prefix: the name is ``prefix/name`` (POSIX magic only)
========  ======  =========================================================

Long names come as extra members before the one they describe: PAX ``x`` records (``path``,
``linkpath``, ``size``) or GNU ``L``/``K`` members. Content is padded to 512 bytes; the archive
ends with zero blocks (we stop at the first one, as every reader does in practice).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import InvalidImage, UnsafeImage
from ..stream import CHUNK, ChunkReader

log = logging.getLogger(__name__)

BLOCK = 512
MAX_META = 1024 * 1024
"""Largest PAX or GNU long-name record we accept: names are short; a huge one is an attack."""

REGULAR = frozenset(b"07\0")
"""Type flags of plain files: ``0``, ``7`` (contiguous) and the pre-POSIX NUL."""
DIRECTORY = ord("5")
GNU_SPARSE = ord("S")
PAX_LOCAL, PAX_GLOBAL = ord("x"), ord("g")
GNU_LONGNAME, GNU_LONGLINK = ord("L"), ord("K")
WHITEOUT_PREFIX = ".wh."


@dataclass
class TarEntry:
    """One member's header, with long names and PAX overrides already applied."""

    name: str
    type: int
    size: int
    mode: int
    linkname: str = ""
    sparse: bool = False
    """GNU sparse member: its stored bytes are not the file's bytes (we do not expand them)."""
    pax: dict[str, str] = field(default_factory=dict)

    @property
    def is_regular(self) -> bool:
        return self.type in REGULAR and not self.sparse

    @property
    def is_dir(self) -> bool:
        return self.type == DIRECTORY or (self.type in REGULAR and self.name.endswith("/"))


class TarStream:
    """Sequential access to a tar stream's members and their content.

    Call :meth:`next` for each header; between calls, :meth:`data` yields the current member's
    bytes. Whatever of a member is not read is skipped by the next :meth:`next`, so walking
    the headers of a layer costs only reading it once.
    """

    def __init__(self, reader: ChunkReader, describe: str = "tar stream") -> None:
        self._reader = reader
        self._describe = describe
        self._remaining = 0  # unread content bytes of the current member
        self._padding = 0  # zero bytes after the current member's content
        self._global: dict[str, str] = {}
        self.ended = False
        """True once the end-of-archive marker (or a clean end of stream) was seen."""

    def next(self) -> TarEntry | None:
        """The next member's header, or None at the end of the archive."""
        self._skip_rest()
        pending: dict[str, str] = {}
        while not self.ended:
            block = self._header_block()
            if block is None:
                return None
            entry = _parse_header(block, self._describe)
            self._start_content(entry.size)
            if entry.type in (PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK):
                self._absorb_meta(entry, pending)
                continue
            return _apply_overrides(entry, {**self._global, **pending}, self._describe)
        return None

    def data(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The current member's content (what is left of it), in chunks of at most
        ``chunk_size``; InvalidImage if the stream ends before the member does."""
        while self._remaining > 0:
            piece = self._reader.read(min(chunk_size, self._remaining))
            if not piece:
                raise InvalidImage(f"{self._describe} is truncated: a member's content ends early")
            self._remaining -= len(piece)
            yield piece

    def _header_block(self) -> bytes | None:
        """The next header block; None (and ``ended``) at a zero block or a clean end."""
        block = self._reader.read_upto(BLOCK)
        if not block or block == bytes(BLOCK):
            self.ended = True
            return None
        if len(block) < BLOCK:
            raise InvalidImage(f"{self._describe} is truncated inside a tar header")
        return block

    def _start_content(self, size: int) -> None:
        self._remaining = size
        self._padding = -size % BLOCK

    def _skip_rest(self) -> None:
        """Discard the unread content and padding of the current member."""
        want = self._remaining + self._padding
        if want and self._reader.skip(want) != want:
            raise InvalidImage(f"{self._describe} is truncated: a member's content ends early")
        self._remaining = self._padding = 0

    def _absorb_meta(self, entry: TarEntry, pending: dict[str, str]) -> None:
        """Read a PAX or GNU long-name member into the overrides for the next header."""
        if entry.size > MAX_META:
            raise InvalidImage(f"{self._describe}: a tar metadata record of {entry.size} bytes is too large")
        payload = b"".join(self.data())
        self._skip_rest()
        if entry.type == GNU_LONGNAME:
            pending["path"] = _cstring(payload)
        elif entry.type == GNU_LONGLINK:
            pending["linkpath"] = _cstring(payload)
        else:
            records = _parse_pax(payload, self._describe)
            (self._global if entry.type == PAX_GLOBAL else pending).update(records)


def _parse_header(block: bytes, describe: str) -> TarEntry:
    """Decode one header block (see the table in the module docstring)."""
    _check_checksum(block, describe)
    name = _cstring(block[0:100])
    if block[257:263] == b"ustar\0":  # POSIX: name may be split into prefix/name
        prefix = _cstring(block[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    type_flag = block[156]
    return TarEntry(
        name=name,
        type=type_flag,
        size=_number(block[124:136], describe),
        mode=_number(block[100:108], describe),
        linkname=_cstring(block[157:257]),
        sparse=type_flag == GNU_SPARSE,
    )


def _check_checksum(block: bytes, describe: str) -> None:
    """Refuse a block that is not a tar header: the checksum is the one integrity check tar has."""
    stored = _number(block[148:156], describe)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b >= 128)
    if stored not in (unsigned, signed):
        raise InvalidImage(f"{describe} is not a valid tar archive (bad header checksum)")


def _number(field_bytes: bytes, describe: str) -> int:
    """A numeric header field: octal ASCII, or GNU base-256 when the top bit is set."""
    if field_bytes and field_bytes[0] & 0x80:
        value = int.from_bytes(bytes([field_bytes[0] & 0x7F]) + field_bytes[1:], "big")
        if field_bytes[0] & 0x40:  # negative base-256: never valid for our fields
            raise InvalidImage(f"{describe}: negative number in a tar header")
        return value
    text = field_bytes.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidImage(f"{describe} is not a valid tar archive (bad number {text!r})") from None


def _cstring(data: bytes) -> str:
    """A NUL-terminated field as text; bytes that are not UTF-8 survive as surrogates."""
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_pax(payload: bytes, describe: str) -> dict[str, str]:
    """PAX records: ``"<length> <key>=<value>\\n"``, length counting the whole record."""
    records: dict[str, str] = {}
    position = 0
    while position < len(payload):
        space = payload.find(b" ", position)
        digits = payload[position:space] if space > position else b""
        length = int(digits) if digits.isdigit() else 0
        record = payload[space + 1:position + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise InvalidImage(f"{describe}: malformed PAX header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _apply_overrides(entry: TarEntry, pax: dict[str, str], describe: str) -> TarEntry:
    """Apply long names and PAX values to the header they precede."""
    if "path" in pax:
        entry.name = pax["path"]
    if "linkpath" in pax:
        entry.linkname = pax["linkpath"]
    if "size" in pax:
        try:
            entry.size = int(pax["size"])
        except ValueError:
            raise InvalidImage(f"{describe}: malformed PAX size {pax['size']!r}") from None
    if any(key.startswith("GNU.sparse.") for key in pax):
        entry.sparse = True
    entry.pax = pax
    return entry


# ---------------------------------------------------------------------------------------------
# Paths


def normalize(name: str) -> str:
    """A member path without ``./`` segments, doubled or trailing slashes; ``..`` is kept.

    ``./disk//a.img`` -> ``disk/a.img``. Leading ``/`` is kept so callers can see it.
    """
    parts = [part for part in name.split("/") if part not in ("", ".")]
    joined = "/".join(parts)
    return "/" + joined if name.startswith("/") else joined


def escapes(name: str) -> bool:
    """True for a path that is absolute or has a ``..`` segment.

    Such names never come out of the tools that build images; extracting them is how "zip
    slip" writes outside the target directory. Even though we extract nothing, which file a
    reader would select for such a name differs between tools, so we refuse them.
    """
    return name.startswith("/") or ".." in name.split("/")


def is_whiteout(name: str) -> bool:
    """An OCI whiteout marker (``.wh.<name>`` deletes ``<name>`` of lower layers)."""
    return posixpath.basename(normalize(name)).startswith(WHITEOUT_PREFIX)


def is_under(name: str, directory: str) -> bool:
    """True when the normalized path lies strictly inside ``directory`` (relative, no ``..``)."""
    path = normalize(name)
    prefix = normalize(directory) + "/"
    return path.startswith(prefix) and len(path) > len(prefix)


Skipped = Callable[[TarEntry, str], None]


def find_member(
    tar: TarStream,
    directory: str,
    on_skip: Skipped | None = None,
) -> TarEntry | None:
    """The first regular file under ``directory``, positioned so :meth:`TarStream.data` reads it.

    Skips directories, whiteouts and files elsewhere; refuses (UnsafeImage) any member whose
    path escapes, since none of a well-formed image's members do. Links and devices under
    ``directory`` are skipped and reported through ``on_skip`` (a link's content is elsewhere,
    and CDI would only have copied an empty file); a GNU sparse member there is InvalidImage
    (its stored bytes are not the file). None when the archive ends first.
    """
    while (entry := tar.next()) is not None:
        if escapes(entry.name):
            raise UnsafeImage(f"refusing tar member {entry.name!r}: its path escapes the image root")
        reason = _skip_reason(entry, directory)
        if reason is None:
            return entry
        if on_skip is not None:
            on_skip(entry, reason)
    return None


def _skip_reason(entry: TarEntry, directory: str) -> str | None:
    """Why ``entry`` is not the member we look for, or None when it is."""
    if not is_under(entry.name, directory):
        return "outside"
    if entry.is_dir:
        return "directory"
    if is_whiteout(entry.name):
        return "whiteout"
    if entry.sparse:
        raise InvalidImage(
            f"tar member {entry.name!r} is stored as a GNU sparse file, which is not supported: "
            "build the image without sparse tar members"
        )
    if not entry.is_regular:
        return "not a regular file"
    return None
