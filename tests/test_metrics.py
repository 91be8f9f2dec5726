"""/metrics: this instance only, counters that never go down, and every counter family moved exactly."""
import os
import subprocess
import sys

import fakeredis
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models import db
from service import create_app
from service.telemetry import Telemetry, gunicorn_mark_process_dead

pytestmark = pytest.mark.tdd_green


@pytest.fixture
def app_config(app_config):
    return {**app_config, "METRICS_FLUSH_INTERVAL": 0.0, "CACHE_AUDIT_FRACTION": 0.0}


@pytest.fixture
def other_instance(app_config, redis_server):
    """A second instance on the same database and Redis."""
    other = create_app(app_config, redis_client=fakeredis.FakeRedis(server=redis_server))
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def profile_url(register):
    user_id, _ = register("alice")
    return f"/api/v1/users/{user_id}/profile"


def scrape(client) -> dict[tuple, float]:
    """{(sample name, (sorted label pairs)): value} of one /metrics answer."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before, after) -> dict[tuple, float]:
    """What changed between two scrapes of counters and histograms (gauges and process_* left out)."""
    out = {}
    for key, v in after.items():
        name = key[0]
        if name.startswith(("process_", "python_")) or not name.endswith(("_total", "_count", "_bucket")):
            continue
        if name.startswith("http_request_duration_seconds") and dict(key[1]).get("endpoint") == "operations.metrics":
            continue  # the scrapes themselves
        d = v - before.get(key, 0.0)
        if d:
            out[key] = d
    return out


def read(client, url, times):
    for _ in range(times):
        assert client.get(url).status_code == 200


def test_each_instance_counts_exactly_its_own_requests(client, profile_url, other_instance):
    other = other_instance.test_client()
    mine_before, theirs_before = scrape(client), scrape(other)

    read(client, profile_url, 3)
    read(other, profile_url, 5)

    mine, theirs = moved(mine_before, scrape(client)), moved(theirs_before, scrape(other))
    lookups = lambda m: sum(v for k, v in m.items() if k[0] == "cache_requests_total")  # noqa: E731
    requests = lambda m: sum(v for k, v in m.items() if k[0] == "http_request_duration_seconds_count")  # noqa: E731
    assert (lookups(mine), requests(mine)) == (3, 3)
    assert (lookups(theirs), requests(theirs)) == (5, 5)


def test_an_idle_instance_shows_nothing_of_the_others(client, profile_url, other_instance):
    idle_before = scrape(other_instance.test_client())

    read(client, profile_url, 4)

    assert moved(idle_before, scrape(other_instance.test_client())) == {}


def test_a_scripted_sequence_moves_each_counter_by_exactly_the_expected_amount(client, register):
    user_id, headers = register("bob")
    url = f"/api/v1/users/{user_id}/profile"
    before = scrape(client)

    read(client, url, 3)                                   # miss (fill), hit, hit
    assert client.patch("/api/v1/users/me/profile", json={"bio": "new"}, headers=headers).status_code == 200
    # the PATCH built its answer in its transaction, then invalidated
    read(client, url, 2)                                   # miss (fill), hit
    assert client.get("/api/v1/users/999/profile").status_code == 404   # miss, filled as "not found"
    assert client.get("/no/such/route").status_code == 404

    changes = moved(before, scrape(client))
    get = ("endpoint", "profiles.get_profile"), ("method", "GET")
    assert changes == {
        ("cache_requests_total", (("family", "profile"), ("result", "miss"))): 3,
        ("cache_requests_total", (("family", "profile"), ("result", "hit"))): 3,
        ("cache_fills_total", (("family", "profile"), ("outcome", "stored"))): 3,
        ("cache_invalidations_total", (("family", "flyer_page"),)): 1,
        ("cache_invalidations_total", (("family", "profile"),)): 1,
        ("cache_invalidation_outcomes_total", (("family", "flyer_page"), ("outcome", "delivered"))): 1,
        ("cache_invalidation_outcomes_total", (("family", "profile"), ("outcome", "delivered"))): 1,
        **{k: v for k, v in changes.items() if k[0].startswith(("cache_fill_duration", "http_request_duration"))},
    }
    assert value(changes, "cache_fill_duration_seconds_count", family="profile") == 3
    assert value(changes, "http_request_duration_seconds_count", **dict(get), status="200") == 5
    assert value(changes, "http_request_duration_seconds_count", **dict(get), status="404") == 1
    assert value(changes, "http_request_duration_seconds_count", endpoint="profiles.patch_my_profile",
                 method="PATCH", status="200") == 1
    assert value(changes, "http_request_duration_seconds_count", endpoint="unmatched", method="GET",
                 status="404") == 1
    assert value(changes, "http_request_duration_seconds_bucket", **dict(get), status="200", le="+Inf") == 5


def test_counters_never_go_down_across_a_redis_stall(client, profile_url, redis_server):
    series = []
    read(client, profile_url, 3)
    series.append(scrape(client))
    redis_server.connected = False           # the stall: every Redis command fails
    read(client, profile_url, 7)
    series.append(scrape(client))
    redis_server.connected = True
    read(client, profile_url, 5)
    series.append(scrape(client))

    for earlier, later in zip(series, series[1:]):
        for key, v in earlier.items():
            if key[0].endswith(("_total", "_count", "_bucket")) and not key[0].startswith(("process_", "python_")):
                assert later.get(key, 0.0) >= v, key
    lookups = [sum(v for k, v in s.items() if k[0] == "cache_requests_total") for s in series]
    assert lookups == [3, 10, 15]


def test_reads_during_a_stall_count_as_errors_then_bypasses_with_the_breaker_open(client, profile_url, redis_server):
    read(client, profile_url, 1)
    before = scrape(client)
    redis_server.connected = False

    read(client, profile_url, 8)

    after = scrape(client)
    changes = moved(before, after)
    errors = value(changes, "cache_requests_total", family="profile", result="error")
    bypasses = value(changes, "cache_requests_total", family="profile", result="bypass")
    assert errors >= 1 and bypasses >= 1 and errors + bypasses == 8
    assert value(after, "cache_breaker_state", pid=str(os.getpid()), state="open") == 1


def test_the_breaker_state_of_this_process_is_a_gauge_per_state(client):
    samples = scrape(client)

    assert [value(samples, "cache_breaker_state", pid=str(os.getpid()), state=s)
            for s in ("closed", "open", "half_open")] == [1, 0, 0]


def test_process_python_and_build_info_are_exposed(client):
    samples = scrape(client)
    names = {name for name, _ in samples}

    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
            "profile_service_build_info", "cache_near_entries", "cache_near_bytes",
            "cache_near_evictions_total", "cache_breaker_open_seconds_total"} <= names


def test_the_outbox_backlog_gauge_shows_what_the_deliverer_saw_pending(app, client):
    assert value(scrape(client), "cache_outbox_backlog") == 0

    app.extensions["profile_service"].outbox.backlog = 7

    assert value(scrape(client), "cache_outbox_backlog") == 7


def test_metrics_speak_openmetrics_when_asked(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_metrics_are_never_cached_by_clients(client):
    assert client.get("/metrics").headers["Cache-Control"] == "no-store"


# -- several processes of one instance (the gunicorn case) ------------------------------------

def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def sibling(directory, pid, *, hits, breaker="closed", suffix=".json", entries=0):
    snapshot = {"pid": pid, "written": 0, "counters": {"lookup|profile|hit": hits, "breaker_open_seconds": 0},
                "fill": {}, "latency": {"profiles.get_profile|GET|200": [hits] + [0] * 13},
                "gauges": {"breaker": breaker, "near_entries": entries, "near_bytes": 10 * entries,
                           "near_evictions": 1}}
    (directory / f"{pid}-abcd{suffix}").write_bytes(orjson.dumps(snapshot))


@pytest.fixture
def instance_dir(tmp_path, app_config, redis_client, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("METRICS_DIR", str(directory))
    app = create_app({**app_config, "METRICS_DIR": str(directory)}, redis_client=redis_client)
    with app.app_context():
        db.create_all()
    yield app, directory
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_an_instance_sums_its_processes_snapshot_files(instance_dir):
    app, directory = instance_dir
    sibling(directory, os.getppid(), hits=4, entries=3)   # a live sibling

    samples = scrape(app.test_client())

    assert value(samples, "cache_requests_total", family="profile", result="hit") == 4
    assert value(samples, "http_request_duration_seconds_count", endpoint="profiles.get_profile",
                 method="GET", status="200") == 4
    assert value(samples, "cache_near_entries") == 3 and value(samples, "profile_service_worker_processes") == 2


def test_a_dead_process_keeps_its_counters_but_not_its_gauges(instance_dir):
    app, directory = instance_dir
    pid = dead_pid()
    sibling(directory, pid, hits=6, breaker="open", entries=5)
    before = scrape(app.test_client())

    gunicorn_mark_process_dead(pid)
    after = scrape(app.test_client())

    assert value(before, "cache_requests_total", family="profile", result="hit") == 6
    assert value(after, "cache_requests_total", family="profile", result="hit") == 6
    assert value(after, "cache_near_evictions_total") == 1
    assert value(after, "cache_near_entries") == 0
    assert not any(name == "cache_breaker_state" and dict(labels)["pid"] == str(pid) for name, labels in after)
    assert list(directory.glob(f"{pid}-*.dead.json"))


def test_a_process_writes_its_snapshot_file_when_it_pushes(instance_dir, register):
    app, directory = instance_dir
    client = app.test_client()
    user = client.post("/api/v1/auth/register", json={"email": "c@example.com", "password": "password123",
                                                       "username": "carol"}).json["user_id"]

    read(client, f"/api/v1/users/{user}/profile", 2)

    files = list(directory.glob(f"{os.getpid()}-*.json"))
    assert len(files) == 1
    counters = orjson.loads(files[0].read_bytes())["counters"]
    assert counters["lookup|profile|miss"] == 1 and counters["lookup|profile|hit"] == 1


def test_without_a_directory_an_instance_is_its_one_process(redis_client):
    telemetry = Telemetry(stats=__import__("cache").CacheStats(), client=redis_client, interval=0, instance="x")

    assert [alive for _, alive in telemetry.instance_snapshots()] == [True]
