"""CPU per fast-path hit through the whole WSGI stack (near cache and Redis), in one process.

    .venv/bin/python -m bench.edge_hit --redis redis://127.0.0.1:6379/3 [--requests 20000]

SQLite in a temporary directory, one user with a flyer; prints µs per request for a profile
hit served from the near cache and for a creator page hit. Used to check that the HTTP
edge's checks (service/edge.py, trusted hosts, id ranges) do not make the hit path dearer.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from typing import Any


def environ(path: str, query: str = "") -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "wsgi.url_scheme": "http",
            "HTTP_HOST": "localhost", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_USER_AGENT": "bench", "HTTP_ACCEPT": "*/*",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}


def run(app: Any, path: str, query: str, n: int) -> float:
    statuses = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        statuses.append(status)

    for _ in app(environ(path, query), start_response):
        pass
    assert statuses[-1].startswith("200"), statuses[-1]
    started = time.process_time()
    for _ in range(n):
        for _ in app(environ(path, query), start_response):
            pass
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--public-base-url", default="", help="PUBLIC_BASE_URL (then only its host is served)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp()
    os.environ.update(DATABASE_URL=f"sqlite:///{workdir}/bench.db", REDIS_URL=args.redis,
                      RATE_LIMIT_ENABLED="false", MEDIA_ROOT=workdir, PASSWORD_HASH_METHOD="pbkdf2:sha256:1000",
                      PUBLIC_BASE_URL=args.public_base_url)

    import redis

    from models import db
    from service import create_app

    redis.Redis.from_url(args.redis).flushdb()
    app = create_app()
    with app.app_context():
        db.create_all()
    client = app.test_client()
    token = client.post("/api/v1/auth/register", json={
        "email": "bench@example.com", "password": "password123", "username": "bench"}).json["token"]
    del token
    wsgi = app.wsgi_app
    rows = {"profile hit": ("/api/v1/users/1/profile", ""), "page hit": ("/api/v1/users/1/flyers", "page=1")}
    for label, (path, query) in rows.items():
        figures = [run(wsgi, path, query, args.requests) for _ in range(args.rounds)]
        print(f"{label:12s} median {statistics.median(figures):6.1f} µs/request  "
              f"(rounds: {', '.join(f'{f:.1f}' for f in figures)})")


if __name__ == "__main__":
    main()
