"""Read-your-writes across several hosts with real latency between them and PostgreSQL/Redis.

Three hosts A, B and C (network namespaces, ``conftest.hosts``) each run a gunicorn instance
(2 sync workers) and share nothing but PostgreSQL, the Redis deployment and the object store
(a directory), which they reach only through their own delay proxy: steady one-way delays A
2/3 ms, B 10/6 ms, C 4/12 ms (to the server / back). The checker (``checker.py``) writes the
profile's bio and the flyer's title through A and reads both on B, C and A; a read that started
after a write's answer and shows older data is stale. Each case runs for each Redis mode
(single, Sentinel, Cluster) and must show 0 stale reads and no 5xx.

Each test prints its figures (``-s``); with FAULTS_FIGURES=<file> each also appends them as a
JSON line (docs/DEPLOY.md, "Several hosts").
"""
from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable

import pytest

from cache import keys
from tests.faults.checker import Checker, Result
from tests.faults.conftest import HOST_DELAYS, HostWorld

pytestmark = [pytest.mark.faults, pytest.mark.tdd_green]

READERS = "BBCCA"
WARM = 0.5        # seconds of reads before the case's fault
RUN = 3.0         # seconds of writes (every WRITE_INTERVAL) with the fault
AFTER = 0.5       # seconds of reads after it
WRITE_INTERVAL = 0.15
MIN_CHECKED = 150


def test_steady_latency_between_hosts_leaves_no_stale_reads(hosts_case):
    result, figures = run_case(hosts_case, "steady delays", lambda stop: stop.wait(RUN))

    assert_exact(result, figures)
    assert figures["hit_rate_B"] > 0, f"the cache was never used on B: {figures}"


def test_latency_changing_mid_run_leaves_no_stale_reads(hosts_case):
    seed = random.randrange(1 << 30)

    def change(stop: threading.Event) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + RUN
        while time.monotonic() < deadline and not stop.wait(0.3):
            for proxy in hosts_case.proxies.values():
                for group in ("redis", "pg"):
                    proxy.delay(rng.choice((0, 1, 2, 5, 10, 20, 30)), rng.choice((0, 1, 2, 5, 10, 20, 30)), group)

    result, figures = run_case(hosts_case, "delays changing every 0.3 s (0-30 ms each way)", change, seed=seed)

    assert_exact(result, figures)


def test_the_writers_host_cut_off_from_redis_leaves_no_stale_reads(hosts_case):
    # A's writes retry their invalidations for CACHE_WRITE_DEADLINE, then answer with them still
    # in the outbox; B and C hear of the rows from PostgreSQL (NOTIFY) and deliver them.
    def cut(stop: threading.Event) -> None:
        hosts_case.proxies["A"].refuse(True, "redis")
        hosts_case.proxies["A"].cut("redis")
        stop.wait(1.5)
        hosts_case.proxies["A"].refuse(False, "redis")
        stop.wait(RUN - 1.5)

    result, figures = run_case(hosts_case, "A's Redis connections cut and refused for 1.5 s", cut)

    assert_exact(result, figures)


def test_a_readers_host_with_half_open_redis_connections_leaves_no_stale_reads(hosts_case):
    def half_open(stop: threading.Event) -> None:
        hosts_case.proxies["B"].half_open("all", "redis")
        stop.wait(1.5)
        hosts_case.proxies["B"].half_open(None, "redis")
        stop.wait(RUN - 1.5)

    result, figures = run_case(hosts_case, "B's Redis connections half-open for 1.5 s", half_open)

    assert_exact(result, figures)


def test_the_checker_catches_an_older_value_planted_in_redis(hosts_case):
    # The twin that must fail: an entry from before a write, put back into Redis behind the
    # service's back after the write answered, is served by the hosts that read it from Redis.
    checker = hosts_case.checker(readers=READERS).start()
    time.sleep(WARM)
    key = keys.profile_key(hosts_case.user_id)
    with hosts_case.admin_redis() as admin:
        before = admin.dump(key)
        checker.write(only="profile")
        time.sleep(0.3)
        admin.restore(key, 0, before, replace=True)
        time.sleep(1.0)
        admin.delete(key)
    result = checker.stop()

    assert before is not None, "the profile was never cached"
    assert result.stale > 0, result.summary()


# helpers ---------------------------------------------------------------------------------------

def run_case(world: HostWorld, name: str, fault: Callable[[threading.Event], object],
             **extra: object) -> tuple[Result, dict[str, object]]:
    """Warm up, write every WRITE_INTERVAL through A while `fault` runs, read AFTER more; judge and report."""
    checker = world.checker(readers=READERS).start()
    time.sleep(WARM)
    counts_before = world.cache_counts("B")
    stop = threading.Event()
    checker.start_writer(WRITE_INTERVAL)
    fault_thread = threading.Thread(target=fault, args=(stop,), daemon=True)
    fault_thread.start()
    fault_thread.join(timeout=RUN + 30)
    stop.set()
    checker.stop_writer()
    world.steady()
    time.sleep(AFTER)
    counts_after = world.cache_counts("B")
    result = checker.stop()
    figures = {"mode": world.mode, "case": name, **latencies(checker),
               "hit_rate_B": hit_rate(counts_before, counts_after), **extra}
    report(result, figures)
    return result, figures


def latencies(checker: Checker) -> dict[str, object]:
    """Write answer times (mean, max) and read times per host (median, 99th percentile), in ms."""
    writes = [(w.answered - w.sent) * 1000 for w in checker.writes if w.status == 200 and w.answered]
    figures: dict[str, object] = {"write_ms_mean": round(statistics.fmean(writes)) if writes else None,
                                  "write_ms_max": round(max(writes)) if writes else None}
    for target in sorted(set(READERS)):
        times = sorted((r.ended - r.started) * 1000 for r in checker.reads if r.target == target and r.status == 200)
        if times:
            figures[f"read_ms_{target}"] = (round(times[len(times) // 2], 1), round(times[int(len(times) * 0.99)], 1))
    return figures


def hit_rate(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Profile hits / lookups between two `cache_counts` (0 if unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def report(result: Result, figures: dict[str, object]) -> None:
    print(f"\n[hosts {figures['mode']}: {figures['case']}] {result.summary()} || "
          + ", ".join(f"{k} {v}" for k, v in figures.items() if k not in ("mode", "case")))
    path = os.environ.get("FAULTS_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({**figures, "checked": result.checked, "stale": result.stale,
                                  "max_staleness_ms": round(result.max_staleness * 1000),
                                  "5xx": result.status_5xx + result.write_5xx, "conn_errors": result.conn_errors,
                                  "writes": result.writes_answered, "delays": HOST_DELAYS}) + "\n")


def assert_exact(result: Result, figures: dict[str, object]) -> None:
    """0 stale, 0 5xx, only the expected answers, no connection errors, enough reads judged."""
    problems = result.answer_problems()
    if result.conn_errors or result.write_errors:
        problems.append(f"{result.conn_errors + result.write_errors} connection errors")
    if result.checked < MIN_CHECKED:
        problems.append(f"only {result.checked} reads judged (< {MIN_CHECKED})")
    assert not problems, "; ".join(problems) + f"\n{result.summary()}\n{figures}"
