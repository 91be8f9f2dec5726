"""CPU per cache hit through the service's WSGI stack, in one process: near-cache hits and Redis hits.

    .venv/bin/python -m bench.hit_path --redis redis://127.0.0.1:6379/2 [--requests 20000]
    .venv/bin/python -m bench.hit_path --mode cluster --redis redis://127.0.0.1:7000  # any node of a cluster

Builds the service on a throw-away SQLite file with 100 users, reads each profile until it is
cached (and copied, for the near rows), then times `--requests` hits with ``time.process_time``.
Used to compare the hit path before and after a change: run it in both trees, in turns.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time


def environ(path: str) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.url_scheme": "http",
            "HTTP_HOST": "127.0.0.1:1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "1",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}


def call(app, path: str) -> None:
    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(f"{path}: {status}")

    for _ in app(environ(path), start_response):
        pass


def measure(near: bool, redis_url: str, requests: int, mode: str = "single") -> float:
    folder = tempfile.mkdtemp()
    os.environ.update(DATABASE_URL=f"sqlite:///{folder}/hits.db", REDIS_URL=redis_url, RATE_LIMIT_ENABLED="false",
                      PUBLIC_BASE_URL="http://127.0.0.1:1", CACHE_NEAR_MAX_BYTES=str(64 << 20 if near else 0),
                      MEDIA_ROOT=f"{folder}/media", OUTBOX_POLL_INTERVAL="0", REDIS_MODE=mode)
    import redis
    from werkzeug.security import generate_password_hash

    from models import User, db
    from service import create_app

    if mode == "cluster":
        from redis.cluster import RedisCluster

        cluster = RedisCluster.from_url(redis_url)
        cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
        cluster.close()
    else:
        redis.Redis.from_url(redis_url).flushdb()
    app = create_app()
    with app.app_context():
        db.create_all()
        password = generate_password_hash("x", method="pbkdf2:sha256:1000")
        db.session.add_all([User(email=f"u{n}@example.com", username=f"u{n}", password_hash=password,
                                 display_name=f"User {n}", bio="") for n in range(100)])
        db.session.commit()
    paths = [f"/api/v1/users/{n}/profile" for n in range(1, 101)]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until every profile is cached (and copied, with a fresh proof)
        for path in paths:
            call(app, path)
    started = time.process_time()
    for i in range(requests):
        call(app, paths[i % 100])
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--near", choices=["on", "off"], default="on")
    parser.add_argument("--mode", choices=["single", "cluster"], default="single")
    args = parser.parse_args()
    cost = measure(args.near == "on", args.redis, args.requests, args.mode)
    print(f"{'near' if args.near == 'on' else 'redis'} hit ({args.mode}): {cost:.1f} µs")


if __name__ == "__main__":
    main()
