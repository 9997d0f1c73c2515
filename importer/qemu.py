"""qemu-img behind one small class: inspect, validate, convert, create, resize.

Everything the importer asks of qemu-img goes through two seams of :class:`QemuImg`:
:meth:`QemuImg.run` (run to completion, return stdout) and :meth:`QemuImg.stream` (call back
for every line of stdout while it runs; ``qemu-img -p`` ends its progress lines with ``\\r``).
A failure is one exception type, :class:`QemuImgError`, carrying the command, exit status and
stderr; the higher-level helpers translate it into the import vocabulary of
:mod:`importer.errors` (a corrupt or hostile image is :class:`~importer.errors.InvalidImage`).

Safety rules, the reason this module exists rather than a bare ``subprocess`` call:

* **Inspect before converting.** :meth:`QemuImg.info` runs ``qemu-img info`` under a CPU and
  an address-space limit and a wall-clock timeout, because a crafted header can make qemu
  allocate or loop (a 200 KiB qcow2 can ask for a 32 MiB L1 table, a VMDK for far more).
  :func:`validate` then refuses what must never be converted: backing files, qcow2 external
  data files, VMDK extents in other files (a descriptor naming ``/etc/shadow`` would copy that
  file into the disk), formats outside :data:`SUPPORTED_FORMATS`, and images larger than the
  target.
* **Never let qemu probe.** :meth:`QemuImg.convert` always passes ``-f``: a raw image whose
  first bytes look like a qcow2 header must stay raw, or its "backing file" would be read.
* **Undo on failure.** A failed convert or create removes the partial output file (never a
  block device).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from .errors import CdiImportError, ImageTooLarge, InvalidImage, UnsafeImage
from .sandbox import Exposure, Sandbox, exposure_of

log = logging.getLogger(__name__)

GiB = 1024 * 1024 * 1024

SUPPORTED_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"})
"""What qemu-img may be asked to read. Everything else (qed, parallels, dmg, cloop, luks ...)
is refused: each extra format driver is attack surface nobody asked for."""

UNSUPPORTED_PREALLOCATION = "Unsupported preallocation mode"
"""qemu-img's words when a driver cannot preallocate the way asked; only this moves the
preallocation fallback on to the next mode (any other failure is final)."""

_PROGRESS = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")
_NEWLINES = re.compile(rb"[\r\n]")


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to a qemu-img child before it execs.

    CPU time catches loops on crafted metadata, address space catches huge allocations;
    both end the child (SIGXCPU / allocation failure) instead of the pod (OOM kill).
    """

    cpu_seconds: int | None = 30
    address_space: int = 1 * GiB

    def apply(self) -> None:
        """Run in the child between fork and exec (``preexec_fn``).

        Only calls into the already-imported :mod:`resource` module: no imports, no locks,
        no logging, which is what keeps a ``preexec_fn`` safe in a threaded parent.
        """
        if self.cpu_seconds is not None:
            _lower_limit(resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)
        _lower_limit(resource.RLIMIT_AS, self.address_space, self.address_space)


CONVERT_LIMITS = Limits(cpu_seconds=None, address_space=2 * GiB)
"""A conversion may take hours of CPU on a big image, but its memory is bounded by qemu's
caches, not by the image: the address-space cap only catches a runaway."""


def _lower_limit(which: int, soft: int, hard: int) -> None:
    """Set a limit, never above the hard limit the parent already has (that would fail)."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


class QemuImgError(CdiImportError):
    """qemu-img failed: the command, its exit status (None: never finished) and its stderr."""

    reason = "Error"
    permanent = True

    def __init__(
        self,
        message: str | None,
        *,
        command: Sequence[str],
        returncode: int | None,
        stderr: str,
        timed_out: bool = False,
    ) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out
        super().__init__(message or f"{' '.join(self.command[:2])} failed: {self.detail}")

    def explain(self, message: str) -> "QemuImgError":
        """Replace the message with one that says what was being done; keep the details."""
        self.args = (message,)
        return self

    @property
    def detail(self) -> str:
        """qemu-img's own message, without the ``qemu-img: `` prefixes, on one line."""
        return _clean_stderr(self.stderr) or _exit_description(self.returncode)

    @property
    def killed_by(self) -> int | None:
        """The signal that ended qemu-img, if one did (SIGXCPU: CPU limit, SIGKILL ...)."""
        if self.returncode is not None and self.returncode < 0:
            return -self.returncode
        return None


