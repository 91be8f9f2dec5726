"""Per-worker counters that the benchmark reads from outside the server processes.

Each gunicorn worker (see bench/gunicorn_conf.py) maps a small file ``<dir>/<pid>.cnt`` of
64-bit slots and keeps it current: SQL statements it sent (SQLAlchemy's
``before_cursor_execute``, the event the test suite counts with), pool checkouts (each one
is a ``pool_pre_ping`` round trip), and the service's own in-process ``CacheStats``
counters, copied every 20 ms (for the flask-caching baseline: its backend's get() answers,
None counting as a miss). The benchmark sums the files before and after a row.
"""
from __future__ import annotations

import struct
from pathlib import Path

FAMILIES = ("profile", "flyer_page", "flyer", "flask_caching")  # the last: the flask-caching baseline
RESULTS = ("near_hit", "hit", "miss", "lease_wait", "error", "bypass", "stale", "lease_timeout")
SLOTS = ["statements", "checkouts"] + [f"{f}|{r}" for f in FAMILIES for r in RESULTS]
INDEX = {name: n for n, name in enumerate(SLOTS)}
SIZE = 8 * len(SLOTS)
HIT_RESULTS = ("near_hit", "hit", "lease_wait")


def read_all(directory: str | Path) -> dict[str, int]:
    """Sum every worker file in ``directory`` (workers that exited keep their last values)."""
    total = dict.fromkeys(SLOTS, 0)
    for path in Path(directory).glob("*.cnt"):
        data = path.read_bytes()
        if len(data) < SIZE:
            continue
        for name, value in zip(SLOTS, struct.unpack_from(f"<{len(SLOTS)}q", data)):
            total[name] += value
    return total


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in SLOTS}


def lookups(counts: dict[str, int]) -> tuple[int, int]:
    """(answered from the cache, all lookups) over every family."""
    hits = sum(counts[f"{f}|{r}"] for f in FAMILIES for r in HIT_RESULTS)
    total = sum(counts[f"{f}|{r}"] for f in FAMILIES for r in RESULTS)
    return hits, total
