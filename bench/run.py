"""Benchmark the profile service against its baselines under gunicorn, driven by wrk.

    .venv/bin/python -m bench.run               # full run (~10 min): PostgreSQL db "bench", writes bench/RESULTS.md
    .venv/bin/python -m bench.run --smoke       # < 60 s: tiny data, 1 s rows, writes bench/out/RESULTS-smoke.md
    .venv/bin/python -m bench.run --help        # durations, connections, gunicorn settings, subsets

Needs PostgreSQL at 127.0.0.1:5432 (user postgres; smoke mode falls back to SQLite), Redis at
127.0.0.1:6379 (db 1 only: it is flushed between rows), and wrk (installed with apt-get when
missing and running as root; smoke mode falls back to a Python driver). Everything it starts
listens on 127.0.0.1 only and is stopped at the end, also on errors. docs/PERFORMANCE.md
explains the methods and the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import http.client
import importlib.util
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import redis
from sqlalchemy import create_engine, text

from bench import counters as bench_counters
from bench import seed as seeding
from bench import wrk
from bench.baselines import FLASK_CACHING_PREFIX, FLOOR_BODY, FLOOR_KEY, FLOOR_PATH
from bench.checker import CheckerUser, StaleChecker, flyer_multipart, picture_multipart
from bench.report import Growth, Row, growth_table, machine, table, targets, targets_table
from bench.servers import ROOT, GunicornSettings, Server, cpu_seconds, pids_named
from cache import keys

LOCK = Path("/tmp/profile-service-bench.lock")
PASSWORD = "password123"  # what `flask seed` gives every user
SECRET_KEY = "benchmark-only-secret-key-0123456789abcdef0123456789"
SERVICE_ENV_SHOWN = ("DATABASE_URL", "REDIS_URL", "RATE_LIMIT_ENABLED", "PUBLIC_BASE_URL", "MEDIA_ROOT",
                     "BENCH_COUNTERS_DIR", "BASELINE")
ALL_SERVERS = ("service", "flask-caching", "no-cache", "floor-static", "floor-redis", "floor-sql", "floor-sql-page")
# The bare-query floor of each miss row: the same statements with psycopg over a kept connection.
MISS_FLOORS = {"profile": "floor-sql", "page": "floor-sql-page"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny data and 1 s rows, for CI (< 60 s)")
    p.add_argument("--duration", type=float, help="seconds per row (default 10, smoke 1)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up load per server (default 3, smoke 0)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections for read rows (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--upload-connections", type=int, default=4, help="connections for upload rows (default 4)")
    p.add_argument("--workers", type=int, help="gunicorn workers (default 2 x cores; smoke 2)")
    p.add_argument("--worker-class", default="sync", choices=("sync", "gthread"), help="gunicorn worker class")
    p.add_argument("--worker-threads", type=int, default=4, help="threads per gthread worker (default 4)")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server (the database is 'bench', or 'bench_smoke' in smoke mode)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/1", help="Redis URL; its db is flushed between rows")
    p.add_argument("--driver", choices=("auto", "python"), default="auto",
                   help="auto: wrk (the Python driver only in smoke mode when wrk is missing); python: force "
                        "the Python driver (to test it; its numbers are not comparable)")
    p.add_argument("--only", default=",".join(ALL_SERVERS), help="comma-separated servers to run")
    p.add_argument("--reseed", action="store_true", help="seed again even if the database matches")
    p.add_argument("--noisy", type=float, default=10.0,
                   help="a read row during which other processes used more than this %% of the machine "
                        "is measured again (default 10)")
    p.add_argument("--retries", type=int, help="how many times a noisy row is measured again (default 2, smoke 0)")
    p.add_argument("--results", type=Path, help="where to write the report (default bench/RESULTS.md, "
                                                 "smoke bench/out/RESULTS-smoke.md)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1.0 if args.smoke else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if args.smoke else 3.0)
    args.workers = args.workers or (2 if args.smoke else 2 * (os.cpu_count() or 1))
    args.retries = args.retries if args.retries is not None else (0 if args.smoke else 2)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(ALL_SERVERS)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.results = args.results or (ROOT / "bench" / "out" / "RESULTS-smoke.md" if args.smoke
                                    else ROOT / "bench" / "RESULTS.md")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- setup ---------------------------------------------------------------------------------


def ensure_tools(smoke: bool) -> list[str]:
    notes = []
    if importlib.util.find_spec("flask_caching") is None:
        log("installing bench/requirements.txt into the virtualenv")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "-r", str(ROOT / "bench" / "requirements.txt")], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            notes.append("Flask-Caching could not be installed: the flask-caching baseline is skipped")
            log(notes[-1] + ": " + done.stderr.strip()[-300:])
    if not wrk.have_wrk() and not wrk.FORCE_PYTHON and not smoke and os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: apt-get install -y wrk")
        subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True, timeout=600,
                       capture_output=True)
    if wrk.FORCE_PYTHON:
        notes.append("the Python driver was forced (--driver python): numbers not comparable with wrk's")
    elif not wrk.have_wrk():
        if not smoke:
            raise SystemExit("wrk is needed: apt-get install -y wrk")
        notes.append("wrk is not installed: rows were driven by the Python fallback driver")
    return notes


@contextlib.contextmanager
def exclusive(wait_s: float):
    LOCK.touch(exist_ok=True)
    with LOCK.open("r+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"another benchmark holds {LOCK}; not running two at once") from None
                time.sleep(0.5)
        yield


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = args.smoke
        self.out = ROOT / "bench" / "out" / ("smoke" if self.smoke else "full")
        self.out.mkdir(parents=True, exist_ok=True)
        self.wrk_log = self.out / "wrk.log"
        self.wrk_log.write_text("")
        self.setup_log = self.out / "setup.log"
        self.setup_log.write_text("")
        self.spec = seeding.SMOKE if self.smoke else seeding.FULL
        self.page_size = 4 if self.smoke else 20
        self.rng = random.Random(20261122)
        self.settings = GunicornSettings(args.workers, args.worker_class, args.worker_threads)
        self.redis = redis.Redis.from_url(args.redis)
        self.redis_pid = int(self.redis.info("server")["process_id"])
        self.rows: list[Row] = []
        self.growth: list[Growth] = []
        self.memory: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.commands: list[str] = []
        self.stale: int | None = None
        self.checks = ""
        self.setup_line = ""

    # -- database and data -----------------------------------------------------------------

    def prepare_database(self) -> None:
        name = "bench_smoke" if self.smoke else "bench"
        self.db_url = f"{self.args.pg.rstrip('/')}/{name}"
        if not seeding.postgres_reachable(self.db_url):
            if not self.smoke:
                raise SystemExit(f"PostgreSQL is not reachable at {self.args.pg}")
            self.db_url = f"sqlite:///{self.out / 'smoke.db'}"
            self.notes.append("PostgreSQL was not reachable: smoke run on SQLite")
        self.media = self.out / "media"
        self.env = {"DATABASE_URL": self.db_url, "REDIS_URL": self.args.redis, "RATE_LIMIT_ENABLED": "false",
                    "MEDIA_ROOT": str(self.media), "SECRET_KEY": SECRET_KEY}
        log(f"database {self.db_url}")
        self.setup_line = seeding.prepare(self.db_url, self.spec, self.env, self.setup_log, reseed=self.args.reseed)
        log(self.setup_line)
        self.engine = create_engine(seeding.sqlalchemy_url(self.db_url))
        self.discover()

    def discover(self) -> None:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        with self.engine.connect() as conn:
            users = conn.execute(text("SELECT id, email FROM users ORDER BY id")).all()
            valid = dict(conn.execute(text(
                "SELECT creator_id, sum(CASE WHEN valid_from <= :now AND valid_until > :now THEN 1 ELSE 0 END) "
                "FROM flyers GROUP BY creator_id"), {"now": now}).all())
            total = dict(conn.execute(text("SELECT creator_id, count(*) FROM flyers GROUP BY creator_id")).all())
        self.user_ids = [u.id for u in users]
        self.emails = {u.id: u.email for u in users}
        self.valid = {k: int(v) for k, v in valid.items()}
        first = self.user_ids[0]
        self.giants = [(first + n, size) for n, size in enumerate(self.spec.giants)]
        giant_ids = {g for g, _ in self.giants}
        self.creators = [c for c in sorted(total) if c not in giant_ids]
        self.non_creators = [u for u in self.user_ids if u not in total]
        rng = self.rng
        n_hit = 30 if self.smoke else 2000
        self.profile_hits = rng.sample(self.user_ids, min(n_hit, len(self.user_ids)))
        n_pages = 6 if self.smoke else 300
        self.page1_hits = rng.sample(self.creators, min(n_pages, len(self.creators)))
        deep = [c for c in self.creators if self.valid.get(c, 0) > 4 * self.page_size]
        self.page5_hits = rng.sample(deep, min(n_pages, len(deep)))
        # Mixed workload: zipf-like popularity over every user; writers and checkers are users too.
        ranked = self.user_ids[:]
        rng.shuffle(ranked)
        pool_size, checker_size = (6, 2) if self.smoke else (48, 4)
        candidates = [u for u in self.non_creators]
        rng.shuffle(candidates)
        self.checker_ids = candidates[:checker_size]
        for rank, uid in zip((2, 6, 14, 40), self.checker_ids):  # checked users are popular: reads race the writes
            ranked.remove(uid)
            ranked.insert(min(rank, len(ranked)), uid)
        self.ranked = ranked
        weights = [1 / (r + 1) ** 1.1 for r in range(len(ranked))]
        picks = rng.choices(ranked, weights=weights, k=20 * pool_size)
        self.pool_ids = list(dict.fromkeys(u for u in picks if u not in self.checker_ids
                                           and u not in giant_ids))[:pool_size]
        self.zipf_weights = weights

    def login(self, url: str, ids: list[int]) -> dict[int, str]:
        def one(uid: int) -> tuple[int, str]:
            body = json.dumps({"email": self.emails[uid], "password": PASSWORD}).encode()
            request = urllib.request.Request(f"{url}/api/v1/auth/login", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                return uid, json.loads(answer.read())["token"]
        with ThreadPoolExecutor(4) as pool:
            return dict(pool.map(one, ids))

    def remember_users(self, ids: list[int]) -> list[tuple]:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT id, bio, picture_key, thumbnail_key FROM users WHERE id IN "
                                     f"({','.join(map(str, ids))})")).all()

    def restore_users(self, saved: list[tuple]) -> None:
        with self.engine.begin() as conn:
            for uid, bio, picture, thumbnail in saved:
                conn.execute(text("UPDATE users SET bio = :b, picture_key = :p, thumbnail_key = :t WHERE id = :i"),
                             {"b": bio, "p": picture, "t": thumbnail, "i": uid})

    # -- measuring ----------------------------------------------------------------------------

    def flush(self) -> None:
        self.redis.flushdb()  # db 1 only (the URL's db); never FLUSHALL
        # The workers' near caches keep exact copies through a flush: drop them too, or
        # the next miss row would be answered from them.
        self.redis.publish(keys.INVALIDATION_CHANNEL, keys.ALL)
        self.redis.ping()

    def pg_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in pids_named("postgres")) if self.db_url.startswith("postgresql") else 0

    def plan(self, server: Server, label: str, requests: list[wrk.Request]) -> Path:
        slug = "".join(c if c.isalnum() else "-" for c in label)
        return wrk.write_plan(self.out / f"plan-{server.name}-{slug}.tsv", requests)

    def warm(self, server: Server, requests: list[wrk.Request], seconds: float | None = None,
             connections: int | None = None) -> None:
        seconds = self.args.warmup if seconds is None else seconds
        if seconds <= 0:
            return
        wrk.run(server.url, self.plan(server, "warmup", requests), seconds=seconds,
                connections=connections or self.args.connections, threads=self.args.threads, log=self.wrk_log)

    def fill(self, server: Server, paths: list[str]) -> None:
        """GET every path once, so a hit row finds all of them cached."""
        def one(path: str) -> int:
            with urllib.request.urlopen(server.url + path, timeout=30) as answer:
                answer.read()
                return answer.status
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, paths))

    def etags(self, server: Server, paths: list[str]) -> dict[str, str]:
        def one(path: str) -> tuple[str, str]:
            with urllib.request.urlopen(server.url + path, timeout=30) as answer:
                answer.read()
                return path, answer.headers["ETag"]
        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(one, paths))

    def measure(self, server: Server, label: str, requests: list[wrk.Request], *, connections: int | None = None,
                count_statuses: bool = False, expect: tuple[int, ...] = (200,), timeout_s: float = 5.0,
                during: contextlib.AbstractContextManager | None = None,
                before: Callable[[], None] | None = None, retry: bool = True, once: bool = False) -> Row:
        """Run one row; when other processes took over ``--noisy`` % of the machine, run it again
        (``before`` resets the state, e.g. a FLUSHDB for misses) and keep the quieter attempt."""
        connections = connections or self.args.connections
        plan = self.plan(server, label, requests)
        attempts: list[Row] = []
        seconds = self.args.duration
        if once and not self.smoke:  # a row no longer than the plan lasts: a probe of 1 s tells its rate
            if before is not None:
                before()
            probe = self._attempt(server, label, plan, connections, count_statuses, expect, timeout_s, during,
                                  once, seconds=1.0)
            seconds = max(1.0, min(seconds, 0.8 * len(requests) / max(probe.rps, 1.0)))
        for _ in range(1 + (self.args.retries if retry else 0)):
            if before is not None:
                before()
            attempts.append(self._attempt(server, label, plan, connections, count_statuses, expect, timeout_s,
                                          during, once, seconds=seconds))
            if (attempts[-1].others_pct or 0) <= self.args.noisy:
                break
            log(f"    other processes took {attempts[-1].others_pct:.0f}% of the machine: "
                + ("measuring again" if len(attempts) <= self.args.retries and retry else "kept"))
        row = min(attempts, key=lambda r: r.others_pct or 0)
        if len(attempts) > 1:
            row.notes.append("others' CPU in the attempts: " + ", ".join(f"{r.others_pct:.0f}%" for r in attempts)
                             + "; kept the quietest")
        self.rows.append(row)
        return row

    def _attempt(self, server: Server, label: str, plan: Path, connections: int, count_statuses: bool,
                 expect: tuple[int, ...], timeout_s: float, during: contextlib.AbstractContextManager | None,
                 once: bool = False, seconds: float | None = None) -> Row:
        time.sleep(0.05)  # the workers copy their cache counters every 20 ms
        counts0, cpu0 = server.counters(), server.cpu_seconds()
        redis0, pg0 = cpu_seconds(self.redis_pid), self.pg_cpu()
        busy0, mine0, clock0 = machine_busy(), own_cpu(), time.monotonic()
        with during or contextlib.nullcontext():
            result = wrk.run(server.url, plan, seconds=seconds or self.args.duration, connections=connections,
                             threads=self.args.threads, count_statuses=count_statuses, timeout_s=timeout_s,
                             log=self.wrk_log, once=once)
        time.sleep(0.05)
        counts1, cpu1 = server.counters(), server.cpu_seconds()
        redis1, pg1 = cpu_seconds(self.redis_pid), self.pg_cpu()
        busy1, mine1, clock1 = machine_busy(), own_cpu(), time.monotonic()
        # Server-side costs are divided by the requests sent: the ones still in flight when wrk stops
        # were served too (with a few thousand requests a row, the difference is ~1%).
        n = max(1, result.sent, result.requests)
        row = Row(label=label, server=server.name, connections=connections, requests=result.requests,
                  rps=result.rps, p50_ms=result.p50_ms, p95_ms=result.p95_ms, p99_ms=result.p99_ms,
                  cpu_us=(cpu1 - cpu0) * 1e6 / n, redis_us=(redis1 - redis0) * 1e6 / n,
                  # Backends of other databases that exit during the row can make this negative: clamp.
                  pg_us=max(0.0, (pg1 - pg0) * 1e6 / n) if self.db_url.startswith("postgresql") else None,
                  wraps=result.wraps, statuses=result.statuses, driver=result.driver)
        # CPU the machine spent on anything but this row: server, Redis, PostgreSQL, wrk, this process.
        ours = (cpu1 - cpu0) + (redis1 - redis0) + (pg1 - pg0) + (mine1 - mine0)
        row.others_pct = max(0.0, 100 * ((busy1 - busy0) - ours) / ((clock1 - clock0) * (os.cpu_count() or 1)))
        if counts0 is not None and counts1 is not None:
            d = bench_counters.delta(counts0, counts1)
            row.sql, row.pings = d["statements"] / n, d["checkouts"] / n
            hits, lookups = bench_counters.lookups(d)
            if lookups:
                row.hit_rate, row.hit_source = hits / lookups, "counters"
            odd = {k: v for k, v in d.items() if v and k.split("|")[-1] in ("error", "stale", "lease_timeout",
                                                                             "lease_wait")}
            if odd:
                row.notes.append("cache lookups also answered " + ", ".join(f"{k}: {v}" for k, v in odd.items())
                                 + (" (stale = a fill refused because an invalidation came first: the lease "
                                    "protocol at work, not a stale answer)" if any("stale" in k for k in odd) else ""))
        unexpected = (sum(c for s, c in result.statuses.items() if s not in expect) if count_statuses
                      else result.status_errors)
        row.errors = result.errors + unexpected
        if count_statuses:
            row.notes.append("statuses " + ", ".join(f"{s}: {c}" for s, c in sorted(result.statuses.items())))
        hit = "" if row.hit_rate is None else f" hit {100 * row.hit_rate:.1f}%"
        sql = "" if row.sql is None else f" sql/req {row.sql:.2f}"
        log(f"  {server.name:13} {label:16} {row.rps:8.0f} req/s  p50 {row.p50_ms:6.2f}  p99 {row.p99_ms:7.2f} ms  "
            f"cpu {row.cpu_us:6.0f} µs/req{hit}{sql}  others {row.others_pct:.0f}%  errors {row.errors}"
            + (f" wraps {row.wraps}" if row.wraps else ""))
        return row

    # -- plans --------------------------------------------------------------------------------

    def page_path(self, uid: int, page: int, size: int | None = None) -> str:
        return f"/api/v1/users/{uid}/flyers?page={page}&page_size={size or self.page_size}"

    def profile_hit_paths(self) -> list[str]:
        return [f"/api/v1/users/{u}/profile" for u in self.profile_hits]

    def page_hit_paths(self, page: int) -> list[str]:
        return [self.page_path(u, page) for u in (self.page1_hits if page == 1 else self.page5_hits)]

    def profile_miss_plan(self) -> list[wrk.Request]:
        ids = self.user_ids[:]
        self.rng.shuffle(ids)
        return [wrk.get(f"/api/v1/users/{u}/profile") for u in ids]

    def page_miss_plan(self, page: int) -> list[wrk.Request]:
        spread = 1 if self.smoke else 4  # page sizes around the hit rows' size make more distinct pages
        pairs = [(u, s) for u in self.creators for s in range(self.page_size - spread, self.page_size + spread + 1)
                 if (page - 1) * s < self.valid.get(u, 0)]
        self.rng.shuffle(pairs)
        return [wrk.get(self.page_path(u, page, s)) for u, s in pairs]

    def read_rows(self, servers: dict[str, Server]) -> None:
        """Hits, 304s and misses, each row run on every server back to back (less drift between them).

        Hit rows find their whole id set cached (warm-up, then a GET of every path); miss rows follow
        a FLUSHDB and walk ids (or page/page-size pairs) that no earlier request of the row used.
        """
        cached = [servers[n] for n in ("service", "flask-caching") if n in servers]
        every = cached + [servers[n] for n in ("no-cache",) if n in servers]
        hit_sets = self.profile_hit_paths() + self.page_hit_paths(1) + self.page_hit_paths(5)
        self.flush()
        for server in every:
            self.warm(server, [wrk.get(p) for p in hit_sets])
        for server in cached:
            self.fill(server, hit_sets)
        hit_rows = [("profile hit", self.profile_hit_paths()), ("page hit p1", self.page_hit_paths(1))]
        if self.page5_hits and not self.smoke:
            hit_rows.append(("page hit p5", self.page_hit_paths(5)))
        for label, paths in hit_rows:
            for server in cached:
                self.measure(server, label, [wrk.get(p) for p in paths])
        for server in cached:
            self.redis_memory(server)
        for server in every if not self.smoke else cached[:1]:  # smoke: each code path once, to stay < 60 s
            tags = self.etags(server, self.profile_hit_paths()[: 20 if self.smoke else 500])
            self.measure(server, "304 profile", [wrk.get(p, If_None_Match=e) for p, e in tags.items()],
                         count_statuses=True, expect=(304,))
        service = servers.get("service")
        if service is not None and not self.smoke:
            # At 4 connections: the latency of a hit without the queueing that 32 connections add.
            self.measure(service, "profile hit @4", [wrk.get(p) for p in self.profile_hit_paths()], connections=4)
        miss_rows = [("profile miss", self.profile_miss_plan()), ("page miss p1", self.page_miss_plan(1))]
        if self.page5_hits and not self.smoke:
            miss_rows.append(("page miss p5", self.page_miss_plan(5)))
        for label, plan in miss_rows:
            floor = servers.get(MISS_FLOORS[label.split()[0]])
            for server in every + ([floor] if floor is not None else []):
                self.measure(server, label, plan, before=self.flush, once=True)
        if not self.smoke:
            for server in (service, servers.get("floor-sql")):
                if server is not None:
                    self.measure(server, "profile miss @4", self.profile_miss_plan(), connections=4,
                                 before=self.flush, once=True)

    def redis_memory(self, server: Server) -> None:
        def usage(keys: list[bytes | str]) -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.memory_usage(k, samples=0)
            return [u for u in pipe.execute() if u]

        if server.name == "service":
            from cache import keys as cache_keys
            profiles = usage([cache_keys.profile_key(u) for u in self.profile_hits[:200]])
            gens = self.redis.mget([cache_keys.generation_key(u) for u in self.page1_hits])
            hashes = [cache_keys.generation_hash_key(cache_keys.pages_key(u), g or b"0")
                      for u, g in zip(self.page1_hits, gens)]
            pipe = self.redis.pipeline(transaction=False)
            for h in hashes:
                pipe.hgetall(h)
            fields = pipe.execute()
            pages = sum(sum(1 for f in fs if not f.startswith(b"lease|")) for fs in fields)
            json_bytes = [len(v) - 32 for fs in fields for f, v in fs.items() if not f.startswith(b"lease|")]
            page_bytes = usage(hashes)
            gen_bytes = usage([cache_keys.generation_key(u) for u in self.page1_hits if True])
            if profiles:
                self.memory.append(("service: profile (hash, one field: 32-char ETag + JSON)",
                                    f"{sum(profiles) / len(profiles):,.0f} B per profile (n={len(profiles)})"))
            if pages:
                self.memory.append(("service: creator page (page hash of pages 1 and 5 / number of pages)",
                                    f"{sum(page_bytes) / pages:,.0f} B per page (JSON {sum(json_bytes) / len(json_bytes):,.0f} B; "
                                    f"{pages} pages in {len(page_bytes)} hashes)"))
            if gen_bytes:
                self.memory.append(("service: generation counter per creator (after a write)",
                                    f"{sum(gen_bytes) / len(gen_bytes):,.0f} B"))
        elif server.name == "flask-caching":
            found = list(self.redis.scan_iter(match=FLASK_CACHING_PREFIX + "*", count=1000))
            for kind, marker in (("profile", b"/profile"), ("creator page", b"/flyers")):
                sizes = usage([k for k in found if marker in k])
                if sizes:
                    self.memory.append((f"flask-caching: {kind} (one string key, pickled dict)",
                                        f"{sum(sizes) / len(sizes):,.0f} B per {kind} (n={len(sizes)})"))

    # -- service-only parts ---------------------------------------------------------------------

    def growth_rows(self, server: Server) -> None:
        from cache import ReadThroughCache, make_client
        from cache import keys as cache_keys
        cache = ReadThroughCache(make_client(self.args.redis))
        n = 5 if self.smoke else 100
        host, port = server.url.split("//")[1].split(":")
        for uid, size in sorted(self.giants, key=lambda g: g[1]):
            valid = self.valid.get(uid, 0)
            for page in sorted({1, max(1, math.ceil(valid / 20))}):
                samples = []
                for _ in range(n):
                    # A generation bump is the service's own page invalidation: the next read is a miss.
                    cache.invalidate(generations=[(cache_keys.generation_key(uid), cache_keys.pages_key(uid))])
                    conn = http.client.HTTPConnection(host, int(port), timeout=30)
                    started = time.perf_counter()
                    conn.request("GET", f"/api/v1/users/{uid}/flyers?page={page}&page_size=20")
                    answer = conn.getresponse()
                    answer.read()
                    samples.append((time.perf_counter() - started) * 1000)
                    conn.close()
                    if answer.status != 200:
                        raise RuntimeError(f"page {page} of creator {uid}: status {answer.status}")
                self.growth.append(Growth(size, valid, page, samples))
                log(f"  growth: {size:6} flyers, page {page:4}: median {self.growth[-1].median:.2f} ms")

    def mixed_row(self, server: Server) -> None:
        tokens = self.login(server.url, self.pool_ids + self.checker_ids)
        rng = random.Random(7)
        self.flush()
        patch_files = []
        for k in range(16):
            path = self.out / f"patch-{k}.json"
            path.write_text(json.dumps({"bio": f"bench mixed write {k}"}))
            patch_files.append(str(path))
        from tests.images import photo_jpeg
        flyer_body, flyer_type = flyer_multipart(photo_jpeg((400, 300), 85), seeding.BENCH_TITLE + "mixed")
        flyer_file = self.out / "flyer.multipart"
        flyer_file.write_bytes(flyer_body)
        requests = []
        size = 2000 if self.smoke else 20000
        for _ in range(size):
            roll = rng.random()
            if roll < 0.95:
                uid = rng.choices(self.ranked, cum_weights=self._cum(), k=1)[0]
                if rng.random() < 0.65:
                    requests.append(wrk.get(f"/api/v1/users/{uid}/profile"))
                else:
                    pages = max(1, math.ceil(self.valid.get(uid, 0) / self.page_size))
                    page = 1 if rng.random() < 0.85 or pages == 1 else rng.randint(2, min(pages, 5))
                    requests.append(wrk.get(self.page_path(uid, page)))
            else:
                uid = rng.choice(self.pool_ids)
                auth = ("Authorization", f"Bearer {tokens[uid]}")
                if roll < 0.99:
                    requests.append(wrk.Request("PATCH", "/api/v1/users/me/profile",
                                                (auth, ("Content-Type", "application/json")), rng.choice(patch_files)))
                else:
                    requests.append(wrk.Request("POST", "/api/v1/flyers", (auth, ("Content-Type", flyer_type)),
                                                str(flyer_file)))
        self.warm(server, requests)
        checker = StaleChecker(server.url, [CheckerUser(u, tokens[u]) for u in self.checker_ids], flyer_body,
                               flyer_type, threads=2)
        row = self.measure(server, "mixed 95/5 zipf", requests, count_statuses=True, expect=(200, 201),
                           during=checker, retry=False)
        tally = checker.tally
        self.stale = tally.stale
        self.checks = (f"{tally.reads} reads after writes checked, {tally.stale} stale answers, "
                       f"{tally.failures} checker errors" + (f"; e.g. {tally.examples}" if tally.examples else ""))
        row.notes.append(self.checks)
        log(f"  stale answers: {tally.stale} ({self.checks})")
        self.cold_start(server, requests)

    def cold_start(self, server: Server, requests: list[wrk.Request], seconds: float = 12.0) -> None:
        """Flush Redis under the mixed workload's plan and sample the service's hit rate every 0.5 s."""
        plan = self.plan(server, "cold start", requests)
        self.flush()
        samples: list[tuple[float, float | None]] = []
        done = []

        def load() -> None:
            wrk.run(server.url, plan, seconds=seconds, connections=self.args.connections, threads=self.args.threads,
                    count_statuses=True, timeout_s=seconds + 30, log=self.wrk_log)
            done.append(True)

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(load)
            started, last = time.monotonic(), server.counters()
            while not done and time.monotonic() - started < seconds + 5:
                time.sleep(0.5)
                now_counts = server.counters()
                if last is None or now_counts is None:
                    break
                hits, lookups = bench_counters.lookups(bench_counters.delta(last, now_counts))
                samples.append((time.monotonic() - started, hits / lookups if lookups else None))
                last = now_counts
            future.result()
        self.cold_curve = samples
        back = next((t for t, rate in samples if rate is not None and rate > 0.9), None)
        log(f"  cold start: hit rate above 90% after {back if back is None else round(back, 1)} s")

    def _cum(self) -> list[float]:
        if not hasattr(self, "_cum_weights"):
            total, cum = 0.0, []
            for w in self.zipf_weights:
                total += w
                cum.append(total)
            self._cum_weights = cum
        return self._cum_weights

    def upload_rows(self, server: Server) -> None:
        from tests.images import photo_jpeg
        tokens = self.login(server.url, self.pool_ids)
        sizes = ([("upload 2 MB", (1600, 1200), self.args.upload_connections)] if self.smoke else
                 [("upload 2 MB", (4000, 3000), self.args.upload_connections),
                  ("upload 500 KB", (2000, 1500), self.args.upload_connections),
                  ("upload 2 MB @1", (4000, 3000), 1)])
        for label, dims, connections in sizes:
            image = photo_jpeg(dims, 90)
            body, content_type = picture_multipart(image)
            body_file = self.out / f"upload-{dims[0]}x{dims[1]}.multipart"
            body_file.write_bytes(body)
            requests = [wrk.Request("POST", "/api/v1/users/me/profile/picture",
                                    (("Authorization", f"Bearer {tokens[u]}"), ("Content-Type", content_type)),
                                    str(body_file)) for u in self.pool_ids]
            row = self.measure(server, label, requests, connections=connections, count_statuses=True, timeout_s=30,
                               retry=False)
            row.notes.append(f"{dims[0]}x{dims[1]} JPEG, {len(image) / 1e6:.2f} MB")

    # -- servers -----------------------------------------------------------------------------

    def server(self, name: str) -> Server:
        counters = self.out / "counters" / name
        if name == "service":
            env = dict(self.env)
            app = "wsgi:app"
            ready = "/healthz"
        else:
            env = {**self.env, "BASELINE": name}
            app = f'bench.baselines:create("{name}")'
            ready = (f"/api/v1/users/{self.creators[0]}/flyers" if name == "floor-sql-page"
                     else FLOOR_PATH if name in ("floor-static", "floor-redis")
                     else f"/api/v1/users/{self.user_ids[0]}/profile")
        server = Server(name, app, env, self.settings, self.out, counters, ready)
        self.commands.append(server.shown(SERVICE_ENV_SHOWN))
        log(f"{name}: {server.shown(SERVICE_ENV_SHOWN)}")
        return server

    def run_all(self) -> None:
        names = [n for n in ALL_SERVERS if n in self.args.only]
        if "flask-caching" in names and importlib.util.find_spec("flask_caching") is None:
            names.remove("flask-caching")
        self.redis.set(FLOOR_KEY, FLOOR_BODY)
        with contextlib.ExitStack() as stack:
            # All servers boot together before any row; each row then loads one server while the
            # others sit idle, so rows comparing servers can run back to back.
            servers = {}
            for name in names:
                servers[name] = self.server(name)
                stack.callback(servers[name].stop)
                servers[name].start()
            for name in names:
                stack.enter_context(servers[name])
            log("all servers up")
            for name in ("floor-static", "floor-redis"):
                if name in servers:
                    self.redis.set(FLOOR_KEY, FLOOR_BODY)
                    self.warm(servers[name], [wrk.get(FLOOR_PATH)])
                    self.measure(servers[name], "floor", [wrk.get(FLOOR_PATH)])
            if "service" in servers:
                saved = self.remember_users(self.pool_ids + self.checker_ids)
                stack.callback(self.cleanup, saved)
            self.read_rows({n: s for n, s in servers.items() if n not in ("floor-static", "floor-redis")})
            if "service" in servers:
                self.growth_rows(servers["service"])
                self.mixed_row(servers["service"])
                self.upload_rows(servers["service"])
        self.flush()

    def cold_lines(self) -> list[str]:
        samples = getattr(self, "cold_curve", None)
        if not samples:
            return []
        back = next((t for t, rate in samples if rate is not None and rate > 0.9), None)
        return ["## Cold start: Redis flushed under the mixed workload", "",
                "Hit rate of each 0.5 s after the FLUSHDB (the service's own counters), "
                f"{self.args.connections} connections; above 90% after "
                f"{'never' if back is None else f'{back:.1f} s'} (target: within 10 s).", "",
                "| s after flush | hit rate |", "|---:|---:|",
                *(f"| {t:.1f} | {'-' if rate is None else f'{100 * rate:.1f}%'} |" for t, rate in samples), ""]

    def floor_lines(self) -> list[str]:
        """Each miss row of the service over its bare-query floor's, measured in this run."""
        lines = ["## Misses against their bare-query floors", "",
                 "| row | service CPU µs | floor | floor CPU µs | CPU × | service p99 ms | floor p99 ms | p99 × |",
                 "|---|---:|---|---:|---:|---:|---:|---:|"]
        found = False
        for row in self.rows:
            if row.server != "service" or "miss" not in row.label:
                continue
            floor_name = MISS_FLOORS[row.label.split()[0]]
            floor = next((r for r in self.rows if r.server == floor_name and r.label == row.label), None)
            if floor is None or not floor.cpu_us or not floor.p99_ms:
                continue
            found = True
            lines.append(f"| {row.label} | {row.cpu_us:.0f} | {floor_name} | {floor.cpu_us:.0f} | "
                         f"{row.cpu_us / floor.cpu_us:.2f} | {row.p99_ms:.2f} | {floor.p99_ms:.2f} | "
                         f"{row.p99_ms / floor.p99_ms:.2f} |")
        if not found:
            return []
        return lines + ["", "Targets (issue 13): CPU × at most 1.3 for each miss row; p99 × at most 2 at 4 "
                            "connections (\"profile miss @4\").", ""]

    def cleanup(self, saved: list[tuple]) -> None:
        self.restore_users(saved)
        deleted = seeding.delete_bench_writes(self.db_url)
        log(f"cleaned up: {deleted} flyers written by the run deleted, writers' profiles restored")

    # -- report --------------------------------------------------------------------------------

    def report(self, command: str, started: float) -> str:
        m = machine()
        drivers = sorted({r.driver for r in self.rows})
        wrk_example = " ".join(wrk.wrk_command("http://127.0.0.1:PORT", Path("bench/out/…/plan-….tsv"),
                                               self.args.duration, self.args.connections, self.args.threads))
        wrk_example = wrk_example.replace(str(ROOT) + "/", "")
        lines = [
            f"# Benchmark results{' (smoke run: tiny data, not comparable)' if self.smoke else ''}",
            "",
            f"Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; code: {revision()}; "
            f"run took {time.monotonic() - started:.0f} s. Methods and discussion: docs/PERFORMANCE.md.",
            "",
            "Machine: " + "; ".join(f"{k}: {v}" for k, v in m.items()) + ". "
            "PostgreSQL, Redis, wrk and the servers all share these cores, and other people's processes "
            "may run too: compare ratios more than absolute numbers.",
            "",
            "## Commands",
            "",
            "```",
            command,
            f"# data: {self.setup_line}",
            f"# servers ({self.settings.describe()} each; all booted before the first row, loaded one at a time):",
            *self.commands,
            "# load (each row):",
            wrk_example,
            "```",
            "",
            f"Rows: {self.args.duration:g} s each after a {self.args.warmup:g} s warm-up per server, "
            f"{self.args.connections} connections ({self.args.upload_connections} for uploads), driver: {', '.join(drivers)}.",
            "",
            "## Table",
            "",
            table(self.rows),
            "",
            *self.floor_lines(),
            *self.cold_lines(),
            "CPU = utime+stime of the gunicorn master and workers over the row / requests sent (completed + the few "
            "still in flight when wrk stopped, which the server serves too). "
            "× columns: this row's CPU/request over floor-redis's, and over the same row of flask-caching and "
            "no-cache. Hit rate: service = the service's own CacheStats counters (near_hit + hit + lease_wait over all "
            "lookups), flask-caching = its backend's get() answers (None = miss), both counted in the workers. "
            "SQL/req = statements counted by a "
            "SQLAlchemy before_cursor_execute listener in each worker; pings/req = pool checkouts, each one a "
            "pool_pre_ping round trip. \"plan wrapped\" (miss rows only): requests sent after the row's list of "
            "never-used ids ran out, which would be hits. Redis/PG µs = CPU of redis-server / all postgres processes per request. "
            f"Others' CPU = what the rest of the machine used during the row (% of all cores); a read row above "
            f"{self.args.noisy:g}% is measured again, up to {self.args.retries} times, keeping the quietest attempt.",
            "",
        ]
        notes = [f"- {r.server} {r.label}: {'; '.join(r.notes)}" for r in self.rows if r.notes]
        if notes:
            lines += ["Row notes:", "", *notes, ""]
        lines += ["## Cost growth: creator page miss latency (unloaded, one request at a time, page size 20)", "",
                  growth_table(self.growth) if self.growth else "not measured", "",
                  "Each request follows a generation bump of that creator's pages (the service's own "
                  "invalidation), so every one is a miss.", "",
                  "## Redis memory (MEMORY USAGE, SAMPLES 0)", ""]
        lines += [f"- {k}: {v}" for k, v in self.memory] or ["not measured"]
        lines += ["", "## Read-your-writes during the mixed workload", "",
                  f"stale answers: {self.stale if self.stale is not None else 'not measured'}"
                  + (f" ({self.checks})" if self.checks else ""), "",
                  "## Targets", "", targets_table(targets(self.rows, self.growth, self.stale)), ""]
        if self.notes:
            lines += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        return "\n".join(lines)


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU of this process and of its waited-for children (each wrk run)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def revision() -> str:
    """The commit measured, and whether the service's files differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service", "cache", "models", "wsgi.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head}" + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds through the blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.monotonic()
    command = ".venv/bin/python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    wrk.FORCE_PYTHON = args.driver == "python"
    with exclusive(20 if args.smoke else 120):
        notes = ensure_tools(args.smoke)
        bench = Bench(args)
        bench.notes += notes
        bench.prepare_database()
        try:
            bench.run_all()
        finally:
            with contextlib.suppress(Exception):
                bench.flush()
        text_out = bench.report(command.strip(), started)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text_out)
    print()
    print(table(bench.rows))
    print()
    print(growth_table(bench.growth) if bench.growth else "growth: not measured")
    print()
    for k, v in bench.memory:
        print(f"{k}: {v}")
    print()
    print(targets_table(targets(bench.rows, bench.growth, bench.stale)))
    print()
    print(f"stale answers: {bench.stale if bench.stale is not None else 'not measured'}")
    print(f"report written to {args.results.relative_to(ROOT) if args.results.is_relative_to(ROOT) else args.results}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
