"""importer.nbd: the read-only NBD server, driven by real qemu-img and by a raw-socket client.

Behaviours under test:

* qemu-img info and convert read vmdk (sparse and streamOptimized), vpc, vhdx, vdi and qcow2
  through the server, giving the same bytes as a local convert; reads come from ``read_at``.
* Exports whose size is not a multiple of 512 work (qemu hangs on those with simple replies;
  the server speaks structured replies).
* A failing ``read_at`` makes qemu-img fail; ``first_error`` holds the original exception.
* Several connections at once, several reads in flight at once, replies matched by handle.
* The handshake per the spec: fixed newstyle flags, EXPORT_NAME with and without the 124
  zero bytes, LIST, INFO/GO (block sizes, unknown export, malformed data), STRUCTURED_REPLY,
  unknown options answered ERR_UNSUP on a connection that stays usable, ABORT, bad client
  flags; qemu-nbd --list as a second real client.
* Transmission: simple and structured reads, EPERM for writes (the payload is consumed),
  EINVAL for flush, unknown commands and out-of-range reads, DISC.
* Progress accounting, and a clean stop: socket and directory removed, clients hung up.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from importer import nbd
from importer.errors import AuthenticationFailed, SourceUnavailable
from importer.nbd import NbdServer
from importer.qemu import QemuImg, QemuImgError

MiB = 1024 * 1024
SIZE = 4 * MiB

# format name -> qemu-img convert -O options
FORMATS: dict[str, list[str]] = {
    "vmdk": [],
    "vmdk-stream": ["-o", "subformat=streamOptimized"],
    "vpc": ["-o", "force_size=on"],
    "vhdx": [],
    "vdi": [],
    "qcow2": ["-c"],
}


def qemu_img(*args: str | os.PathLike[str]) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_reader(path: Path) -> Callable[[int, int], bytes]:
    """read_at over a local file, as a source's random access would be."""
    def read_at(offset: int, length: int) -> bytes:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(length)
    return read_at


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nbd-images")
    raw = root / "disk.raw"
    with raw.open("wb") as f:
        for index in range(SIZE // (64 * 1024)):
            f.write(os.urandom(64 * 1024) if index % 3 else bytes(64 * 1024))
    made = {"raw": raw}
    for name, options in FORMATS.items():
        fmt = name.split("-")[0]
        made[name] = root / f"disk.{name}"
        qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, made[name])
    return made


def serve(path: Path, **kwargs: object) -> NbdServer:
    return NbdServer(file_reader(path), path.stat().st_size, **kwargs)  # type: ignore[arg-type]


# -- real qemu-img ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
def test_qemu_img_converts_every_format_over_nbd(
    images: dict[str, Path], tmp_path: Path, name: str
) -> None:
    fmt = name.split("-")[0]
    qemu = QemuImg()
    local, remote = tmp_path / "local.raw", tmp_path / "remote.raw"
    qemu.convert(images[name], fmt, local)
    with serve(images[name]) as server:
        info = qemu.info(server.url, fmt)
        qemu.convert(server.url, fmt, remote)
    assert (info.format, info.virtual_size) == (fmt, SIZE)
    assert info.filename.startswith("nbd+unix://")
    assert sha256(remote) == sha256(local) == sha256(images["raw"])
    assert server.bytes_served >= SIZE // 2  # the data came through read_at


def test_monolithic_vmdk_over_nbd_passes_validation(images: dict[str, Path]) -> None:
    """Its extent is the NBD export itself, which validate must see as the same file."""
    from importer.qemu import validate

    with serve(images["vmdk"]) as server:
        validate(QemuImg().info(server.url, "vmdk"), capacity=SIZE)


