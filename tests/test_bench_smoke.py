"""The benchmark's smoke mode runs end to end: servers up, every row driven, table printed, no stale answer.

It asserts no timing: the numbers of a 1-second row on tiny data mean nothing.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tdd_green

ROOT = Path(__file__).resolve().parents[1]


def _redis_up() -> bool:
    try:
        import redis
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.mark.skipif(not _redis_up(), reason="the benchmark needs Redis at 127.0.0.1:6379")
def test_the_smoke_benchmark_completes_with_no_stale_answer():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT")}
    process = subprocess.Popen([sys.executable, "-m", "bench.run", "--smoke"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=120)  # a bound, not a speed goal: ~50 s on a loaded machine
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the benchmark stops its servers on SIGTERM
        out, err = process.communicate(timeout=20)
        pytest.fail("the smoke benchmark took more than 120 s:\n" + out[-3000:] + err[-3000:])

    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert "| row | server |" in out
    for row in ("| profile hit | service |", "| profile miss | service |", "| page miss p1 | service |",
                "| mixed 95/5 zipf | service |", "| upload 2 MB | service |", "| floor | floor-redis |"):
        assert row in out, row
    assert "stale answers: 0\n" in out
