"""Create, migrate and seed the benchmark database, or reuse it when its counts already match."""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.servers import ROOT

BENCH_TITLE = "bench-"  # flyers the benchmark writes start with this, and are deleted afterwards


@dataclass(frozen=True)
class SeedSpec:
    users: int
    creators: int
    flyers_min: int
    flyers_max: int
    giants: tuple[int, ...]  # one creator each, with exactly this many flyers: the first users

    def seed_args(self) -> list[str]:
        args = ["--users", str(self.users), "--flyers-per-user", "0", "--big-creators", "0",
                "--creators", str(self.creators), "--flyers-min", str(self.flyers_min),
                "--flyers-max", str(self.flyers_max)]
        for n in self.giants:
            args += ["--giant-flyers", str(n)]
        return args


FULL = SeedSpec(users=10_000, creators=1_000, flyers_min=100, flyers_max=300, giants=(10_000, 1_000, 100))
SMOKE = SeedSpec(users=60, creators=6, flyers_min=20, flyers_max=40, giants=(100, 30, 10))


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1] if url.startswith("postgresql://") else url


def postgres_reachable(url: str) -> bool:
    admin = make_url(sqlalchemy_url(url)).set(database="postgres")
    try:
        engine = create_engine(admin, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database of ``url`` if missing; True if it was created."""
    if not url.startswith("postgresql"):
        return False
    target = make_url(sqlalchemy_url(url))
    if target.database in (None, "test", "postgres"):
        raise SystemExit(f"refusing to benchmark on database {target.database!r}")
    engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    engine.dispose()
    return not exists


def flask(args: list[str], env: dict[str, str], log: Path) -> str:
    full_env = {**os.environ, **env, "FLASK_APP": "wsgi"}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "flask"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=900)
    with log.open("a") as out:
        out.write(f"$ flask {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def delete_bench_writes(url: str) -> int:
    """Delete the flyers an earlier run wrote (titles starting with ``bench-``)."""
    engine = create_engine(sqlalchemy_url(url))
    with engine.begin() as conn:
        ids = f"SELECT id FROM flyers WHERE title LIKE '{BENCH_TITLE}%'"
        conn.execute(text(f"DELETE FROM flyer_images WHERE flyer_id IN ({ids})"))
        deleted = conn.execute(text(f"DELETE FROM flyers WHERE title LIKE '{BENCH_TITLE}%'")).rowcount
    engine.dispose()
    return deleted


def matches(url: str, spec: SeedSpec) -> tuple[bool, str]:
    """Whether the database holds exactly what ``spec`` seeds (up to the random counts)."""
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            users = conn.execute(text("SELECT count(*), min(id) FROM users")).one()
            per_creator = dict(conn.execute(text(
                "SELECT creator_id, count(*) FROM flyers GROUP BY creator_id")).all())
            flyers = sum(per_creator.values())
    except Exception as error:  # no tables yet
        return False, f"not seeded ({type(error).__name__})"
    finally:
        engine.dispose()
    if users[0] != spec.users:
        return False, f"{users[0]} users, want {spec.users}"
    first = users[1]
    for index, size in enumerate(spec.giants):
        if per_creator.get(first + index) != size:
            return False, f"user {first + index} has {per_creator.get(first + index)} flyers, want {size}"
    others = [n for uid, n in per_creator.items() if uid >= first + len(spec.giants)]
    if len(others) != spec.creators or not all(spec.flyers_min <= n <= spec.flyers_max for n in others):
        return False, f"{len(others)} other creators, want {spec.creators} with {spec.flyers_min}-{spec.flyers_max}"
    return True, f"{users[0]} users, {len(per_creator)} creators, {flyers} flyers"


def prepare(url: str, spec: SeedSpec, env: dict[str, str], log: Path, *, reseed: bool = False) -> str:
    """Make the database ready; returns a line saying what was done."""
    created = ensure_database(url)
    flask(["db", "upgrade"], env, log)
    deleted = delete_bench_writes(url)
    ok, what = (False, "reseed asked") if reseed else matches(url, spec)
    if ok and not created:
        # The deletions leave dead tuples below autovacuum's threshold; without a vacuum the
        # validity index's index-only scans fetch the heap again (4,488 fetches and 5 ms for
        # the 10,000-flyer creator's count, measured), which production's autovacuum avoids.
        vacuum(url)
        return f"reusing the seeded database ({what}; {deleted} flyers of an earlier run deleted; vacuumed)"
    started = time.perf_counter()
    engine = create_engine(sqlalchemy_url(url))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE flyer_images, flyers, users RESTART IDENTITY CASCADE"))
        else:
            for table in ("flyer_images", "flyers", "users"):
                conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    out = flask(["seed", *spec.seed_args()], env, log).strip().splitlines()
    vacuum(url)
    ok, what = matches(url, spec)
    if not ok:
        raise RuntimeError(f"seeding did not give the expected data: {what}")
    return f"seeded ({what}) in {time.perf_counter() - started:.1f} s: {out[-1] if out else ''}"


def vacuum(url: str) -> None:
    engine = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
    engine.dispose()