@pytest.mark.parametrize("size", [1000, 512 * 3 + 7])
def test_export_size_not_a_multiple_of_512(tmp_path: Path, size: int) -> None:
    """No hang; qemu's NBD client rounds the size up to a sector and reads zeros there
    (the same against qemu-nbd), so the copy is the data plus a zero tail."""
    disk = tmp_path / "odd.raw"
    disk.write_bytes(os.urandom(size))
    out = tmp_path / "out.raw"
    with serve(disk) as server:
        QemuImg().convert(server.url, "raw", out)
        assert server.bytes_served == size
    padded = -(-size // 512) * 512
    assert out.read_bytes() == disk.read_bytes() + bytes(padded - size)


def test_vmdk_descriptor_over_nbd_is_read_and_refused(tmp_path: Path) -> None:
    """A 150-byte text descriptor (unaligned) naming a host file: unsandboxed qemu opens it
    and we refuse; sandboxed (over the same NBD socket) the file does not exist for it."""
    from importer.errors import InvalidImage, UnsafeImage
    from importer.qemu import validate
    from importer.sandbox import Sandbox

    secret = tmp_path / "secret"
    secret.write_bytes(bytes(MiB))
    descriptor = tmp_path / "evil.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 2048 FLAT "{secret}" 0\n'
    )
    with serve(descriptor) as server:
        info = QemuImg(info_timeout=20, sandbox=Sandbox(None)).info(server.url, "vmdk")
        with pytest.raises(InvalidImage, match="secret': No such file"):
            QemuImg(info_timeout=20).info(server.url, "vmdk")
    with pytest.raises(UnsafeImage, match="extents point at other files"):
        validate(info)


def test_read_error_fails_qemu_img_and_is_remembered(images: dict[str, Path], tmp_path: Path) -> None:
    read = file_reader(images["vhdx"])
    boom = AuthenticationFailed("403 Forbidden from https://example/disk.vhdx")

    def failing(offset: int, length: int) -> bytes:
        if offset >= 2 * MiB:
            raise boom
        return read(offset, length)

    with NbdServer(failing, images["vhdx"].stat().st_size) as server:
        with pytest.raises(QemuImgError, match="Input/output error"):
            QemuImg().convert(server.url, "vhdx", tmp_path / "out.raw")
        assert server.first_error is boom
    assert not (tmp_path / "out.raw").exists()


def test_concurrent_connections_and_reads_in_flight(images: dict[str, Path], tmp_path: Path) -> None:
    read = file_reader(images["qcow2"])
    lock = threading.Lock()
    active, peak = 0, 0

    def slow(offset: int, length: int) -> bytes:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.002)
        with lock:
            active -= 1
        return read(offset, length)

    outputs = [tmp_path / f"out{i}.raw" for i in range(3)]
    with NbdServer(slow, images["qcow2"].stat().st_size, workers=4) as server:
        threads = [
            threading.Thread(target=QemuImg().convert, args=(server.url, "qcow2", out))
            for out in outputs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert server.connections >= 3
    assert {sha256(out) for out in outputs} == {sha256(images["raw"])}
    assert peak >= 2


def test_on_read_counts_bytes_served(images: dict[str, Path], tmp_path: Path) -> None:
    counted: list[int] = []
    with serve(images["vdi"], on_read=counted.append) as server:
        QemuImg().convert(server.url, "vdi", tmp_path / "out.raw")
    assert sum(counted) == server.bytes_served > 0


def test_qemu_nbd_lists_the_export(images: dict[str, Path]) -> None:
    with serve(images["vpc"], description="a test disk") as server:
        out = subprocess.run(
            ["qemu-nbd", "--list", "-k", server.socket_path],
            check=True, capture_output=True, text=True, timeout=20,
        ).stdout
    size = images["vpc"].stat().st_size
    assert "export: ''" in out and f"size:  {size}" in out
    assert "readonly" in out and "max block: 33554432" in out


# -- a raw-socket client, for the corners qemu-img does not visit ---------------------------


class Client:
    """Just enough NBD client to speak the spec at the server, one field at a time."""

    def __init__(self, server: NbdServer, flags: int = nbd.FLAG_C_FIXED_NEWSTYLE) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(server.socket_path)
        self.greeting = struct.unpack(">QQH", self.recv(18))
        self.sock.sendall(struct.pack(">I", flags))

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", nbd.IHAVEOPT, option, len(data)) + data)

    def reply(self, option: int) -> tuple[int, bytes]:
        magic, echoed, kind, length = struct.unpack(">QIII", self.recv(20))
        assert (magic, echoed) == (nbd.REPLY_MAGIC, option)
        return kind, self.recv(length)

    def replies(self, option: int) -> Iterator[tuple[int, bytes]]:
        """Replies up to and including the final one (ACK or an error)."""
        while True:
            kind, data = self.reply(option)
            yield kind, data
            if kind not in (nbd.REP_SERVER, nbd.REP_INFO):
                return

    def go(self, name: str = "", requests: tuple[int, ...] = (), option: int = nbd.OPT_GO) -> list[tuple[int, bytes]]:
        encoded = name.encode()
        data = struct.pack(">I", len(encoded)) + encoded + struct.pack(f">H{len(requests)}H", len(requests), *requests)
        self.option(option, data)
        return list(self.replies(option))

    def request(self, kind: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b"") -> None:
        header = struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, flags, kind, handle, offset, length)
        self.sock.sendall(header + payload)

    def simple(self, length: int = 0) -> tuple[int, int, bytes]:
        magic, error, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == nbd.SIMPLE_REPLY_MAGIC
        return error, handle, self.recv(length) if error == 0 else b""

    def chunk(self) -> tuple[int, int, int, bytes]:
        magic, flags, kind, handle, length = struct.unpack(">IHHQI", self.recv(20))
        assert magic == nbd.STRUCTURED_REPLY_MAGIC and flags & nbd.REPLY_FLAG_DONE
        return kind, handle, flags, self.recv(length)


