"""Decode uploads in child processes the operating system holds to a memory budget and a deadline.

A hostile image (a scan bomb, a canvas bomb, a decoder bug) costs a child process, never the
worker: each child runs under ``RLIMIT_AS`` (an allocation past the budget fails inside the
child), at a lower CPU priority than the workers, and is killed with SIGKILL when a decode
outlives its deadline; a fresh child replaces it. Each worker process starts its own children
after gunicorn forks it (``warm`` at app creation, or on first use). ``workers + queue`` uploads
at most are admitted per process, and an admitted one waits ``wait`` seconds at most for a child;
otherwise it answers 503 with ``Retry-After``, so uploads cannot take every thread.
The worker checks only the size; the header checks (``pictures.check_upload``) run in the child.

Parent and child speak over a socketpair: a JSON header and raw bytes each way, never pickle
(the child has read hostile input and is not trusted). The child imports ``service.pictures``
without the Flask application (see ``_BOOTSTRAP``) and returns its exact output.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.decoder_child import FRAME, KINDS, peak_rss_kb, receive, recv_exact
from service.pictures import Picture, PictureError, ProfilePicture, check_size

log = logging.getLogger(__name__)

_SERVICE_DIR = os.path.dirname(os.path.abspath(__file__))
# Runs ``decoder_main`` with ``service`` as a bare namespace: importing the real package would load Flask,
# SQLAlchemy and the app (~1.2 s and ~75 MB) into every child that only needs Pillow.
_BOOTSTRAP = (
    "import sys, types\n"
    "package = types.ModuleType('service'); package.__path__ = [sys.argv[1]]; sys.modules['service'] = package\n"
    "from service.decoder_child import decoder_main\n"
    "decoder_main(int(sys.argv[2]), int(sys.argv[3]))\n"
)
_CHILD_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
STARTUP_TIMEOUT = 10.0  # importing Pillow in a new child, on a loaded machine


@dataclass(frozen=True)
class DecoderSettings:
    """How many children, how many waiting uploads, and the limits of each decode."""

    workers: int = 2
    queue: int = 2
    timeout: float = 1.5
    memory_mb: int = 512
    wait: float = 0.4
    retry_after: int = 2
    max_scans: int = 100

    @classmethod
    def from_config(cls, config: Any) -> DecoderSettings:
        return cls(workers=config["DECODE_WORKERS"], queue=config["DECODE_QUEUE"],
                   timeout=config["DECODE_TIMEOUT_SECONDS"], memory_mb=config["DECODE_MEMORY_MB"],
                   wait=config["DECODE_WAIT_SECONDS"], retry_after=config["DECODE_RETRY_AFTER_SECONDS"],
                   max_scans=config["DECODE_MAX_SCANS"])


@dataclass(frozen=True)
class Report:
    """What one decode cost its child: wall time and peak resident memory (VmHWM)."""

    seconds: float
    peak_rss_kb: int
    outcome: str  # "ok", "refused", "timeout", "crashed", "memory"


class DecoderPool:
    """The children of one process, and the admission that bounds the decodes in flight."""

    def __init__(self, settings: DecoderSettings) -> None:
        self.settings = settings
        self._admission = threading.BoundedSemaphore(settings.workers + settings.queue)
        self._idle: queue.LifoQueue[_Child | None] = queue.LifoQueue()
        for _ in range(settings.workers):
            self._idle.put(None)  # started on first use
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self.reports: deque[Report] = deque(maxlen=1000)  # the last decodes, for tests and benchmarks
        self.decodes = 0  # reports ever recorded: ``reports_since(mark)`` finds the newer ones
        self.in_flight = 0  # uploads admitted: decoding or waiting for a child

    def warm(self) -> None:
        """Start every child now, in the background, so that the first upload does not wait for Pillow's import."""
        for _ in range(self.settings.workers):
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                return
            if child is None:
                self._replace_later(None)
            else:
                self._idle.put(child)

    def run(self, function: Callable[..., Any], data: bytes, *, max_bytes: int) -> Any:
        """Return ``function(data, max_bytes=...)`` computed in a child; raise ``PictureError`` on any refusal."""
        if self.settings.workers <= 0:  # in the worker itself: only for benchmarks that compare the two
            return function(data, max_bytes=max_bytes, max_scans=self.settings.max_scans)
        kind = function.__name__
        if kind not in KINDS:
            raise TypeError(f"not a picture pipeline: {kind}")
        # The header checks (check_upload) run in the child, before it decodes: their worst case (~50 ms of
        # Python on 5 MB of empty segments) then costs the worker nothing. Size alone is checked here.
        check_size(data, max_bytes=max_bytes)
        if not self._admission.acquire(blocking=False):
            raise self._busy()
        self._count(+1)
        try:
            try:
                child = self._idle.get(timeout=self.settings.wait)
            except queue.Empty:
                raise self._busy() from None
            replace = True
            try:
                if child is None or not child.alive():
                    if child is not None:
                        self._retire(child)
                    child = self._start()
                header, payload = child.call({"kind": kind, "max_bytes": max_bytes,
                                              "max_scans": self.settings.max_scans}, data, self.settings.timeout)
                replace = header["outcome"] == "memory"  # that child exits after answering
            except _Lost as lost:
                self._record(lost.report)
                child.kill()  # at once: it may still be burning a core
                log.warning("picture decoder %s replaced: %s", lost.report.outcome, lost.message)  # one line
                raise PictureError(lost.message) from None
            finally:
                if replace:
                    self._replace_later(child)
                else:
                    self._idle.put(child)
        finally:
            self._count(-1)
            self._admission.release()
        self._record(Report(header["seconds"], header["peak_rss_kb"], header["outcome"]))
        if "error" in header:
            raise PictureError(header["error"], header["status"])
        return _unpack(kind, header["pictures"], payload)

    def _count(self, step: int) -> None:
        with self._lock:
            self.in_flight += step

    def cpu_seconds(self) -> float:
        """User plus system CPU time the live children have used (for benchmarks)."""
        ticks = os.sysconf("SC_CLK_TCK")
        with self._lock:
            children = list(self._children)
        total = 0.0
        for child in children:
            try:
                with open(f"/proc/{child.process.pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total

    def close(self) -> None:
        """Stop every child of this pool."""
        with self._lock:
            children, self._children = list(self._children), set()
        for child in children:
            child.stop()

    def _start(self) -> _Child:
        child = _Child.spawn(self.settings.memory_mb)
        with self._lock:
            self._children.add(child)
        return child

    def _replace_later(self, child: _Child | None) -> None:
        """Reap ``child`` and start its successor off the request's path; the slot is free once it runs."""
        def replace() -> None:
            try:
                if child is not None:
                    self._retire(child)
                successor = self._start()
            except Exception:  # fork failed: the next upload that takes the slot tries again
                log.warning("could not start a decoder process", exc_info=True)
                successor = None
            self._idle.put(successor)
        threading.Thread(target=replace, name="decoder-replace", daemon=True).start()

    def _retire(self, child: _Child) -> None:
        child.stop()
        with self._lock:
            self._children.discard(child)

    def reports_since(self, mark: int) -> list[Report]:
        """The reports recorded after ``decodes`` was ``mark`` (at most the last 1,000)."""
        with self._lock:
            return list(self.reports)[len(self.reports) - min(self.decodes - mark, len(self.reports)):]

    def _record(self, report: Report) -> None:
        with self._lock:
            self.reports.append(report)
            self.decodes += 1

    def _busy(self) -> PictureError:
        return PictureError("too many pictures are being processed, try again shortly", 503,
                            retry_after=self.settings.retry_after)


class _Lost(Exception):
    """The child overran, crashed or vanished: it is replaced and the upload refused."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.message = message
        self.report = report


class _Child:
    """One decoder process and the parent's end of its socket."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.ready = False

    @classmethod
    def spawn(cls, memory_mb: int) -> _Child:
        ours, theirs = socket.socketpair()
        # Not the worker's environment: a decoder reads hostile bytes and has no use for SECRET_KEY or DATABASE_URL.
        env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ}
        env["MALLOC_ARENA_MAX"] = "2"  # each glibc thread arena reserves 64 MB of address space
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _SERVICE_DIR, str(theirs.fileno()), str(memory_mb * 2**20)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        return cls(process, ours)

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, request: dict[str, Any], data: bytes, timeout: float) -> tuple[dict[str, Any], bytes]:
        if not self.ready:  # the child says "ready" once Pillow is imported; that is not the image's time
            self.sock.settimeout(STARTUP_TIMEOUT)
            try:
                if recv_exact(self.sock, 1) != b"R":
                    raise EOFError("no ready byte")
            except (OSError, EOFError):
                raise _Lost("image could not be decoded: the decoder did not start",
                            Report(0.0, 0, "crashed")) from None
            self.ready = True
        start = time.monotonic()
        deadline = start + timeout
        try:
            _send(self.sock, json.dumps(request).encode(), data, deadline)
            header_bytes, payload = receive(self.sock, deadline)
            return json.loads(header_bytes), payload
        except TimeoutError:
            peak = peak_rss_kb(self.process.pid)
            raise _Lost(f"image takes too long to decode (limit {timeout:g} s)",
                        Report(time.monotonic() - start, peak, "timeout")) from None
        except (OSError, EOFError, ValueError):  # EOF or garbage: the child died (a crash, or the kernel killed it)
            raise _Lost("image could not be decoded: the decoder failed on it",
                        Report(time.monotonic() - start, 0, "crashed")) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self.kill()
        self.process.wait()
        self.sock.close()


def _send(sock: socket.socket, header: bytes, payload: bytes, deadline: float) -> None:
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(FRAME.pack(len(header), len(payload)) + header)
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(payload)


def _unpack(kind: str, sizes: list[list[int]], payload: bytes) -> Any:
    pictures, offset = [], 0
    for width, height, length in sizes:
        pictures.append(Picture(payload[offset:offset + length], width, height))
        offset += length
    return ProfilePicture(*pictures) if kind == "process_profile_picture" else pictures[0]


# --- one pool per process ------------------------------------------------------------------------------------

_pools: dict[DecoderSettings, DecoderPool] = {}
_pools_pid = os.getpid()
_pools_lock = threading.Lock()


def pool_for(settings: DecoderSettings) -> DecoderPool:
    """This process's pool for ``settings``, created on first use (so after gunicorn has forked)."""
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():  # a forked copy: those children belong to the parent
            _pools.clear()
            _pools_pid = os.getpid()
        pool = _pools.get(settings)
        if pool is None:
            pool = _pools[settings] = DecoderPool(settings)
        return pool


@atexit.register
def _close_pools() -> None:
    if _pools_pid == os.getpid():
        for pool in list(_pools.values()):
            pool.close()
