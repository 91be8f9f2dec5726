"""Start and stop gunicorn servers on loopback ports, and read their CPU time from /proc."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free loopback port: from BENCH_PORTS ("FIRST-LAST") when set, else any the kernel picks."""
    first, _, last = os.environ.get("BENCH_PORTS", "").partition("-")
    candidates = range(int(first), int(last) + 1) if first and last else [0]
    for port in candidates:
        if port in _GIVEN:
            continue  # handed out already: its server may not have bound it yet
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port:
                _GIVEN.add(port)
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in BENCH_PORTS={os.environ['BENCH_PORTS']}")


@dataclass
class GunicornSettings:
    workers: int
    worker_class: str = "sync"
    threads: int = 1

    def args(self) -> list[str]:
        args = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        return args + (["--threads", str(self.threads)] if self.worker_class == "gthread" else [])

    def describe(self) -> str:
        extra = f" x {self.threads} threads" if self.worker_class == "gthread" else ""
        return f"{self.workers} {self.worker_class} workers{extra}"


class Server:
    """One gunicorn master and its workers; use as a context manager so it always stops."""

    def __init__(self, name: str, app: str, env: dict[str, str], settings: GunicornSettings,
                 out_dir: Path, counters_dir: Path | None = None, ready_path: str = "/healthz") -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.env = dict(env)
        self.env["PUBLIC_BASE_URL"] = self.url
        if counters_dir is not None:
            counters_dir.mkdir(parents=True, exist_ok=True)
            for stale in counters_dir.glob("*.cnt"):
                stale.unlink()
            self.env["BENCH_COUNTERS_DIR"] = str(counters_dir)
        self.counters_dir = counters_dir
        self.workers = settings.workers
        self.command = [str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", "python:bench.gunicorn_conf",
                        *settings.args(), "--bind", f"127.0.0.1:{self.port}", "--no-control-socket", app]
        self.log = out_dir / f"gunicorn-{name}.log"
        self.process: subprocess.Popen | None = None

    def shown(self, keys: tuple[str, ...]) -> str:
        """The command line with the environment that matters, to print and to record."""
        env = " ".join(f"{k}={shlex.quote(self.env[k])}" for k in keys if k in self.env)
        return f"{env} {shlex.join(self.command)}".replace(str(ROOT) + "/", "")

    def start(self) -> None:
        """Launch gunicorn (``__enter__`` then waits until every worker has booted)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env={**os.environ, **self.env}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> Server:
        if self.process is None:
            self.start()
        assert self.process is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as answer:
                    answer.read()
                booted = (len(list(self.counters_dir.glob("*.cnt"))) if self.counters_dir is not None
                          else len(self.worker_pids()))
                if booted >= self.workers:
                    break
                time.sleep(0.1)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"{self.name} did not answer within 60 s; see {self.log}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pids = [self.process.pid, *self.worker_pids()]
        self.process.send_signal(signal.SIGINT)  # gunicorn: quick shutdown
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(10)

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        return children(self.process.pid)

    def cpu_seconds(self) -> float:
        """utime + stime of the master and every live worker."""
        if self.process is None:
            return 0.0
        return sum(cpu_seconds(pid) for pid in [self.process.pid, *self.worker_pids()])

    def counters(self) -> dict[str, int] | None:
        if self.counters_dir is None:
            return None
        from bench.counters import read_all
        return read_all(self.counters_dir)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
        return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the ")" that ends comm: fields[11] is utime, fields[12] stime (stat fields 14 and 15).
    return (int(fields[11]) + int(fields[12])) / TICKS


def pids_named(name: str) -> list[int]:
    out = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                out.append(int(comm.parent.name))
        except OSError:
            continue
    return out


def python() -> str:
    return str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
