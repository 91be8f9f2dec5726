"""Deployment rows: profile hits through one and two gunicorn instances, on one Redis and on a Redis Cluster.

    .venv/bin/python -m bench.deploy [--seconds 8] [--connections 8] [--workers 2]

Seeds a throw-away SQLite database (2,000 users), starts a six-node Redis Cluster on loopback
ports 7830-7835 (bus 7860-7865) and uses the single Redis named by ``--redis`` (db flushed),
runs each instance as ``gunicorn --workers N --worker-class sync`` on 7870/7871, warms every
profile on every instance, then drives them with the Python closed-loop driver of
``bench.wrk`` (its numbers are lower than wrk's would be: the driver shares this machine's
cores with the servers). With two instances each gets half the connections. Everything it
starts is stopped by PID at the end.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.wrk import _python, get, write_plan

ROOT = Path(__file__).resolve().parent.parent
PORTS = (7870, 7871)


def seed(directory: Path, users: int) -> str:
    from service import create_app
    from service.testing import create_tables

    url = f"sqlite:///{directory / 'bench.db'}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "MEDIA_ROOT": str(directory / "media"),
                      "REDIS_URL": None, "OUTBOX_POLL_INTERVAL": 0})
    create_tables(app)
    result = app.test_cli_runner().invoke(args=["seed", "--users", str(users), "--flyers-per-user", "0",
                                                "--big-creators", "0"])
    assert result.exit_code == 0, result.output
    return f"sqlite:///{directory / 'bench.db'}"


def start_instance(port: int, env: dict[str, str], workers: int, log: Path) -> subprocess.Popen:
    command = [str(ROOT / ".venv" / "bin" / "gunicorn"), "--workers", str(workers), "--worker-class", "sync",
               "--bind", f"127.0.0.1:{port}", "--no-control-socket", "wsgi:app"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    import http.client
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn on {port} did not start; see {log}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def row(name: str, env: dict[str, str], instances: int, args, directory: Path, users: int) -> str:
    processes = [start_instance(PORTS[n], env, args.workers, directory / f"gunicorn-{name}-{n}.log")
                 for n in range(instances)]
    try:
        paths = [f"/api/v1/users/{user_id}/profile" for user_id in range(1, users + 1)]
        import http.client
        for port in PORTS[:instances]:  # warm: every profile once on each instance
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for path in paths:
                conn.request("GET", path)
                conn.getresponse().read()
            conn.close()
        results = []

        def drive(n: int) -> None:
            plan = random.Random(n).sample(paths, len(paths)) * 50
            plan_file = write_plan(directory / f"plan-{name}-{n}.txt", [get(p) for p in plan])
            results.append(_python(f"http://127.0.0.1:{PORTS[n]}", plan_file, args.seconds,
                                   max(1, args.connections // instances), False, 5.0))

        threads = [threading.Thread(target=drive, args=(n,)) for n in range(instances)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.seconds + 60)
        rps = sum(r.rps for r in results)
        errors = sum(r.errors + r.status_errors for r in results)
        return (f"| {name} | {instances} x {args.workers} sync workers | {rps:,.0f} | "
                f"{max(r.p50_ms for r in results):.1f} | {max(r.p99_ms for r in results):.1f} | {errors} |")
    finally:
        for process in processes:
            stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    database = seed(directory, args.users)
    sys.path.insert(0, str(ROOT))
    from tests.deployments import start_cluster

    cluster = start_cluster(directory, tuple(7830 + n for n in range(6)))
    base = {"DATABASE_URL": database, "MEDIA_ROOT": str(directory / "media"), "RATE_LIMIT_ENABLED": "false"}
    modes = {"single Redis": {"REDIS_MODE": "single", "REDIS_URL": args.redis},
             "Redis Cluster": {"REDIS_MODE": "cluster", "REDIS_URL": cluster.url}}
    lines = ["| Redis | instances | profile hits/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    try:
        import redis as redis_py
        for name, env in modes.items():
            for instances in (1, 2):
                if env["REDIS_MODE"] == "single":
                    redis_py.Redis.from_url(args.redis).flushdb()
                else:
                    cluster.flush()
                line = row(name, {**base, **env}, instances, args, directory, args.users)
                print(line, flush=True)
                lines.append(line)
    finally:
        cluster.processes.stop_all()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
