"""A small threaded TCP proxy in front of Redis, with faults a network can cause.

Each accepted connection gets its own upstream connection and one pump thread per direction
(plus one sender thread per direction for delayed bytes, so a delay never accumulates). The
controls act on every connection, current and future:

- ``delay(up_ms, down_ms)``: hold each chunk that long before forwarding it (client->server is
  "up", server->client "down"); order is kept.
- ``cut()``: close every current connection (both sockets), as a network failure would.
- ``refuse(on)``: new connections are reset at once while on.
- ``half_open(mode)``: ``"subscribers"`` (connections that sent a SUBSCRIBE command) or
  ``"all"``: keep the sockets open and keep reading from Redis, but forward nothing more from
  Redis to the client (a silently dead path); ``None`` ends it (bytes dropped meanwhile are lost).

It runs in its own process (``python -m tests.faults.proxy``), so the test process's threads
do not hold its GIL; the process answers JSON-line commands on a control port
(``ProxyControl`` below is the client the fixtures use).

One process may serve several *routes* (``--routes``, a JSON list): each listens on its own
address, optionally inside a network namespace (the listening socket is created there with
setns(2), its upstream connections leave from the proxy's own namespace), and belongs to a
group (e.g. "redis", "pg"); every control takes an optional ``group`` to act on one group only.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
CHUNK = 65536
SUBSCRIBE = re.compile(rb"\$(?:9|10)\r\n[PS]?SUBSCRIBE\r\n", re.IGNORECASE)
"""A SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE command name as a RESP bulk string."""
HALF_OPEN_MODES = (None, "subscribers", "all")
CLONE_NEWNET = 0x40000000


def _listen_in_netns(netns: str, make: Callable[[], socket.socket]) -> socket.socket:
    """Call `make` with this thread inside the network namespace `netns` (``ip netns add``), then come back."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as here, open(f"/run/netns/{netns}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into network namespace {netns} failed")
        try:
            return make()
        finally:
            if libc.setns(here.fileno(), CLONE_NEWNET) != 0:
                os._exit(3)  # never go on listening or connecting from the wrong namespace


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Direction:
    """One direction of one connection: forwards chunks, delayed by the proxy's current setting."""

    def __init__(self, conn: "_Connection", src: socket.socket, dst: socket.socket, up: bool) -> None:
        self.conn, self.src, self.dst, self.up = conn, src, dst, up
        self.lock = threading.Lock()
        self.queued = 0  # chunks waiting in `self.queue` or being sent by the sender thread
        self.queue: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

    def pump(self) -> None:
        proxy = self.conn.proxy
        tail = b""
        try:
            while True:
                data = self.src.recv(CHUNK)
                if not data:
                    break
                received = time.monotonic()
                if self.up:
                    if not self.conn.subscriber and SUBSCRIBE.search(tail + data):
                        self.conn.subscriber = True
                    tail = (tail + data)[-16:]
                elif proxy.blackholed(self.conn):
                    continue  # half-open: Redis's bytes are read and dropped
                delay = (proxy.up_ms if self.up else proxy.down_ms) / 1000
                with self.lock:
                    if delay <= 0 and self.queued == 0:
                        self.dst.sendall(data)
                        continue
                    self.queued += 1
                self.queue.put((received + delay, data))
        except OSError:
            pass
        finally:
            self.queue.put(None)
            self.conn.close()

    def send_delayed(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    self.dst.sendall(data)
                finally:
                    with self.lock:
                        self.queued -= 1
        except OSError:
            self.conn.close()


class _Connection:
    def __init__(self, proxy: "Proxy", client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client, self.upstream = client, upstream
        self.subscriber = False
        self.closed = False
        self._lock = threading.Lock()
        self.directions = (_Direction(self, client, upstream, True), _Direction(self, upstream, client, False))
        self.threads = [threading.Thread(target=function, daemon=True, name=f"proxy-{name}")
                        for direction in self.directions
                        for function, name in ((direction.pump, "pump"), (direction.send_delayed, "send"))]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        _close(self.client)
        _close(self.upstream)
        for direction in self.directions:
            direction.queue.put(None)
        self.proxy._forget(self)


class Proxy:
    """Forwards `host`:`port` (in `netns` if given) to 127.0.0.1:`target`; see the module docstring."""

    def __init__(self, port: int, target: int, *, max_connections: int = 128, host: str = HOST,
                 netns: str | None = None) -> None:
        self.port, self.target = port, target
        self.max_connections = max_connections
        self.up_ms = 0.0
        self.down_ms = 0.0
        self.refusing = False
        self.half_open_mode: str | None = None
        self.accepted = 0
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._stopping = threading.Event()
        self._listener = _listen_in_netns(netns, lambda: self._listen(host)) if netns else self._listen(host)
        self._listener.settimeout(0.2)
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")

    def _listen(self, host: str) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, self.port))
        listener.listen(128)
        return listener

    def start(self) -> "Proxy":
        self._acceptor.start()
        return self

    # controls
    def delay(self, up_ms: float = 0.0, down_ms: float = 0.0) -> None:
        self.up_ms, self.down_ms = float(up_ms), float(down_ms)

    def cut(self) -> int:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        return len(connections)

    def refuse(self, on: bool = True) -> None:
        self.refusing = bool(on)

    def half_open(self, mode: str | None) -> None:
        if mode not in HALF_OPEN_MODES:
            raise ValueError(f"half_open mode must be one of {HALF_OPEN_MODES}")
        self.half_open_mode = mode

    def blackholed(self, conn: _Connection) -> bool:
        mode = self.half_open_mode
        return mode == "all" or (mode == "subscribers" and conn.subscriber)

    def status(self) -> dict[str, Any]:
        with self._lock:
            connections = list(self._connections)
        return {"connections": len(connections), "subscribers": sum(c.subscriber for c in connections),
                "accepted": self.accepted, "up_ms": self.up_ms, "down_ms": self.down_ms,
                "refusing": self.refusing, "half_open": self.half_open_mode}

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=2)
        self._listener.close()
        self.cut()

    # internals
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._connections) >= self.max_connections
            if self.refusing or full:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset, as a refused or dropped connection looks
                continue
            try:
                upstream = socket.create_connection((HOST, self.target), timeout=1.0)
                upstream.settimeout(None)
            except OSError:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client, upstream)
            with self._lock:
                self._connections.add(conn)
                self.accepted += 1
            conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)


