"""CPU per cache hit in one process: the fast path's near-cache hit through the whole WSGI stack.

    .venv/bin/python -m bench.hit_cost --pg postgresql://.../db --redis redis://127.0.0.1:6379/2

Prints µs of CPU (``time.process_time``) per hit over ``--hits`` hits of 50 hot profiles,
best of ``--rounds`` rounds. Run it from two checkouts (``PYTHONPATH``) in turns to compare
code versions; ``ACCESS_LOG_SAMPLE`` / ``LOG_LEVEL`` in the environment choose the access log.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--hits", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(DATABASE_URL=args.pg, REDIS_URL=args.redis, RATE_LIMIT_ENABLED="false",
                      PUBLIC_BASE_URL="http://127.0.0.1:1")

    from bench.inprocess import call
    from service import create_app

    app = create_app()
    paths = [f"/api/v1/users/{i}/profile" for i in range(1, 51)]
    for path in paths * 3:  # fill Redis and the near cache
        call(app, path)
    best = float("inf")
    for _ in range(args.rounds):
        started = time.process_time()
        for i in range(args.hits):
            call(app, paths[i % 50])
        best = min(best, (time.process_time() - started) / args.hits * 1e6)
    print(f"{best:.2f}")


if __name__ == "__main__":
    main()
