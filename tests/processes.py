"""Server processes the deployment tests start themselves (moto, Redis Sentinel, Redis Cluster), on this
worktree's loopback ports, bounded in time and stopped by PID."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

import pytest

PORT_BASE = int(os.environ.get("DEPLOY_TEST_PORT_BASE", "7800"))
"""First loopback port of the deployment tests (they use up to PORT_BASE + 60)."""


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"server process for port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class Processes:
    """Processes started by one fixture; `stop_all` ends each by its PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: Sequence[str], port: int, timeout: float = 20.0) -> subprocess.Popen:
        if not port_free(port):
            pytest.fail(f"port {port} is taken: a process from an earlier run may still be alive")
        log = open(self.directory / f"{name}.log", "wb")
        process = subprocess.Popen(list(args), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.running[name] = process
        wait_for_port(port, timeout, process)
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server redis-sentinel)")
    return binary


def redis_args(port: int, *extra: str) -> list[str]:
    return [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", *extra]


def wait_until(check, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as error:  # a server still starting or switching over
            last = error
        time.sleep(interval)
    pytest.fail(f"{what} not reached within {timeout} s (last error: {last})")