class Proxies:
    """The proxies of one process, each in a group; a control acts on one group, or on all if none is named."""

    def __init__(self, routes: list[tuple[str, Proxy]]) -> None:
        self.routes = routes

    def _select(self, group: str | None) -> list[Proxy]:
        chosen = [proxy for name, proxy in self.routes if group is None or name == group]
        if not chosen:
            raise ValueError(f"no route in group {group!r}")
        return chosen

    def delay(self, up_ms: float = 0.0, down_ms: float = 0.0, group: str | None = None) -> None:
        for proxy in self._select(group):
            proxy.delay(up_ms, down_ms)

    def cut(self, group: str | None = None) -> int:
        return sum(proxy.cut() for proxy in self._select(group))

    def refuse(self, on: bool = True, group: str | None = None) -> None:
        for proxy in self._select(group):
            proxy.refuse(on)

    def half_open(self, mode: str | None, group: str | None = None) -> None:
        for proxy in self._select(group):
            proxy.half_open(mode)

    def status(self, group: str | None = None) -> dict[str, Any]:
        statuses = [proxy.status() for proxy in self._select(group)]
        summed = {key: sum(s[key] for s in statuses) for key in ("connections", "subscribers", "accepted")}
        return {**statuses[0], **summed}

    def stop(self) -> None:
        for _, proxy in self.routes:
            proxy._stopping.set()  # every acceptor leaves its loop at once, not one after the other
        for _, proxy in self.routes:
            proxy.stop()


def serve(routes: list[dict[str, Any]], control_port: int) -> None:
    """Run the proxies of `routes` and answer JSON-line commands on `control_port` until "stop" or SIGTERM.

    A route: ``{"port": ..., "target": ..., "host": "127.0.0.1", "netns": None, "group": "default"}``.
    """
    proxies = Proxies([(route.get("group", "default"),
                        Proxy(route["port"], route["target"], host=route.get("host", HOST), netns=route.get("netns")))
                       for route in routes])
    for _, proxy in proxies.routes:
        proxy.start()
    control = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    control.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    control.bind((HOST, control_port))
    control.listen(8)
    control.settimeout(0.2)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print("ready", flush=True)
    while not stopping.is_set():
        try:
            sock, _ = control.accept()
        except socket.timeout:
            continue
        with sock, sock.makefile("rwb") as stream:
            for line in stream:
                answer = _command(proxies, json.loads(line), stopping)
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()
                if stopping.is_set():
                    break
    control.close()
    proxies.stop()


def _command(proxies: Proxies, command: dict[str, Any], stopping: threading.Event) -> dict[str, Any]:
    name = command.pop("cmd")
    try:
        if name == "stop":
            stopping.set()
            return {"ok": True}
        if name == "status":
            return {"ok": True, **proxies.status(**command)}
        result = getattr(proxies, name)(**command)
        return {"ok": True, "result": result}
    except Exception as error:  # the control channel reports, it never dies
        return {"ok": False, "error": repr(error)}


class ProxyControl:
    """Client of a proxy process's control port: ``control.delay(up_ms=5, down_ms=5)`` and so on."""

    def __init__(self, control_port: int, timeout: float = 5.0) -> None:
        self._sock = socket.create_connection((HOST, control_port), timeout=timeout)
        self._stream = self._sock.makefile("rwb")

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self._stream.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise ConnectionError("the proxy's control connection closed")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"proxy command {cmd} failed: {answer.get('error')}")
        return answer

    def delay(self, up_ms: float = 0.0, down_ms: float = 0.0, group: str | None = None) -> None:
        self.call("delay", up_ms=up_ms, down_ms=down_ms, group=group)

    def cut(self, group: str | None = None) -> int:
        return self.call("cut", group=group)["result"]

    def refuse(self, on: bool = True, group: str | None = None) -> None:
        self.call("refuse", on=on, group=group)

    def half_open(self, mode: str | None, group: str | None = None) -> None:
        self.call("half_open", mode=mode, group=group)

    def status(self, group: str | None = None) -> dict[str, Any]:
        return self.call("status", group=group)

    def reset(self, group: str | None = None) -> None:
        """No delay, no refusal, no half-open connections (current connections stay)."""
        self.delay(0, 0, group)
        self.refuse(False, group)
        self.half_open(None, group)

    def close(self) -> None:
        self._stream.close()
        self._sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT (one route)")
    parser.add_argument("--target", type=int, help="forward to 127.0.0.1:TARGET (with --port)")
    parser.add_argument("--routes", help="JSON list of routes instead (see serve)")
    parser.add_argument("--control", type=int, required=True)
    args = parser.parse_args(argv)
    if args.routes:
        routes = json.loads(args.routes)
    elif args.port and args.target:
        routes = [{"port": args.port, "target": args.target}]
    else:
        parser.error("give --port and --target, or --routes")
    serve(routes, args.control)
    sys.exit(0)


if __name__ == "__main__":
    main()
