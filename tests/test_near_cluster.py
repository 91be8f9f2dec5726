"""Near copies on a Redis Cluster: every write is read at once by every process that held a copy.

Two app instances (their own caches, near caches and cluster clients) share PostgreSQL and the
session's cluster (``tests.deployments``). The reader's subscriber sits on one primary; writes
touch users on every primary, across a slot move and a failover. A second, small cluster
whose bus into one node is slowed by a proxy shows why the writer must publish on every node
itself: a message relayed over the cluster bus arrives after the writer's answer.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import redis
from redis.crc import key_slot

from cache import Loaded, ReadThroughCache, keys, make_client
from cache.client import close_client
from cache.near import NearCache
from cache.readthrough import Claim
from models import db
from service import create_app
from service.testing import create_tables, register_user, service_config
from tests.deployments import Cluster, start_cluster
from tests.faults.proxy import Proxy
from tests.processes import PORT_BASE

pytestmark = pytest.mark.tdd_green

POSTGRES_URL = os.environ.get("DATABASE_URL", "")


@pytest.fixture
def instances(tmp_path, redis_cluster) -> Iterator[list[Any]]:
    """Two app instances on the cluster, near copies on (the default settings)."""
    redis_cluster.flush()
    database_url = POSTGRES_URL if POSTGRES_URL.startswith("postgres") else f"sqlite:///{tmp_path / 'shared.db'}"
    apps = [create_app(service_config(database_url=database_url, media_root=str(tmp_path / "media"),
                                      REDIS_MODE="cluster", REDIS_URL=redis_cluster.url, REDIS_SOCKET_TIMEOUT=0.5))
            for _ in range(2)]
    create_tables(apps[0])
    yield apps
    for app in apps:
        services = app.extensions["profile_service"]
        services.outbox.stop()
        services.cache._scripts.close()
        services.cache.near.close()
        close_client(services.redis)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def near(app) -> NearCache:
    return app.extensions["profile_service"].cache.near


def read_until_copied(reader, url: str, app) -> None:
    """Read `url` until the process answers it from its copy (it needs a fresh proof first)."""
    hits = near(app).hits
    deadline = time.monotonic() + 5
    while near(app).hits == hits:
        assert time.monotonic() < deadline, "no near hit within 5 s"
        reader.get(url)


def user_on(cluster: Cluster, port: int, writer) -> tuple[int, dict[str, str]]:
    """Register users until one's keys live on the primary at `port`."""
    for n in range(200):
        user_id, headers = register_user(writer, f"u{port}x{n}")
        if cluster.owner(key_slot(keys.profile_key(user_id).encode())) == port:
            return user_id, headers
    pytest.fail(f"no user's slot on {port}")


def primaries(cluster: Cluster) -> list[int]:
    return sorted(port for port, role in cluster.roles().items() if role == "master")


def edit_and_read(writer, reader, user_id: int, headers: dict[str, str], bio: str) -> str:
    response = writer.patch("/api/v1/users/me/profile", json={"bio": bio}, headers=headers)
    assert response.status_code == 200, response.json
    return reader.get(f"/api/v1/users/{user_id}/profile").json["bio"]


def test_a_write_in_one_instance_is_read_at_once_in_another_for_users_on_every_primary(instances, redis_cluster):
    writer, reader = (app.test_client() for app in instances)
    users = [user_on(redis_cluster, port, writer) for port in primaries(redis_cluster)]
    for user_id, _ in users:
        read_until_copied(reader, f"/api/v1/users/{user_id}/profile", instances[1])

    seen = [edit_and_read(writer, reader, user_id, headers, f"bio of {user_id}") for user_id, headers in users]

    assert seen == [f"bio of {user_id}" for user_id, _ in users]
    assert near(instances[1])._conn.port in primaries(redis_cluster)


