"""A tiny read-only NBD server on a unix socket, so qemu-img can read a remote image in place.

Why: qemu-img converts VMDK, VHD(X), VDI and qcow2 only from something it can seek in. Given
an ``nbd+unix://`` URL it reads through this server, and the server answers every read with
``read_at(offset, length)`` of one of our own sources (HTTP ranges, S3), so the bytes travel
with our authentication, CA bundle, retries and resume, and no scratch copy is needed.

What it speaks (NBD protocol, ``doc/proto.md`` of NetworkBlockDevice/nbd):

* Fixed newstyle handshake. Server: ``NBDMAGIC``, ``IHAVEOPT``, handshake flags
  (FIXED_NEWSTYLE | NO_ZEROES); client: 32-bit flags (unknown bits: hard disconnect). Then
  options, each ``IHAVEOPT, option u32, length u32, data``, each answered with
  ``REPLY_MAGIC, option u32, reply type u32, length u32, data``:

  ======================  ===================================================================
  EXPORT_NAME (1)         size u64, transmission flags u16, 124 zero bytes unless NO_ZEROES;
                          an unknown name is a hard disconnect (this option cannot fail)
  ABORT (2)               ACK, then close
  LIST (3)                one SERVER reply (name length u32 + name), then ACK
  INFO (6) / GO (7)       INFO replies (EXPORT always; NAME, DESCRIPTION, BLOCK_SIZE when
                          asked), then ACK (GO: transmission starts); ERR_UNKNOWN for other
                          names, ERR_INVALID when the data does not parse
  STRUCTURED_REPLY (8)    ACK (ERR_INVALID if it carries data)
  anything else           ERR_UNSUP (STARTTLS, meta contexts, future options)
  ======================  ===================================================================

* Transmission. Requests are ``REQUEST_MAGIC u32, flags u16, type u16, handle u64,
  offset u64, length u32``. READ is served; WRITE, TRIM, WRITE_ZEROES get EPERM (the export
  is flagged read-only; a write's payload is read and dropped to keep the stream in step);
  FLUSH, CACHE, BLOCK_STATUS, unknown commands, unknown flags and out-of-range reads get
  EINVAL; DISC finishes in-flight reads and closes. Replies are simple
  (``SIMPLE_REPLY_MAGIC, error u32, handle u64`` and, for a good read, the data) unless the
  client negotiated structured replies; then a read is one ``OFFSET_DATA`` chunk
  (``STRUCTURED_REPLY_MAGIC, flags u16 = DONE, type u16, handle u64, length u32``, then
  offset u64 and the data) and every error is an ``ERROR`` chunk (error u32, message length
  u16, message), so the reason reaches the client.

  Structured replies are not optional in practice: qemu 7.2 rounds an export whose size is
  not a multiple of 512 up to the next sector, trims the request it sends, but then waits
  for a whole sector of simple-reply payload and hangs (a VMDK descriptor is a 200-byte
  text file). With structured replies the chunk length tells it where the data ends.

Reads run on a small thread pool and may complete out of order (allowed: the handle pairs a
reply with its request), so qemu-img's several in-flight requests, over one or more
connections, overlap their network latency. A ``read_at`` that raises is answered with EIO
and the first such error is kept in :attr:`NbdServer.first_error`: qemu-img then fails with
a bare "Input/output error", and the caller re-raises the real cause (a 403, a timeout).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from .errors import SourceUnavailable

log = logging.getLogger(__name__)

# Magic numbers
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9  # option replies
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# Transmission flags
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_DF = 1 << 7
"""Set once structured replies are on: a read is always answered in one chunk anyway."""
FLAG_CAN_MULTI_CONN = 1 << 8
"""True of any read-only export: nothing is cached that another connection could miss."""

# Options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8

# Option reply types
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

# Information types (NBD_REP_INFO payloads)
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Structured replies: chunk flags and types
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_ERROR = (1 << 15) + 1

# Command flags
CMD_FLAG_DF = 1 << 2

# Commands
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

# Error values
EPERM = 1
EIO = 5
EINVAL = 22

MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_BLOCK = 32 * 1024 * 1024
"""Largest read served in one request: the size every client must accept (2^25)."""
MAX_OPTION_DATA = 64 * 1024
"""Option payloads are names and short lists; anything larger is treated as abuse."""
MAX_INFLIGHT = 16
"""Reads queued per connection before the server stops reading requests (backpressure)."""
_REQUEST = struct.Struct(">IHHQQI")
_CHUNK = struct.Struct(">IHHQI")
_OPTION = struct.Struct(">QII")


class _Disconnect(Exception):
    """The peer went away, or broke the protocol badly enough that we hang up."""


ReadAt = Callable[[int, int], bytes]


class NbdServer:
    """Serve ``size`` bytes, read with ``read_at(offset, length)``, as a read-only NBD export.

    Use as a context manager; :attr:`url` is what qemu-img takes::

        with NbdServer(source.read_at, size) as server:
            try:
                qemu.convert(server.url, "vmdk", dest)
            except QemuImgError:
                if server.first_error:
                    raise server.first_error
                raise

    ``on_read(n)`` is called after each read is sent (from worker threads), e.g. a
    :class:`~importer.progress.Progress` ``advance``.
    """

    def __init__(
        self,
        read_at: ReadAt,
        size: int,
        socket_dir: Path | None = None,
        *,
        export_name: str = "",
        description: str = "",
        on_read: Callable[[int], None] | None = None,
        workers: int = 4,
    ) -> None:
        self.read_at = read_at
        self.size = size
        self.export_name = export_name
        self.description = description
        self.on_read = on_read
        self._socket_dir = socket_dir
        self._workers = workers
        self._lock = threading.Lock()
        self._first_error: Exception | None = None
        self._bytes_served = 0
        self._connections = 0
        self._stopping = threading.Event()
        self._sessions: set[_Session] = set()
        self._threads: list[threading.Thread] = []
        self._directory: str | None = None
        self._listener: socket.socket | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accept_thread: threading.Thread | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        if self._directory is None:
            raise RuntimeError("NbdServer is not started")
        return os.path.join(self._directory, "nbd.sock")

    @property
    def url(self) -> str:
        """The NBD URL of the (default or named) export, for qemu-img."""
        return f"nbd+unix:///{quote(self.export_name)}?socket={quote(self.socket_path)}"

    @property
    def first_error(self) -> Exception | None:
        """The first exception ``read_at`` raised (answered to the client as EIO)."""
        with self._lock:
            return self._first_error

    @property
    def bytes_served(self) -> int:
        with self._lock:
            return self._bytes_served

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    def start(self) -> "NbdServer":
        self._directory = tempfile.mkdtemp(prefix="cdi-nbd-", dir=self._socket_dir)
        path = self.socket_path
        if len(os.fsencode(path)) > 107:
            self._remove_directory()
            raise ValueError(f"socket path {path!r} is too long for a unix socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        listener.settimeout(0.2)  # the accept loop checks for close() this often
        self._listener = listener
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="nbd-read")
        self._accept_thread = threading.Thread(target=self._accept_loop, name="nbd-accept", daemon=True)
        self._accept_thread.start()
        log.debug("NBD server for %d bytes listening on %s", self.size, path)
        return self

    def close(self) -> None:
        """Stop accepting, hang up on every client, remove the socket. Idempotent.

        Reads still running in ``read_at`` are not waited for: their replies are dropped.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.hang_up()
        if self._executor is not None:  # queued reads are cancelled, running ones dropped
            self._executor.shutdown(wait=False, cancel_futures=True)
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._remove_directory()

    def __enter__(self) -> "NbdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if not self._stopping.is_set():
                    log.exception("NBD server: accept failed")
                return
            conn.settimeout(None)
            session = _Session(self, conn)
            thread = threading.Thread(target=self._serve, args=(session,), name="nbd-conn", daemon=True)
            with self._lock:
                self._connections += 1
                self._sessions.add(session)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, session: "_Session") -> None:
        try:
            session.run()
        finally:
            with self._lock:
                self._sessions.discard(session)

    def _read(self, offset: int, length: int) -> bytes:
        """``read_at`` with its contract checked: exactly ``length`` bytes."""
        data = self.read_at(offset, length)
        if len(data) != length:
            raise SourceUnavailable(
                f"source returned {len(data)} bytes at offset {offset}, expected {length}"
            )
        return data

    def _record(self, error: Exception) -> None:
        with self._lock:
            if self._first_error is None:
                self._first_error = error
        log.warning("NBD read failed, answered with EIO: %s", error)

    def _served(self, nbytes: int) -> None:
        with self._lock:
            self._bytes_served += nbytes
        if self.on_read is not None:
            try:
                self.on_read(nbytes)
            except Exception:  # a progress listener must not break the transfer
                log.exception("NBD on_read callback failed")


