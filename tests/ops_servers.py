"""Real servers for the operations tests: gunicorn instances of the service, and Prometheus."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = os.environ.get("TEST_PORTS", "7600-7699")
"""Loopback ports the tests may listen on (a range; the first free ones are taken)."""


def free_port() -> int:
    low, high = (int(p) for p in PORTS.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_until(check, timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Instance:
    """One gunicorn master with its workers, serving the service on a loopback port."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:bench.gunicorn_conf", "--workers", str(workers),
             "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "--no-control-socket", "wsgi:app"],
            cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": ROOT}, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: get(self.url + "/healthz")[0] == 200, what=f"gunicorn on {self.url}")

    def log_lines(self) -> list[dict]:
        """The JSON lines the instance logged (gunicorn's own plain lines left out)."""
        with open(self.log.name, "rb") as file:
            return [orjson.loads(line) for line in file.read().splitlines() if line.startswith(b"{")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)


class Prometheus:
    """Debian's prometheus binary on a loopback port, scraping `targets` every second."""

    def __init__(self, targets: list[str], directory: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as file:
            file.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                       "scrape_configs:\n  - job_name: profile-service\n    scrape_timeout: 900ms\n"
                       "    static_configs:\n      - targets: [" + ", ".join(f'"{t}"' for t in targets) + "]\n")
        self.log = open(os.path.join(directory, "prometheus.log"), "wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={os.path.join(directory, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        wait_until(lambda: get(self.url + "/-/ready")[0] == 200, what="prometheus to be ready")

    def query(self, promql: str) -> list[dict]:
        status, _, body = get(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        answer = orjson.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return answer["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