def test_a_write_after_the_users_slot_moved_is_read_at_once_where_copies_were_held(instances, redis_cluster):
    writer, reader = (app.test_client() for app in instances)
    subscribed = near(instances[1])
    reader.get("/api/v1/users/1/profile")  # connects the reader's subscriber
    user_id, headers = user_on(redis_cluster, subscribed._conn.port, writer)
    url = f"/api/v1/users/{user_id}/profile"
    read_until_copied(reader, url, instances[1])
    slot = key_slot(keys.profile_key(user_id).encode())
    destination = next(port for port in primaries(redis_cluster) if port != redis_cluster.owner(slot))

    redis_cluster.finish_move(slot, redis_cluster.begin_move(slot, destination), destination)
    seen = edit_and_read(writer, reader, user_id, headers, "after the move")

    assert seen == "after the move" and redis_cluster.owner(slot) == destination
    read_until_copied(reader, url, instances[1])  # copies are made and served again
    assert reader.get(url).json["bio"] == "after the move"


def test_a_write_after_a_failover_of_the_subscribers_primary_is_read_at_once(instances, redis_cluster):
    writer, reader = (app.test_client() for app in instances)
    subscribed = near(instances[1])
    reader.get("/api/v1/users/1/profile")
    port = subscribed._conn.port
    user_id, headers = user_on(redis_cluster, port, writer)
    url = f"/api/v1/users/{user_id}/profile"
    read_until_copied(reader, url, instances[1])

    redis_cluster.failover(port)
    seen = edit_and_read(writer, reader, user_id, headers, "after the failover")

    assert seen == "after the failover"
    read_until_copied(reader, url, instances[1])
    assert reader.get(url).json["bio"] == "after the failover"


# -- a cluster whose bus into one node is slow ---------------------------------------------------

SLOW_PORTS = (PORT_BASE + 26, PORT_BASE + 27, PORT_BASE + 28)
SLOW = SLOW_PORTS[0]
"""The node whose bus can be slowed: it serves slots 0-5460, not the slot of the channel's name (16249),
where a PUBLISH routed by redis-py would land."""
BUS_PROXY = PORT_BASE + 59
"""Where the other nodes reach SLOW's bus (a proxy that can delay it)."""
SUBSCRIBER_PROXY = PORT_BASE + 29
"""A proxy in front of SLOW's client port, for the reader's near cache subscriber."""


@pytest.fixture(scope="module")
def slow_bus_cluster(tmp_path_factory) -> Iterator[tuple[Cluster, Proxy]]:
    """Three primaries; the bus messages into SLOW pass a proxy (delay them with `delay(up_ms)`)."""
    proxy = Proxy(BUS_PROXY, SLOW + 30).start()
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slow-bus"), SLOW_PORTS, replicas=0, node_timeout_ms=5000,
                                extra_args=lambda port: ["--cluster-announce-bus-port", str(BUS_PROXY)]
                                if port == SLOW else [])
        try:
            yield cluster, proxy
        finally:
            cluster.processes.stop_all()
    finally:
        proxy.stop()


def _subscriber_on(port: int):
    return lambda: redis.Connection(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0)


@pytest.fixture
def slow_world(slow_bus_cluster) -> Iterator[dict[str, Any]]:
    """A writer cache and a reader cache whose near cache subscribes on the slow node (through a proxy)."""
    cluster, bus = slow_bus_cluster
    for port in SLOW_PORTS:
        cluster.node(port).flushall()
    subscriber = Proxy(SUBSCRIBER_PROXY, SLOW).start()
    clients = [make_client(cluster.url, mode="cluster", connect_timeout=1, socket_timeout=1) for _ in range(2)]
    reader_near = NearCache(_subscriber_on(SUBSCRIBER_PROXY), keys.INVALIDATION_CHANNEL, max_bytes=1 << 20)
    writer = ReadThroughCache(clients[0], near=NearCache(_subscriber_on(SLOW_PORTS[1]), keys.INVALIDATION_CHANNEL,
                                                         max_bytes=1 << 20))
    reader = ReadThroughCache(clients[1], near=reader_near)
    yield {"cluster": cluster, "bus": bus, "subscriber": subscriber, "writer": writer, "reader": reader}
    bus.delay(0, 0)
    subscriber.stop()
    for cache in (writer, reader):
        cache.near.close()
        cache._scripts.close()
    for client in clients:
        client.close()