class _Session:
    """One client connection: handshake, then requests until DISC or hang-up."""

    def __init__(self, server: NbdServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self._send_lock = threading.Lock()
        self._slots = threading.Semaphore(MAX_INFLIGHT)
        self._pending: list[Future[None]] = []
        self._no_zeroes = False
        self._structured = False

    def run(self) -> None:
        try:
            if self._handshake():
                self._transmission()
        except (_Disconnect, OSError) as error:
            log.debug("NBD connection ended: %s", error)
        finally:
            wait(self._pending)
            self.hang_up()

    def hang_up(self) -> None:
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buffer = bytearray()
        while len(buffer) < n:
            chunk = self.conn.recv(min(n - len(buffer), 1 << 20))
            if not chunk:
                raise _Disconnect("client closed the connection")
            buffer += chunk
        return bytes(buffer)

    def _discard(self, n: int) -> None:
        while n > 0:
            n -= len(self._recv(min(n, 1 << 20)))

    def _send(self, *parts: bytes) -> None:
        with self._send_lock:
            for part in parts:
                self.conn.sendall(part)

    # -- handshake ---------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Negotiate; True when transmission starts, False when the client aborted."""
        self._send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", self._recv(4))
        if client_flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            raise _Disconnect(f"unknown client flags {client_flags:#x}")
        self._no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = _OPTION.unpack(self._recv(_OPTION.size))
            if magic != IHAVEOPT:
                raise _Disconnect(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_DATA:
                raise _Disconnect(f"option {option} with {length} bytes of data")
            outcome = self._option(option, self._recv(length))
            if outcome is not None:
                return outcome

    def _option(self, option: int, data: bytes) -> bool | None:
        """Answer one option: True to start transmission, False to stop, None to go on."""
        if option == OPT_EXPORT_NAME:
            return self._export_name(data)
        if option == OPT_ABORT:
            self._reply(option, REP_ACK)
            return False
        if option == OPT_LIST:
            self._list(data)
        elif option in (OPT_INFO, OPT_GO):
            return True if self._info(option, data) and option == OPT_GO else None
        elif option == OPT_STRUCTURED_REPLY:
            self._structured_reply(data)
        else:
            self._reply(option, REP_ERR_UNSUP, f"option {option} is not supported".encode())
        return None

    def _reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self._send(struct.pack(">QIII", REPLY_MAGIC, option, kind, len(data)), data)

    def _transmission_flags(self) -> int:
        flags = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN
        return flags | FLAG_SEND_DF if self._structured else flags

    def _structured_reply(self, data: bytes) -> None:
        if data:
            self._reply(OPT_STRUCTURED_REPLY, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")
            return
        self._structured = True
        self._reply(OPT_STRUCTURED_REPLY, REP_ACK)

    def _export_name(self, data: bytes) -> bool:
        if data != self.server.export_name.encode():
            raise _Disconnect(f"unknown export {data!r}")  # EXPORT_NAME cannot answer errors
        reply = struct.pack(">QH", self.server.size, self._transmission_flags())
        self._send(reply if self._no_zeroes else reply + bytes(124))
        return True

    def _list(self, data: bytes) -> None:
        if data:
            self._reply(OPT_LIST, REP_ERR_INVALID, b"LIST takes no data")
            return
        name = self.server.export_name.encode()
        self._reply(OPT_LIST, REP_SERVER, struct.pack(">I", len(name)) + name)
        self._reply(OPT_LIST, REP_ACK)

    def _info(self, option: int, data: bytes) -> bool:
        """Answer INFO or GO; True when the export was accepted."""
        parsed = _parse_info_request(data)
        if parsed is None:
            self._reply(option, REP_ERR_INVALID, b"malformed INFO/GO request")
            return False
        name, requests = parsed
        if name != self.server.export_name:
            self._reply(option, REP_ERR_UNKNOWN, f"no export named {name!r}".encode())
            return False
        export = struct.pack(">HQH", INFO_EXPORT, self.server.size, self._transmission_flags())
        self._reply(option, REP_INFO, export)
        if INFO_NAME in requests:
            self._reply(option, REP_INFO, struct.pack(">H", INFO_NAME) + name.encode())
        if INFO_DESCRIPTION in requests and self.server.description:
            text = self.server.description.encode()[:4096]
            self._reply(option, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + text)
        if INFO_BLOCK_SIZE in requests:
            sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK, MAX_BLOCK)
            self._reply(option, REP_INFO, sizes)
        self._reply(option, REP_ACK)
        return True

    # -- transmission ------------------------------------------------------------------------

    def _transmission(self) -> None:
        while True:
            magic, flags, kind, handle, offset, length = _REQUEST.unpack(self._recv(_REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise _Disconnect(f"bad request magic {magic:#x}")
            if kind == CMD_DISC:
                return
            if kind == CMD_WRITE:
                self._refuse_write(handle, length)
            elif kind in (CMD_TRIM, CMD_WRITE_ZEROES):
                self._error(handle, EPERM, "the export is read-only")
            elif kind != CMD_READ:  # FLUSH, CACHE, BLOCK_STATUS, unknown
                self._error(handle, EINVAL, f"command {kind} is not supported")
            elif flags & ~self._read_flags():
                self._error(handle, EINVAL, f"unsupported command flags {flags:#x}")
            elif offset + length > self.server.size or length > MAX_BLOCK:
                self._error(handle, EINVAL, f"read of {length} bytes at {offset} is out of range")
            else:
                self._submit(handle, offset, length)

    def _read_flags(self) -> int:
        return CMD_FLAG_DF if self._structured else 0

    def _refuse_write(self, handle: int, length: int) -> None:
        if length > 2 * MAX_BLOCK:
            raise _Disconnect(f"write of {length} bytes to a read-only export")
        self._discard(length)
        self._error(handle, EPERM, "the export is read-only")

    def _error(self, handle: int, code: int, message: str) -> None:
        """An error reply: an ERROR chunk with the reason when structured, else simple."""
        if not self._structured:
            self._send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, code, handle))
            return
        text = message.encode(errors="replace")[:4096]
        payload = struct.pack(">IH", code, len(text)) + text
        self._chunk(handle, REPLY_TYPE_ERROR, payload)

    def _chunk(self, handle: int, kind: int, payload: bytes, prefix: bytes = b"") -> None:
        """One structured reply chunk, always the last (DONE) of its reply."""
        length = len(prefix) + len(payload)
        header = _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, kind, handle, length)
        self._send(header, prefix, payload)

    def _data(self, handle: int, offset: int, data: bytes) -> None:
        """A successful read: the data in one chunk (or a simple reply)."""
        if not self._structured:
            self._send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle), data)
        elif data:
            self._chunk(handle, REPLY_TYPE_OFFSET_DATA, data, struct.pack(">Q", offset))
        else:  # a chunk must describe at least one byte; an empty read is just "done"
            self._chunk(handle, REPLY_TYPE_NONE, b"")

    def _submit(self, handle: int, offset: int, length: int) -> None:
        self._slots.acquire()
        executor = self.server._executor
        assert executor is not None
        try:
            future = executor.submit(self._serve_read, handle, offset, length)
        except RuntimeError:  # executor shut down: the server is closing
            self._slots.release()
            raise _Disconnect("server closing") from None
        future.add_done_callback(lambda _: self._slots.release())  # also when cancelled
        self._pending = [f for f in self._pending if not f.done()] + [future]

    def _serve_read(self, handle: int, offset: int, length: int) -> None:
        try:
            self._answer_read(handle, offset, length)
        except OSError as error:  # the client is gone; nothing to answer
            log.debug("NBD reply to a closed connection dropped: %s", error)

    def _answer_read(self, handle: int, offset: int, length: int) -> None:
        try:
            data = self.server._read(offset, length) if length else b""
        except Exception as error:  # noqa: BLE001 - every failure must become EIO
            self.server._record(error)
            self._error(handle, EIO, f"read of {length} bytes at {offset} failed: {error}")
            return
        self._data(handle, offset, data)
        self.server._served(length)


def _parse_info_request(data: bytes) -> tuple[str, list[int]] | None:
    """INFO/GO data: name length u32, name, request count u16, requests u16 each."""
    if len(data) < 6:
        return None
    (name_length,) = struct.unpack_from(">I", data)
    if name_length > len(data) - 6:
        return None
    (count,) = struct.unpack_from(">H", data, 4 + name_length)
    tail = data[6 + name_length:]
    if len(tail) != 2 * count:
        return None
    try:
        name = data[4:4 + name_length].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name, list(struct.unpack(f">{count}H", tail))
