"""The decoder process: run the picture pipeline on requests from its worker, under its own limits.

Started by ``service.decoder`` with ``service`` as a bare namespace package, so that only this
module, ``service.pictures`` and Pillow are imported (not the Flask application). A message each
way is ``FRAME`` (header length, payload length), a JSON header, then raw bytes.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import signal
import socket
import struct
import time
import warnings
from collections.abc import Callable
from typing import Any

from service.pictures import (CORRUPT, TOO_COSTLY, PictureError, ProfilePicture, process_flyer_image,
                              process_profile_picture)

FRAME = struct.Struct(">II")  # header length, payload length
KINDS: dict[str, Callable[..., Any]] = {
    "process_profile_picture": process_profile_picture,
    "process_flyer_image": process_flyer_image,
}
_TRIM_ABOVE_KB = 64 * 1024


def decoder_main(fd: int, memory_bytes: int) -> None:
    """Serve decode requests on socket ``fd`` until the parent closes it, never above ``memory_bytes``."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # a decoder has no file to write
    # The workers answering reads come first. Nice 5 (a quarter of a nice-0 task's CPU share): with three
    # bombs decoding, a reader's p99 was 14 ms at nice 0, 11-13 ms at 5, 8-9 ms at 10; 10 would slow a real
    # picture tenfold whenever any other process wants the core.
    os.nice(5)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on gunicorn: the parent stops us
    # Nothing a hostile file makes Pillow say may reach a log: one upload once wrote 8,000 EXIF warnings.
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    sock = socket.socket(fileno=fd)
    sock.sendall(b"R")
    while True:
        try:
            header_bytes, data = receive(sock, None)
        except (EOFError, OSError):
            return  # the worker closed our socket or died
        request = json.loads(header_bytes)
        reply, payload, done = _decode_one(request, data)
        sock.sendall(FRAME.pack(len(reply), len(payload)) + reply + payload)
        if done:
            return  # after a MemoryError, start afresh rather than trust a half-failed heap


def _decode_one(request: dict[str, Any], data: bytes) -> tuple[bytes, bytes, bool]:
    _reset_peak_rss()
    start = time.monotonic()
    reply: dict[str, Any]
    payload, done = b"", False
    try:
        result = KINDS[request["kind"]](data, max_bytes=request["max_bytes"], max_scans=request["max_scans"])
    except PictureError as error:
        reply = {"error": error.message, "status": error.status, "outcome": "refused"}
    except MemoryError:
        reply = {"error": TOO_COSTLY, "status": 400, "outcome": "memory"}
        done = True
    except Exception:  # a decoder's own failure on bytes the checks let through
        reply = {"error": CORRUPT, "status": 400, "outcome": "refused"}
    else:
        pictures = [result.full, result.thumbnail] if isinstance(result, ProfilePicture) else [result]
        reply = {"pictures": [[p.width, p.height, len(p.data)] for p in pictures], "outcome": "ok"}
        payload = b"".join(p.data for p in pictures)
    reply["seconds"] = time.monotonic() - start
    reply["peak_rss_kb"] = peak_rss_kb(os.getpid())
    if reply["peak_rss_kb"] > _TRIM_ABOVE_KB:
        _trim()
    return json.dumps(reply).encode(), payload, done


def _trim() -> None:
    """Hand the freed heap of a large decode back to the system, so an idle child stays small."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_peak_rss() -> None:
    """Start VmHWM afresh, so it reports this decode's peak rather than the child's lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def receive(sock: socket.socket, deadline: float | None) -> tuple[bytes, bytes]:
    """Read one message: a JSON header and a payload, each within ``deadline`` (``time.monotonic``) if given."""
    def read(size: int) -> bytes:
        if deadline is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        return recv_exact(sock, size)

    header_size, payload_size = FRAME.unpack(read(FRAME.size))
    return read(header_size), read(payload_size)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; ``EOFError`` if the other end closes first."""
    chunks, missing = [], size
    while missing:
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            raise EOFError("socket closed")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM) in kB, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
