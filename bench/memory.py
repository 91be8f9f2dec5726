"""Measure the Redis memory of cached answers: bytes per cached profile and per cached page (MEMORY USAGE).

    python -m bench.memory --redis-url redis://127.0.0.1:6379/13 [--users 2000] [--creators 200]

Seeds a throw-away SQLite database (``flask seed``), reads every profile and the first page
(20 flyers) of every creator through the service once, then sums ``MEMORY USAGE`` over the
cache's keys by kind and compares ``used_memory`` before and after. The Redis database named
is flushed first: give it one of its own.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

from sqlalchemy import func, select

from cache import keys, make_client
from models import Flyer, User, db
from service.testing import make_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--creators", type=int, default=200)
    args = parser.parse_args()
    redis = make_client(args.redis_url, connect_timeout=2, socket_timeout=5)
    redis.flushdb()
    directory = tempfile.mkdtemp(prefix="bench-memory-")
    app = make_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{directory}/memory.db", "MEDIA_ROOT": directory,
                    "CACHE_NEAR_MAX_BYTES": 0, "PUBLIC_BASE_URL": "https://api.example.com"}, redis_client=redis)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["seed", "--users", str(args.users), "--flyers-per-user", "0", "--big-creators", "0",
                                 "--creators", str(args.creators), "--flyers-min", "20", "--flyers-max", "40"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        users = db.session.scalars(select(User.id)).all()
        creators = db.session.scalars(select(Flyer.creator_id).group_by(Flyer.creator_id)
                                      .having(func.count() >= 20)).all()
    before = redis.info("memory")["used_memory"]
    client = app.test_client()
    for user_id in users:
        assert client.get(f"/api/v1/users/{user_id}/profile").status_code == 200
    for user_id in creators:
        assert client.get(f"/api/v1/users/{user_id}/flyers?page=1&page_size=20").status_code == 200
    after = redis.info("memory")["used_memory"]
    usage: dict[str, list[int]] = defaultdict(list)
    for key in redis.scan_iter(f"{keys.PREFIX}:*", count=1000):
        name = key.decode()
        kind = "profile" if name.endswith(":profile") else "page" if ":pages:g" in name else \
            "generation" if name.endswith(":gen") else "other"
        usage[kind].append(redis.memory_usage(key, samples=0))
    print(f"profiles cached: {len(usage['profile'])}, pages cached: {len(usage['page'])}"
          f" (20 flyers each), generation counters: {len(usage['generation'])}")
    for kind in ("profile", "page", "generation"):
        sizes = usage[kind]
        if sizes:
            print(f"  {kind:10s} MEMORY USAGE mean {sum(sizes) / len(sizes):8.0f} B, max {max(sizes)} B")
    profile = sum(usage["profile"]) / max(1, len(usage["profile"]))
    page = (sum(usage["page"]) + sum(usage["generation"])) / max(1, len(usage["page"]))
    print(f"  per million profiles: {profile * 1e6 / 2**30:.2f} GiB; per million first pages"
          f" (with their generation counter): {page * 1e6 / 2**30:.2f} GiB")
    print(f"  used_memory grew {after - before} B for {sum(len(v) for v in usage.values())} keys"
          f" ({(after - before) / max(1, len(usage['profile']) + len(usage['page'])):.0f} B per cached answer)")


if __name__ == "__main__":
    main()
