"""Request plans, and driving a server with them: wrk with bench/lua/plan.lua, or a small
Python driver when wrk is not installed (smoke mode only; its numbers are not comparable)."""
from __future__ import annotations

import http.client
import json
import math
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "plan.lua"
SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body_file: str = ""


def get(path: str, **headers: str) -> Request:
    return Request("GET", path, tuple((k.replace("_", "-"), v) for k, v in headers.items()))


def write_plan(path: Path, requests: list[Request]) -> Path:
    """Write ``requests`` in the format plan.lua reads (one request a line)."""
    lines = []
    for r in requests:
        for text in (r.method, r.path, r.body_file, *(f"{k}: {v}" for k, v in r.headers)):
            if any(c in text for c in "\t\n" + SEPARATOR):
                raise ValueError(f"plan field has a tab, newline or separator: {text!r}")
        headers = SEPARATOR.join(f"{k}: {v}" for k, v in r.headers)
        lines.append(f"{r.method}\t{r.path}\t{headers}\t{r.body_file}\n")
    path.write_text("".join(lines))
    return path


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int  # socket errors and timeouts
    status_errors: int  # answers >= 400
    wraps: int  # requests sent after the plan ran out and started over
    sent: int  # requests written, including the ones still in flight when the run stopped
    plan_size: int
    statuses: dict[int, int] = field(default_factory=dict)
    driver: str = "wrk"

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


FORCE_PYTHON = False  # set by `bench.run --driver python`


def have_wrk() -> bool:
    return not FORCE_PYTHON and shutil.which("wrk") is not None


def run(url: str, plan: Path, *, seconds: float, connections: int, threads: int,
        count_statuses: bool = False, timeout_s: float = 5.0, log: Path | None = None,
        once: bool = False) -> LoadResult:
    """Drive ``url`` with the plan for ``seconds`` (bounded: killed after seconds + 30 s).

    ``once``: stop when the plan runs out instead of starting it over (miss rows: a second
    round would find the first round's answers cached).
    """
    if have_wrk():
        return _wrk(url, plan, seconds, connections, threads, count_statuses, timeout_s, log, once)
    return _python(url, plan, seconds, connections, count_statuses, timeout_s, once)


def wrk_command(url: str, plan: Path, seconds: float, connections: int, threads: int,
                count_statuses: bool = False, timeout_s: float = 5.0, once: bool = False) -> list[str]:
    threads = min(threads, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               f"--timeout={max(1, math.ceil(timeout_s))}s", "-s", str(LUA), url, "--", f"plan={plan}",
               f"threads={threads}"]
    return command + (["statuses"] if count_statuses else []) + (["once"] if once else [])


def _wrk(url: str, plan: Path, seconds: float, connections: int, threads: int, count_statuses: bool,
         timeout_s: float, log: Path | None, once: bool = False) -> LoadResult:
    command = wrk_command(url, plan, seconds, connections, threads, count_statuses, timeout_s, once)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if log is not None:
        with log.open("a") as out:
            out.write("$ " + " ".join(command) + "\n" + done.stdout + done.stderr + "\n")
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    data = json.loads(line[len("BENCH_JSON "):])
    statuses: dict[int, int] = {}
    for status, n in data["statuses"]:
        statuses[status] = statuses.get(status, 0) + n
    return LoadResult(
        requests=data["requests"], seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000, p95_ms=data["p95_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        status_errors=data["status_errors"], wraps=data["wraps"], sent=data["sent"], plan_size=data["plan_size"],
        statuses=statuses)


def _read_plan(plan: Path) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    bodies: dict[str, bytes] = {}
    out = []
    for line in plan.read_text().splitlines():
        method, path, headers, body_file = line.split("\t")
        h = dict(pair.split(": ", 1) for pair in headers.split(SEPARATOR) if pair)
        body = None
        if body_file:
            body = bodies.setdefault(body_file, Path(body_file).read_bytes())
            h["Content-Length"] = str(len(body))
        out.append((method, path, h, body))
    return out


def _python(url: str, plan: Path, seconds: float, connections: int, count_statuses: bool,
            timeout_s: float, once: bool = False) -> LoadResult:
    """A closed-loop driver with the same plan semantics, for machines without wrk."""
    host, port = url.split("//", 1)[1].split(":")
    requests = _read_plan(plan)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    errors = [0]
    sent = [0]
    stop = time.perf_counter() + seconds

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        position, mine, my_status, my_errors, my_sent = index, [], {}, 0, 0
        while time.perf_counter() < stop and not (once and position >= len(requests)):
            method, path, headers, body = requests[position % len(requests)]
            position += connections
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                my_errors += 1
                conn.close()
                continue
            mine.append(time.perf_counter() - started)
            my_status[response.status] = my_status.get(response.status, 0) + 1
            my_sent += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += my_errors
            sent[0] += my_sent
            for status, n in my_status.items():
                statuses[status] = statuses.get(status, 0) + n

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + timeout_s + 5)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    return LoadResult(requests=len(latencies), seconds=elapsed, p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99),
                      errors=errors[0], status_errors=sum(n for s, n in statuses.items() if s >= 400),
                      wraps=max(0, sent[0] - len(requests)), sent=sent[0] + errors[0], plan_size=len(requests),
                      statuses=statuses if count_statuses else {}, driver="python")