def _user_elsewhere(cluster: Cluster) -> int:
    """A user whose keys live on another primary than SLOW."""
    return next(u for u in range(1, 100) if cluster.owner(key_slot(keys.profile_key(u).encode())) != SLOW)


def _copied(cache: ReadThroughCache, user_id: int) -> None:
    key = keys.profile_key(user_id)
    cache.get_or_load("profile", key, lambda: Loaded({"v": "old"}, 60))
    deadline = time.monotonic() + 5
    hits = cache.near.hits
    while cache.near.hits == hits:
        assert time.monotonic() < deadline, "no near hit within 5 s"
        cache.lookup("profile", key)
        time.sleep(0.001)


@contextmanager
def busy(cache: ReadThroughCache) -> Iterator[None]:
    """Other requests keep the reader's proof fresh meanwhile (its PINGs ride on lookups)."""
    stop = threading.Event()

    def look_up() -> None:
        while not stop.is_set():
            cache.near.get("pf:1:{other}:profile", "")
            time.sleep(0.001)
    thread = threading.Thread(target=look_up)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def near_answers(cache: ReadThroughCache, user_id: int, seconds: float) -> list[bytes]:
    """The bodies `cache` answers from its copies for `seconds` of lookups."""
    answers, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        entry = cache.lookup("profile", keys.profile_key(user_id))
        if not isinstance(entry, Claim) and entry is not None and entry.result == "near_hit":
            answers.append(entry.body)
        time.sleep(0.002)
    return answers


def test_a_write_is_seen_at_once_although_the_bus_to_the_subscribers_node_is_slow(slow_world):
    """A message relayed by the bus comes 300 ms after the writer's answer; the writer's own PUBLISH on the
    subscriber's node comes before that answer, and the PONG proving the reader caught up comes after it."""
    user_id = _user_elsewhere(slow_world["cluster"])
    reader, writer = slow_world["reader"], slow_world["writer"]
    _copied(reader, user_id)
    slow_world["bus"].delay(300, 0)

    with busy(reader):
        assert writer.invalidate(keys=[keys.profile_key(user_id)], timeout=1)
        served = near_answers(reader, user_id, 0.2)

    assert served == []


def test_a_slow_subscriber_connection_serves_no_copies(slow_world):
    """The reader's own subscription lags past the proof window: its copies are not served at all."""
    user_id = _user_elsewhere(slow_world["cluster"])
    reader, writer = slow_world["reader"], slow_world["writer"]
    _copied(reader, user_id)
    slow_world["subscriber"].delay(0, 300)

    with busy(reader):
        time.sleep(0.1)  # the last PONG in time ages past the window
        assert writer.invalidate(keys=[keys.profile_key(user_id)], timeout=1)
        served = near_answers(reader, user_id, 0.2)

    assert served == []


def _with_extra_node(cache: ReadThroughCache, port: int) -> None:
    """Make `cache`'s cluster client list one more node, at `port`, in its slot map."""
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode
    from redis.retry import Retry

    client = cache.client
    listed = client.get_nodes
    # As the cluster client makes its nodes' connections: no retries of their own.
    extra = ClusterNode("127.0.0.1", port, server_type="replica", redis_connection=redis.Redis(
        port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)))
    client.get_nodes = lambda: [*listed(), extra]


def test_a_node_that_refuses_connections_is_skipped_it_has_no_subscriber(slow_world):
    writer = slow_world["writer"]
    _with_extra_node(writer, PORT_BASE + 31)  # nothing listens there
    started = time.monotonic()

    delivered = writer.invalidate(keys=[keys.profile_key(1)], timeout=0)

    assert delivered and time.monotonic() - started < 0.5


def test_a_node_that_does_not_answer_fails_the_delivery(slow_world):
    """A subscriber may sit on it, caught up by its own PONGs: the write must not count as delivered."""
    silent = Proxy(PORT_BASE + 32, SLOW_PORTS[1]).start()
    silent.half_open("all")
    writer = slow_world["writer"]
    _with_extra_node(writer, PORT_BASE + 32)
    try:
        delivered = writer.invalidate(keys=[keys.profile_key(1)], timeout=0)
    finally:
        silent.stop()

    assert not delivered