def _clean_stderr(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(line.removeprefix("qemu-img: ") for line in lines)


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "did not finish"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(frozen=True)
class VmdkExtent:
    filename: str
    format: str
    virtual_size: int | None


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info --output=json`` says about an image, the parts we act on."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None = None
    """Bytes the image occupies where it is stored (absent for NBD)."""
    cluster_size: int | None = None
    backing_filename: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    """qcow2 external data file: the guest data lives in another file."""
    extents: tuple[VmdkExtent, ...] = ()
    """VMDK extents: the files the descriptor points at (the image itself for monolithic)."""
    create_type: str | None = None
    corrupt: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ImageInfo":
        specific = data.get("format-specific") or {}
        details: dict[str, Any] = specific.get("data") or {}
        return cls(
            filename=str(data.get("filename", "")),
            format=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=_optional_int(data.get("actual-size")),
            cluster_size=_optional_int(data.get("cluster-size")),
            backing_filename=data.get("backing-filename") or data.get("full-backing-filename"),
            backing_format=data.get("backing-filename-format"),
            data_file=details.get("data-file") if specific.get("type") == "qcow2" else None,
            extents=tuple(_extent(e) for e in details.get("extents", ())),
            create_type=details.get("create-type"),
            corrupt=bool(details.get("corrupt", False)),
            raw=data,
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _extent(data: dict[str, Any]) -> VmdkExtent:
    return VmdkExtent(
        filename=str(data.get("filename", "")),
        format=str(data.get("format", "")),
        virtual_size=_optional_int(data.get("virtual-size")),
    )


def validate(
    info: ImageInfo,
    allowed_formats: Iterable[str] = SUPPORTED_FORMATS,
    capacity: int | None = None,
) -> None:
    """Refuse an image qemu-img must not convert; return quietly when it is fine.

    Raises InvalidImage (format not allowed, image marked corrupt), UnsafeImage (backing
    file, external data file, VMDK extents elsewhere) or ImageTooLarge (virtual size above
    ``capacity``, when given).
    """
    _check_format(info, allowed_formats)
    _check_self_contained(info)
    if info.corrupt:
        raise InvalidImage(f"image {info.filename} is marked corrupt by qemu-img: refusing")
    if capacity is not None and info.virtual_size > capacity:
        raise ImageTooLarge(info.virtual_size, capacity)


def _check_format(info: ImageInfo, allowed_formats: Iterable[str]) -> None:
    allowed = SUPPORTED_FORMATS.intersection(allowed_formats)
    if info.format not in allowed:
        raise InvalidImage(
            f"image {info.filename} has format {info.format!r}, which is not supported "
            f"(supported: {', '.join(sorted(allowed))})"
        )


def _check_self_contained(info: ImageInfo) -> None:
    """An import is one file: anything that makes qemu read a second file is refused."""
    if info.backing_filename:
        raise UnsafeImage(
            f"image {info.filename} has a backing file {info.backing_filename!r}: refusing "
            "(an imported image must not depend on other files)"
        )
    if info.data_file:
        raise UnsafeImage(
            f"image {info.filename} keeps its data in an external file {info.data_file!r}: "
            "refusing"
        )
    foreign = [e.filename for e in info.extents if not _same_file(e.filename, info.filename)]
    if foreign:
        raise UnsafeImage(
            f"image {info.filename} is a VMDK descriptor whose extents point at other files "
            f"({', '.join(repr(f) for f in foreign)}): refusing"
        )


def _same_file(extent: str, image: str) -> bool:
    if extent == image:
        return True
    if "://" in extent or "://" in image or not extent:
        return False
    return os.path.realpath(extent) == os.path.realpath(image)


class QemuImg:
    """The qemu-img binary, run with safe defaults.

    ``limits`` and ``info_timeout`` bound ``qemu-img info``; conversions are not limited in
    time (a large image over a slow link legitimately takes hours) and not in memory (qemu's
    own usage during a convert is bounded by its cache sizes, not by the image's claims,
    once info has vetted the header).
    """

    PREALLOCATION_ATTEMPTS: tuple[tuple[str, ...], ...] = (
        ("-o", "preallocation=falloc"),
        ("-o", "preallocation=full"),
        ("-S", "0"),
    )
    """Tried in order when preallocating a file target, moving on only on
    :data:`UNSUPPORTED_PREALLOCATION`; ``-S 0`` (write every zero) works everywhere."""

    def __init__(
        self,
        binary: str = "qemu-img",
        *,
        limits: Limits = Limits(),
        info_timeout: float = 60.0,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.binary = binary
        self.limits = limits
        self.info_timeout = info_timeout
        self.sandbox = sandbox if sandbox is not None else Sandbox.default()

    # -- the two seams ---------------------------------------------------------------------

    def run(
        self, args: Sequence[str], timeout: float | None = None, limits: Limits | None = None,
        exposure: Exposure = Exposure(),
    ) -> bytes:
        """Run ``qemu-img args`` to completion, in the sandbox seeing only ``exposure``;
        stdout on success, QemuImgError otherwise."""
        command = [self.binary, *args]
        log.debug("running %s", command)
        process = _spawn(self._wrap(command, exposure), limits)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            _, stderr = process.communicate()
            raise QemuImgError(
                f"{self.binary} {args[0] if args else ''} did not finish within {timeout:g} s",
                command=command,
                returncode=None,
                stderr=_decode(stderr),
                timed_out=True,
            ) from None
        except BaseException:
            _kill(process)
            process.wait()
            raise
        if process.returncode != 0:
            raise _failed(command, self.sandbox.status(process.returncode), _decode(stderr))
        return stdout

    def stream(self, args: Sequence[str], on_line: Callable[[str], None],
               exposure: Exposure = Exposure(), limits: Limits | None = None) -> None:
        """Run ``qemu-img args``, calling ``on_line`` for every stdout line as it comes.

        Lines end at ``\\r`` or ``\\n`` (qemu-img's ``-p`` redraws one line with ``\\r``);
        empty lines are skipped. If ``on_line`` raises, qemu-img is killed and the exception
        propagates. stderr is collected on a thread so a chatty qemu cannot block on a full
        pipe.
        """
        command = [self.binary, *args]
        log.debug("streaming %s", command)
        process = _spawn(self._wrap(command, exposure), limits)
        assert process.stdout is not None and process.stderr is not None
        stderr = _Collector(process.stderr)
        try:
            for line in iter_lines(process.stdout):
                on_line(line)
        except BaseException:
            _kill(process)
            process.wait()
            stderr.join()
            raise
        returncode = process.wait()
        stderr.join()
        if returncode != 0:
            raise _failed(command, self.sandbox.status(returncode), stderr.text)

    def _wrap(self, command: list[str], exposure: Exposure) -> list[str]:
        """The command to spawn: the binary found on PATH first (inside the sandbox a
        missing binary would only show as bwrap's failure), then wrapped."""
        binary = shutil.which(command[0])
        if binary is None:
            raise _not_started(command, FileNotFoundError(errno.ENOENT, "No such file or directory"))
        return self.sandbox.wrap([binary, *command[1:]], exposure)

    # -- what the importer asks of qemu-img -----------------------------------------------

    def info(self, source: str | os.PathLike[str], fmt: str | None = None) -> ImageInfo:
        """``qemu-img info`` under CPU/memory limits and a timeout, as an ImageInfo.

        ``source`` is a local path or an ``nbd+unix://`` URL. Without ``fmt`` qemu probes the
        format, which is fine for *looking*; :meth:`convert` never probes. Any failure
        (corrupt header, hostile sizes, limits hit) is InvalidImage with qemu's message.
        """
        target = _argument(source)
        args = ["info", "--output=json", *(["-f", fmt] if fmt else []), target]
        try:
            out = self.run(args, timeout=self.info_timeout, limits=self.limits,
                           exposure=exposure_of(target))
        except QemuImgError as error:
            raise self._invalid(target, error) from error
        try:
            return ImageInfo.from_json(json.loads(out))
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidImage(f"could not read image {target}: unexpected qemu-img info "
                               f"output ({error})") from error

    def _invalid(self, target: str, error: QemuImgError) -> CdiImportError:
        if error.returncode is None and not error.timed_out:
            return error  # qemu-img itself could not run: not the image's fault
        if error.timed_out:
            why = f"qemu-img info did not finish within {self.info_timeout:g} s"
        elif error.killed_by == signal.SIGXCPU:
            why = f"qemu-img info used more than {self.limits.cpu_seconds} s of CPU"
        else:
            why = error.detail
        return InvalidImage(f"could not read image {target}: {why}")

    def convert(
        self,
        src: str | os.PathLike[str],
        src_format: str,
        dest: str | os.PathLike[str],
        *,
        progress: Callable[[float], None] | None = None,
        preallocate: bool = False,
        dest_is_block: bool = False,
        cache: str = "writeback",
    ) -> None:
        """Convert ``src`` (read as ``src_format``, never probed) to raw at ``dest``.

        ``progress`` receives increasing percentages from qemu-img's ``-p`` output. A block
        device target is written in place (``-n``), and preallocated by writing every zero
        (``-S 0``); a file target is preallocated with the first mode the filesystem takes.
        On failure a partially written file is removed and QemuImgError raised.
        """
        if src_format not in SUPPORTED_FORMATS:
            raise InvalidImage(f"cannot convert from format {src_format!r}: not supported")
        source, target = _argument(src), _argument(dest)
        base = ["convert", "-p", "-t", cache, "-f", src_format, "-O", "raw"]
        if dest_is_block:
            base.append("-n")
        on_line = _progress_parser(progress)

        exposure = exposure_of(source, target)

        def attempt(extra: tuple[str, ...]) -> None:
            self.stream([*base, *extra, source, target], on_line, exposure, CONVERT_LIMITS)

        try:
            _with_preallocation(self._convert_attempts(preallocate, dest_is_block), attempt)
        except QemuImgError as error:
            _remove_partial(target)
            raise error.explain(f"could not convert {source} to raw: {error.detail}")

    def _convert_attempts(self, preallocate: bool, dest_is_block: bool) -> list[tuple[str, ...]]:
        if not preallocate:
            return [()]
        if dest_is_block:
            return [("-S", "0")]  # -o is ignored with -n: the device exists already
        return list(self.PREALLOCATION_ATTEMPTS)

    def create_raw(self, dest: str | os.PathLike[str], size: int, preallocate: bool = False) -> None:
        """Create a blank raw image of ``size`` bytes (``qemu-img create -f raw``)."""
        target = _argument(dest)
        attempts: list[tuple[str, ...]] = [()]
        if preallocate:
            attempts = [("-o", "preallocation=falloc"), ("-o", "preallocation=full")]

        def attempt(extra: tuple[str, ...]) -> None:
            self.run(["create", "-f", "raw", *extra, target, str(size)],
                     exposure=Exposure(writable=(target,)), limits=CONVERT_LIMITS)

        try:
            _with_preallocation(attempts, attempt)
        except QemuImgError as error:
            _remove_partial(target)
            raise error.explain(f"could not create a blank image of {size} bytes: {error.detail}")

    def resize_raw(self, path: str | os.PathLike[str], size: int, preallocate: bool = False) -> None:
        """Grow a raw file to ``size`` bytes (``qemu-img resize -f raw``); never shrinks.

        A target already at least ``size`` bytes is left alone: shrinking would cut off the
        end of the guest's disk.
        """
        target = _argument(path)
        if os.stat(target).st_size >= size:
            return
        attempts: list[tuple[str, ...]] = [()]
        if preallocate:
            attempts = [("--preallocation=falloc",), ("--preallocation=full",)]

        def attempt(extra: tuple[str, ...]) -> None:
            self.run(["resize", "-f", "raw", *extra, target, str(size)],
                     exposure=Exposure(writable=(target,)), limits=CONVERT_LIMITS)

        try:
            _with_preallocation(attempts, attempt)
        except QemuImgError as error:
            raise error.explain(f"could not resize {target} to {size} bytes: {error.detail}")


def _with_preallocation(
    attempts: Sequence[tuple[str, ...]], attempt: Callable[[tuple[str, ...]], None]
) -> None:
    """Try each set of extra arguments in turn; move on only when the mode is unsupported."""
    for index, extra in enumerate(attempts):
        try:
            attempt(extra)
            return
        except QemuImgError as error:
            last = index == len(attempts) - 1
            if last or UNSUPPORTED_PREALLOCATION not in error.stderr:
                raise
            log.info("qemu-img: %s; trying %s", error.detail, " ".join(attempts[index + 1]))


def _progress_parser(progress: Callable[[float], None] | None) -> Callable[[str], None]:
    """An on_line callback turning ``(NN.NN/100%)`` lines into increasing percentages."""
    last = -1.0

    def on_line(line: str) -> None:
        nonlocal last
        match = _PROGRESS.search(line)
        if match is None or progress is None:
            return
        percent = float(match.group(1))
        if percent > last:
            last = percent
            progress(percent)

    return on_line


def iter_lines(stream: IO[bytes]) -> Iterator[str]:
    """The lines of a byte stream, split on ``\\r`` and ``\\n``, empty ones skipped."""
    pending = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        pieces = _NEWLINES.split(pending + chunk)
        pending = pieces.pop()
        yield from (p.decode(errors="replace") for p in pieces if p.strip())
    if pending.strip():
        yield pending.decode(errors="replace")


class _Collector:
    """Reads a pipe to the end on a thread, so the child never blocks writing to it."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._data = b""
        self._thread = threading.Thread(target=self._read, name="qemu-img-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._data = self._pipe.read()

    def join(self) -> None:
        self._thread.join()
        self._pipe.close()

    @property
    def text(self) -> str:
        return _decode(self._data)


def _spawn(command: list[str], limits: Limits | None) -> subprocess.Popen[bytes]:
    """Start a child in its own session, so :func:`_kill` can end it with all it started."""
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=limits.apply if limits else None,
        )
    except OSError as error:
        raise _not_started(command, error) from error


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group, so nothing is left holding our pipes."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _argument(path: str | os.PathLike[str]) -> str:
    """A path as a qemu-img argument: absolute (the sandbox binds it at the same place, and
    one starting with ``-`` must not read as an option); URLs pass unchanged."""
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(text)


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def _not_started(command: list[str], error: OSError) -> QemuImgError:
    return QemuImgError(
        f"cannot run {command[0]}: {error.strerror or error}",
        command=command,
        returncode=None,
        stderr="",
    )


def _failed(command: list[str], returncode: int, stderr: str) -> QemuImgError:
    return QemuImgError(None, command=command, returncode=returncode, stderr=stderr)


def _remove_partial(target: str) -> None:
    """Remove what a failed run left behind, if it is a regular file (never a device)."""
    try:
        if stat.S_ISREG(os.lstat(target).st_mode):
            os.unlink(target)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("could not remove partial output %s: %s", target, error)
