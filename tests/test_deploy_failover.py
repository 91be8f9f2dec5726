"""Read-after-write across two app instances while the Redis deployment fails over: 0 stale reads, 0 5xx.

Two instances (app objects with their own caches, near caches and outbox deliverers) share the
database and Redis only. A writer renames a user through instance A; readers read through both
instances and count every read that started after a rename's answer yet shows an older name.
Half-way, the Redis deployment fails over: ``SENTINEL FAILOVER`` or ``CLUSTER FAILOVER``.
The same check also runs with two gunicorn instances (2 sync workers each) over HTTP.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import pytest

from models import db
from service import create_app
from service.testing import create_tables, register_user, service_config
from tests.deployments import close_app

pytestmark = pytest.mark.tdd_green

POSTGRES_URL = os.environ.get("DATABASE_URL", "")


@dataclass
class Tally:
    writes: int = 0
    reads: int = 0
    stale: int = 0
    server_errors: int = 0
    hits: int = 0
    near_hits: int = 0
    slowest_write: float = 0.0
    write_seconds: float = 0.0  # all writes together
    examples: list[str] = field(default_factory=list)

    @property
    def mean_write(self) -> float:
        return self.write_seconds / max(1, self.writes)

    def judge(self, name: str, floor: int, where: str = "") -> None:
        """A read that saw display name `name` after write v`floor` had answered: stale if older."""
        seen = int(name[1:]) if name and name.startswith("v") else 0
        if seen < floor:
            self.stale += 1
            if len(self.examples) < 5:
                self.examples.append(f"{where}read {name} after v{floor} was answered")


def _around(failover, threads: list[threading.Thread], stop: threading.Event, before: float, after: float) -> None:
    """Run the checker's threads, fail over `before` s in, stop them `after` s later."""
    for thread in threads:
        thread.start()
    try:
        time.sleep(before)
        failover()
        time.sleep(after)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def _instances(tmp_path, redis_settings, count=2):
    database_url = POSTGRES_URL if POSTGRES_URL.startswith("postgres") else f"sqlite:///{tmp_path / 'shared.db'}"
    apps = []
    for _ in range(count):
        config = service_config(database_url=database_url, media_root=str(tmp_path / "media"),
                                OUTBOX_POLL_INTERVAL=0.2, REDIS_SOCKET_TIMEOUT=0.5, **redis_settings)
        config.pop("TESTING")
        apps.append(create_app(config))
    create_tables(apps[0])
    return apps


def _dispose(apps):
    for app in apps:
        close_app(app)


def _check(apps, failover, *, before: float = 2.0, after: float = 3.0, username: str = "checked") -> Tally:
    writer_client = apps[0].test_client()
    user_id, headers = register_user(writer_client, username)
    readers = [app.test_client() for app in apps]
    for reader in readers:  # warm every instance's cache
        reader.get(f"/api/v1/users/{user_id}/profile")
    tally = Tally()
    acked = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            sent = time.monotonic()
            response = writer_client.patch("/api/v1/users/me/profile", json={"display_name": f"v{n}"},
                                           headers=headers)
            with lock:
                tally.slowest_write = max(tally.slowest_write, time.monotonic() - sent)
                tally.write_seconds += time.monotonic() - sent
                if response.status_code >= 500:
                    tally.server_errors += 1
                elif response.status_code == 200:
                    acked[0] = n
                    tally.writes += 1
            time.sleep(0.02)

    def read(client) -> None:
        while not stop.is_set():
            with lock:
                floor = acked[0]
            response = client.get(f"/api/v1/users/{user_id}/profile")
            with lock:
                tally.reads += 1
                if response.status_code >= 500:
                    tally.server_errors += 1
                    continue
                tally.judge(response.json["display_name"], floor)

    _around(failover, [threading.Thread(target=write)] + [threading.Thread(target=read, args=(c,)) for c in readers],
            stop, before, after)
    results = [app.extensions["profile_service"].cache.stats.snapshot()["requests"].get("profile", {}) for app in apps]
    tally.hits = sum(r.get("hit", 0) for r in results)
    tally.near_hits = sum(r.get("near_hit", 0) for r in results)
    return tally


def test_two_instances_read_their_writes_through_a_sentinel_failover(tmp_path, sentinel_group):
    sentinel_group.flush()
    apps = _instances(tmp_path, {"REDIS_MODE": "sentinel", "REDIS_SENTINELS": sentinel_group.sentinels,
                                 "REDIS_SENTINEL_MASTER": sentinel_group.master})
    try:
        tally = _check(apps, sentinel_group.failover)
    finally:
        _dispose(apps)

    print(f"sentinel failover: {tally}")
    assert tally.writes > 10 and tally.reads > 50 and tally.hits > 0 and tally.near_hits > 0
    assert (tally.stale, tally.server_errors) == (0, 0), tally.examples


def test_two_instances_read_their_writes_through_a_cluster_failover(tmp_path, redis_cluster):
    redis_cluster.flush()
    apps = _instances(tmp_path, {"REDIS_MODE": "cluster", "REDIS_URL": redis_cluster.url})
    try:
        tally = _check(apps, redis_cluster.failover)
    finally:
        _dispose(apps)

    print(f"cluster failover: {tally}")
    assert tally.writes > 10 and tally.reads > 50 and tally.hits > 0 and tally.near_hits > 0
    assert (tally.stale, tally.server_errors) == (0, 0), tally.examples


