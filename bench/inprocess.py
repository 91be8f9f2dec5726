"""CPU per request in one process, the service against its floors and no-cache, interleaved.

No gunicorn, no sockets on the HTTP side, no other workers: each request is a WSGI call, and
the CPU of this process (``time.process_time``) is summed per server. The servers take turns
request by request (ABAB, then BABA), so drift of the shared machine falls on both alike;
that makes these ratios steadier than the gunicorn rows of ``bench.run``, at the price of
leaving out what the HTTP server costs (the same for all of them).

    .venv/bin/python -m bench.inprocess            # needs the seeded "bench" database (bench.run seeds it)
    .venv/bin/python -m bench.inprocess --pg postgresql://postgres@127.0.0.1:5432/bench_x --redis redis://127.0.0.1:P/2

Misses are measured against floor-sql / floor-sql-page (the same statements with psycopg over
a kept connection) and no-cache; the profile hit against floor-static.

Redis db 2 is flushed before each miss measurement.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Any, Callable, Iterable

Wsgi = Callable[[dict, Callable], Iterable[bytes]]


def environ(path: str) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "wsgi.url_scheme": "http",
            "HTTP_HOST": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}


def call(app: Wsgi, path: str) -> None:
    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        if not status.startswith(("200", "304")):
            raise RuntimeError(f"{path}: {status}")

    for _ in app(environ(path), start_response):
        pass


def interleaved(apps: dict[str, Wsgi], paths: list[str]) -> dict[str, float]:
    """µs of CPU per request for each app, over `paths` taken in turns."""
    spent = dict.fromkeys(apps, 0.0)
    names = list(apps)
    for i, path in enumerate(paths):
        for name in names if i % 2 else reversed(names):
            started = time.process_time()
            call(apps[name], path)
            spent[name] += time.process_time() - started
    return {name: total / len(paths) * 1e6 for name, total in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--requests", type=int, default=3000, help="requests per row and server")
    args = parser.parse_args()
    os.environ.update(DATABASE_URL=args.pg, REDIS_URL=args.redis, RATE_LIMIT_ENABLED="false",
                      PUBLIC_BASE_URL="http://127.0.0.1:1")

    import redis

    from bench.baselines import FLOOR_PATH, create
    from cache import keys
    from service import create_app

    service, no_cache, floor = create_app(), create("no-cache"), create("floor-static")
    floor_sql, floor_sql_page = create("floor-sql"), create("floor-sql-page")
    client = redis.Redis.from_url(args.redis)
    n = args.requests
    profiles = [f"/api/v1/users/{i}/profile" for i in range(1, n + 1)]
    creators = min(n, 1000)  # the bench data's creators have the lowest ids
    pages = [f"/api/v1/users/{i}/flyers" for i in range(1, creators + 1)]
    later = [f"/api/v1/users/{i}/flyers?page=2&page_size=20" for i in range(1, creators + 1)]
    for path in profiles[:200] + pages[:100] + later[:100]:  # warm every code path and connection
        call(service, path)
        call(no_cache, path)
        call(floor_sql if path.endswith("profile") else floor_sql_page, path)

    rows = []
    for label, paths, floor_name, floor_app in (("profile miss", profiles, "floor-sql", floor_sql),
                                                ("page miss p1", pages, "floor-sql-page", floor_sql_page),
                                                ("page miss p2", later, "floor-sql-page", floor_sql_page)):
        client.flushdb()
        client.publish(keys.INVALIDATION_CHANNEL, keys.ALL)  # and the near cache's copies
        cpu = interleaved({"service": service, "no-cache": no_cache, floor_name: floor_app}, paths)
        rows.append((label, cpu["service"], floor_name, cpu[floor_name]))
        rows.append((label, cpu["service"], "no-cache", cpu["no-cache"]))
    hot = profiles[:100] * (n // 100)
    for path in hot[:100]:
        call(service, path)
        call(service, path)
    cpu = interleaved({"service": service, "floor-static": _floor(floor, FLOOR_PATH)}, hot)
    rows.append(("profile hit", cpu["service"], "floor-static", cpu["floor-static"]))

    print(f"{'row':<14} {'service µs':>11} {'baseline':<15} {'µs':>7} {'ratio':>6}")
    for label, ours, baseline, theirs in rows:
        print(f"{label:<14} {ours:>11.0f} {baseline:<15} {theirs:>7.0f} {ours / theirs:>6.2f}")


def _floor(app: Wsgi, path: str) -> Wsgi:
    """floor-static answers one path whatever is asked: give it that path."""
    return lambda environ_, start_response: app({**environ_, "PATH_INFO": path}, start_response)


if __name__ == "__main__":
    main()