@pytest.fixture
def data() -> bytes:
    return os.urandom(100_000)


@pytest.fixture
def server(data: bytes) -> Iterator[NbdServer]:
    with NbdServer(lambda o, n: data[o:o + n], len(data), export_name="disk") as running:
        yield running


def transmission_flags(server: NbdServer, structured: bool = False) -> int:
    flags = nbd.FLAG_HAS_FLAGS | nbd.FLAG_READ_ONLY | nbd.FLAG_CAN_MULTI_CONN
    return flags | nbd.FLAG_SEND_DF if structured else flags


def test_greeting_is_fixed_newstyle(server: NbdServer) -> None:
    client = Client(server)
    assert client.greeting == (nbd.NBDMAGIC, nbd.IHAVEOPT, nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES)


@pytest.mark.parametrize("no_zeroes", [False, True])
def test_export_name(server: NbdServer, data: bytes, no_zeroes: bool) -> None:
    flags = nbd.FLAG_C_FIXED_NEWSTYLE | (nbd.FLAG_C_NO_ZEROES if no_zeroes else 0)
    client = Client(server, flags)
    client.option(nbd.OPT_EXPORT_NAME, b"disk")
    assert struct.unpack(">QH", client.recv(10)) == (len(data), transmission_flags(server))
    if not no_zeroes:
        assert client.recv(124) == bytes(124)
    client.request(nbd.CMD_READ, 7, 10, 20)
    assert client.simple(20) == (0, 7, data[10:30])


def test_export_name_unknown_hangs_up(server: NbdServer) -> None:
    client = Client(server)
    client.option(nbd.OPT_EXPORT_NAME, b"other")
    assert client.closed()


def test_unknown_client_flags_hang_up(server: NbdServer) -> None:
    assert Client(server, flags=1 << 5).closed()


def test_list(server: NbdServer) -> None:
    client = Client(server)
    client.option(nbd.OPT_LIST)
    assert list(client.replies(nbd.OPT_LIST)) == [
        (nbd.REP_SERVER, struct.pack(">I", 4) + b"disk"),
        (nbd.REP_ACK, b""),
    ]
    client.option(nbd.OPT_LIST, b"junk")
    assert client.reply(nbd.OPT_LIST)[0] == nbd.REP_ERR_INVALID


def test_unknown_options_are_unsupported_and_the_session_goes_on(server: NbdServer, data: bytes) -> None:
    client = Client(server)
    for option in (99, nbd.OPT_STARTTLS, 10, 0xFFFFFFFF):
        client.option(option, b"some data")
        kind, message = client.reply(option)
        assert kind == nbd.REP_ERR_UNSUP and message
    replies = client.go("disk")
    assert replies[-1] == (nbd.REP_ACK, b"")