def _lone_deliveries(apps) -> int:
    return sum(app.extensions["profile_service"].cache._invalidator.lone_deliveries for app in apps)


def test_writes_answer_quickly_and_reads_stay_exact_while_the_sentinel_replica_is_down(tmp_path, sentinel_group):
    sentinel_group.flush()
    replica = sentinel_group.stop_replica()
    try:
        apps = _instances(tmp_path, {"REDIS_MODE": "sentinel", "REDIS_SENTINELS": sentinel_group.sentinels,
                                     "REDIS_SENTINEL_MASTER": sentinel_group.master})
        try:
            tally = _check(apps, lambda: None, before=1.5, after=1.5)
            lone = _lone_deliveries(apps)
        finally:
            _dispose(apps)
    finally:
        sentinel_group.start_replica(replica)

    print(f"sentinel, replica down: {tally}, mean write {tally.mean_write:.3f} s, taken alone: {lone}")
    assert tally.writes > 5 and tally.reads > 50 and tally.hits > 0 and lone > 0
    assert tally.mean_write < 0.4  # each used to wait out CACHE_WRITE_DEADLINE (1 s)
    assert (tally.stale, tally.server_errors) == (0, 0), tally.examples


def test_a_failover_after_the_replica_came_back_loses_no_invalidation_taken_without_it(tmp_path, sentinel_group):
    """Invalidations the primary took alone reach the replica by its resynchronisation; then it is promoted."""
    sentinel_group.flush()
    replica = sentinel_group.stop_replica()
    apps = _instances(tmp_path, {"REDIS_MODE": "sentinel", "REDIS_SENTINELS": sentinel_group.sentinels,
                                 "REDIS_SENTINEL_MASTER": sentinel_group.master})
    try:
        try:
            alone = _check(apps, lambda: None, before=0.5, after=0.5, username="alone")
        finally:
            sentinel_group.start_replica(replica)
        tally = _check(apps, sentinel_group.failover, username="after")
    finally:
        _dispose(apps)

    print(f"sentinel, replica down then failover: {alone} / {tally}")
    assert _lone_deliveries(apps) > 0
    assert tally.writes > 10 and tally.reads > 50
    assert (alone.stale, alone.server_errors, tally.stale, tally.server_errors) == (0, 0, 0, 0), (
        alone.examples + tally.examples)


def test_an_invalidation_the_promoted_replica_missed_is_not_served_after_a_sentinel_failover(
        tmp_path, sentinel_group):
    """The new primary lacks a deletion the old one had (emulated: the stale entry restored there after the
    failover, before any instance uses it); its other run_id makes every instance replay the outbox first."""
    from cache import keys

    sentinel_group.flush()
    apps = _instances(tmp_path, {"REDIS_MODE": "sentinel", "REDIS_SENTINELS": sentinel_group.sentinels,
                                 "REDIS_SENTINEL_MASTER": sentinel_group.master}, count=1)
    try:
        client = apps[0].test_client()
        user_id, headers = register_user(client, "restored")
        client.patch("/api/v1/users/me/profile", json={"display_name": "old"}, headers=headers)
        primary = sentinel_group.node(sentinel_group.primary_port())
        deadline = time.monotonic() + 5
        while primary.hget(keys.profile_key(user_id), "http://localhost") is None and time.monotonic() < deadline:
            assert client.get(f"/api/v1/users/{user_id}/profile").json["display_name"] == "old"
            time.sleep(0.05)  # reads wait for this instance's outbox deliverer to start
        stale = primary.dump(keys.profile_key(user_id))
        assert b"old" in primary.hget(keys.profile_key(user_id), "http://localhost")
        client.patch("/api/v1/users/me/profile", json={"display_name": "new"}, headers=headers)

        promoted = sentinel_group.node(sentinel_group.failover())
        promoted.restore(keys.profile_key(user_id), 0, stale, replace=True)
        promoted.execute_command("WAIT", 1, 2000)
        answers = {client.get(f"/api/v1/users/{user_id}/profile").json["display_name"] for _ in range(20)}
        repairs = apps[0].extensions["profile_service"].cache.epoch.repairs
    finally:
        _dispose(apps)

    assert answers == {"new"}
    assert repairs >= 2  # the first start, and the promoted replica


def test_two_instances_read_their_writes_while_their_users_slot_is_resharded(tmp_path, redis_cluster):
    """The checked user's slot moves to another primary under load: ASK during the move, MOVED after."""
    from redis.crc import key_slot

    from cache import keys

    redis_cluster.flush()
    apps = _instances(tmp_path, {"REDIS_MODE": "cluster", "REDIS_URL": redis_cluster.url})
    slot = key_slot(keys.profile_key(1).encode())  # the checker's user is the first one registered

    def reshard() -> None:
        destination = next(port for port, role in redis_cluster.roles().items()
                           if role == "master" and port != redis_cluster.owner(slot))
        source = redis_cluster.begin_move(slot, destination)
        time.sleep(0.5)  # clients get ASK for keys already moved (none yet) and MOVED for none
        redis_cluster.finish_move(slot, source, destination)

    try:
        tally = _check(apps, reshard)
    finally:
        _dispose(apps)

    print(f"cluster resharding: {tally}")
    assert tally.writes > 10 and tally.reads > 50 and tally.hits > 0 and tally.near_hits > 0
    assert (tally.stale, tally.server_errors) == (0, 0), tally.examples


class HttpInstance:
    """A gunicorn instance (2 sync workers) of the service on a loopback port, stopped by PID."""

    def __init__(self, port: int, env: dict[str, str], log_dir) -> None:
        import subprocess
        import sys
        from pathlib import Path

        from tests.processes import wait_for_port

        self.port = port
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        root = Path(__file__).resolve().parent.parent
        log = open(log_dir / f"gunicorn-{port}.log", "wb")
        self.process = subprocess.Popen(
            [gunicorn, "--workers", "2", "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
             "--no-control-socket", "--chdir", str(root), "wsgi:app"],
            cwd=root, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(port, 60, self.process)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            all_headers = {"Content-Type": "application/json", **(headers or {})} if payload else dict(headers or {})
            conn.request(method, path, body=payload, headers=all_headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data and response.status < 500 else None)
        finally:
            conn.close()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _http_check(instances, failover, *, before: float = 2.0, after: float = 3.0) -> Tally:
    writer = instances[0]
    status, body = writer.request("POST", "/api/v1/auth/register", {
        "email": "http@example.com", "password": "password123", "username": "httpchecked"})
    assert status == 201, body
    user_id, headers = body["user_id"], {"Authorization": f"Bearer {body['token']}"}
    tally, acked, stop, lock = Tally(), [0], threading.Event(), threading.Lock()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                status, _ = writer.request("PATCH", "/api/v1/users/me/profile", {"display_name": f"v{n}"}, headers)
            except OSError:
                status = 599
            with lock:
                if status >= 500:
                    tally.server_errors += 1
                elif status == 200:
                    acked[0] = n
                    tally.writes += 1

    def read(instance) -> None:
        while not stop.is_set():
            with lock:
                floor = acked[0]
            try:
                status, profile = instance.request("GET", f"/api/v1/users/{user_id}/profile")
            except OSError:
                status, profile = 599, None
            with lock:
                tally.reads += 1
                if status >= 500:
                    tally.server_errors += 1
                    continue
                tally.judge(profile["display_name"], floor, f"port {instance.port} ")

    _around(failover, [threading.Thread(target=write)]
            + [threading.Thread(target=read, args=(i,)) for i in instances * 2], stop, before, after)
    return tally


@pytest.mark.parametrize("mode", ["sentinel", "cluster"])
def test_two_gunicorn_instances_read_their_writes_through_a_failover(tmp_path, request, mode):
    from tests.processes import PORT_BASE

    database_url = POSTGRES_URL if POSTGRES_URL.startswith("postgres") else f"sqlite:///{tmp_path / 'shared.db'}"
    schema = create_app(service_config(database_url=database_url, media_root=str(tmp_path)))
    create_tables(schema)
    schema.extensions["profile_service"].outbox.stop()
    with schema.app_context():
        db.engine.dispose()
    env = {"DATABASE_URL": database_url, "MEDIA_ROOT": str(tmp_path), "RATE_LIMIT_ENABLED": "false",
           "SECRET_KEY": "deploy-test-secret-key-0123456789abcdef", "OUTBOX_POLL_INTERVAL": "0.2",
           "REDIS_SOCKET_TIMEOUT": "0.5", "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
           "METRICS_FLUSH_INTERVAL": "0.5"}
    if mode == "sentinel":
        group = request.getfixturevalue("sentinel_group")
        group.flush()
        env.update(REDIS_MODE="sentinel", REDIS_SENTINELS=group.setting, REDIS_SENTINEL_MASTER=group.master)
        failover = group.failover
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        env.update(REDIS_MODE="cluster", REDIS_URL=cluster.url)
        failover = cluster.failover
    instances = []
    try:
        for port in (PORT_BASE + 40, PORT_BASE + 41):
            instances.append(HttpInstance(port, env, tmp_path))
        tally = _http_check(instances, failover)
        time.sleep(1.5)  # every worker has pushed its counters (METRICS_FLUSH_INTERVAL)
        status, stats = instances[0].request("GET", "/api/v1/cache/stats")
        assert status == 200, stats
        tally.near_hits = stats["families"]["profile"]["since_start"]["near_hits"]
    finally:
        for instance in instances:
            instance.stop()

    print(f"gunicorn, {mode} failover: writes={tally.writes} reads={tally.reads} stale={tally.stale}"
          f" 5xx={tally.server_errors} near_hits={tally.near_hits}")
    assert tally.writes > 10 and tally.reads > 50
    assert tally.near_hits > 0  # near copies were in play (default settings: on in every mode)
    assert (tally.stale, tally.server_errors) == (0, 0), tally.examples