def test_info_then_go_with_block_sizes(server: NbdServer, data: bytes) -> None:
    client = Client(server)
    wanted = (nbd.INFO_BLOCK_SIZE, nbd.INFO_NAME, 77)
    info = client.go("disk", wanted, option=nbd.OPT_INFO)
    assert info == [
        (nbd.REP_INFO, struct.pack(">HQH", nbd.INFO_EXPORT, len(data), transmission_flags(server))),
        (nbd.REP_INFO, struct.pack(">H", nbd.INFO_NAME) + b"disk"),
        (nbd.REP_INFO, struct.pack(">HIII", nbd.INFO_BLOCK_SIZE, 1, 4096, 32 * MiB)),
        (nbd.REP_ACK, b""),
    ]
    assert client.go("disk", wanted) == info  # same answer, and now in transmission
    client.request(nbd.CMD_READ, 1, 0, 5)
    assert client.simple(5) == (0, 1, data[:5])


def test_go_unknown_export_or_malformed_data(server: NbdServer) -> None:
    client = Client(server)
    kind, message = client.go("nope")[-1]
    assert kind == nbd.REP_ERR_UNKNOWN and b"nope" in message
    client.option(nbd.OPT_GO, struct.pack(">I", 50) + b"disk")
    assert client.reply(nbd.OPT_GO)[0] == nbd.REP_ERR_INVALID
    assert client.go("disk")[-1][0] == nbd.REP_ACK


def test_abort(server: NbdServer) -> None:
    client = Client(server)
    client.option(nbd.OPT_ABORT)
    assert client.reply(nbd.OPT_ABORT) == (nbd.REP_ACK, b"")
    assert client.closed()


def simple_session(server: NbdServer) -> Client:
    client = Client(server, nbd.FLAG_C_FIXED_NEWSTYLE | nbd.FLAG_C_NO_ZEROES)
    client.option(nbd.OPT_EXPORT_NAME, b"disk")
    client.recv(10)
    return client


def test_simple_replies_refuse_everything_but_reads(server: NbdServer, data: bytes) -> None:
    client = simple_session(server)
    client.request(nbd.CMD_WRITE, 1, 0, 3, payload=b"abc")
    assert client.simple() == (nbd.EPERM, 1, b"")
    for handle, kind in enumerate((nbd.CMD_FLUSH, nbd.CMD_CACHE, nbd.CMD_BLOCK_STATUS, 42), 2):
        client.request(kind, handle)
        assert client.simple() == (nbd.EINVAL, handle, b"")
    client.request(nbd.CMD_TRIM, 9, 0, 512)
    assert client.simple() == (nbd.EPERM, 9, b"")
    client.request(nbd.CMD_READ, 10, len(data) - 10, 11)
    assert client.simple() == (nbd.EINVAL, 10, b"")
    client.request(nbd.CMD_READ, 11, 0, 4, flags=nbd.CMD_FLAG_DF)  # DF needs structured replies
    assert client.simple() == (nbd.EINVAL, 11, b"")
    client.request(nbd.CMD_READ, 12, len(data) - 4, 4)
    assert client.simple(4) == (0, 12, data[-4:])
    client.request(nbd.CMD_DISC, 13)
    assert client.closed()


def test_pipelined_reads_are_matched_by_handle(server: NbdServer, data: bytes) -> None:
    client = simple_session(server)
    wanted = {handle: (handle * 1000, 500 + handle) for handle in range(1, 17)}
    for handle, (offset, length) in wanted.items():
        client.request(nbd.CMD_READ, handle, offset, length)
    got = {}
    for _ in wanted:
        magic, error, handle = struct.unpack(">IIQ", client.recv(16))
        assert (magic, error) == (nbd.SIMPLE_REPLY_MAGIC, 0)
        offset, length = wanted[handle]
        got[handle] = client.recv(length)
    assert got == {h: data[o:o + n] for h, (o, n) in wanted.items()}


def structured_session(server: NbdServer) -> Client:
    client = Client(server)
    client.option(nbd.OPT_STRUCTURED_REPLY)
    assert client.reply(nbd.OPT_STRUCTURED_REPLY) == (nbd.REP_ACK, b"")
    replies = client.go("disk")
    assert replies[0][1] == struct.pack(">HQH", nbd.INFO_EXPORT, 100_000, transmission_flags(server, True))
    return client


def test_structured_replies(server: NbdServer, data: bytes) -> None:
    client = structured_session(server)
    client.request(nbd.CMD_READ, 5, 1000, 300, flags=nbd.CMD_FLAG_DF)
    kind, handle, _, payload = client.chunk()
    assert (kind, handle) == (nbd.REPLY_TYPE_OFFSET_DATA, 5)
    assert payload == struct.pack(">Q", 1000) + data[1000:1300]
    client.request(nbd.CMD_READ, 6, len(data), 1)
    kind, handle, _, payload = client.chunk()
    assert (kind, handle) == (nbd.REPLY_TYPE_ERROR, 6)
    error, length = struct.unpack(">IH", payload[:6])
    assert error == nbd.EINVAL and b"out of range" in payload[6:6 + length]
    client.request(nbd.CMD_READ, 7, 0, 0)
    assert client.chunk()[:2] == (nbd.REPLY_TYPE_NONE, 7)


def test_structured_reply_option_with_data_is_invalid(server: NbdServer) -> None:
    client = Client(server)
    client.option(nbd.OPT_STRUCTURED_REPLY, b"x")
    assert client.reply(nbd.OPT_STRUCTURED_REPLY)[0] == nbd.REP_ERR_INVALID


def test_read_error_becomes_eio_with_the_reason(tmp_path: Path) -> None:
    def broken(offset: int, length: int) -> bytes:
        raise SourceUnavailable("connection reset by peer")

    with NbdServer(broken, 4096, export_name="disk") as server:
        client = structured_session_of(server, 4096)
        client.request(nbd.CMD_READ, 3, 0, 512)
        kind, handle, _, payload = client.chunk()
        assert (kind, handle) == (nbd.REPLY_TYPE_ERROR, 3)
        assert struct.unpack(">I", payload[:4]) == (nbd.EIO,)
        assert b"connection reset by peer" in payload
        client.request(nbd.CMD_READ, 4, 0, 512)  # the session survives the error
        assert client.chunk()[:2] == (nbd.REPLY_TYPE_ERROR, 4)
        assert isinstance(server.first_error, SourceUnavailable)


def structured_session_of(server: NbdServer, size: int) -> Client:
    client = Client(server)
    client.option(nbd.OPT_STRUCTURED_REPLY)
    client.reply(nbd.OPT_STRUCTURED_REPLY)
    assert client.go("disk")[-1][0] == nbd.REP_ACK
    return client


def test_short_read_from_the_source_is_an_error() -> None:
    with NbdServer(lambda o, n: b"x", 4096, export_name="disk") as server:
        client = simple_session(server)
        client.request(nbd.CMD_READ, 1, 0, 100)
        assert client.simple() == (nbd.EIO, 1, b"")
        assert "returned 1 bytes at offset 0, expected 100" in str(server.first_error)


# -- lifecycle ------------------------------------------------------------------------------


def test_close_hangs_up_and_removes_the_socket(data: bytes) -> None:
    server = NbdServer(lambda o, n: data[o:o + n], len(data)).start()
    path = Path(server.socket_path)
    assert server.url == f"nbd+unix:///?socket={path}"
    idle = Client(server)  # parked in the handshake
    server.close()
    assert idle.closed()
    assert not path.exists() and not path.parent.exists()
    with pytest.raises(OSError):
        socket.socket(socket.AF_UNIX).connect(str(path))
    server.close()  # idempotent


def test_socket_dir_and_url_quoting(tmp_path: Path, data: bytes) -> None:
    spaced = tmp_path / "with space"
    spaced.mkdir()
    disk = spaced / "disk.raw"
    disk.write_bytes(data[:4096])
    with serve(disk, socket_dir=spaced) as server:
        assert Path(server.socket_path).parent.parent == spaced
        assert "with%20space" in server.url
        assert QemuImg().info(server.url, "raw").virtual_size == 4096


def test_socket_path_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with pytest.raises(ValueError, match="too long"):
        NbdServer(lambda o, n: b"", 0, socket_dir=deep).start()
    assert list(deep.iterdir()) == []
