"""Fixtures of the cache tests: fakeredis and real Redis clients, a fake clock, loaders."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from cache import Breaker, CacheStats, Loaded, NearCache, ReadThroughCache, keys, make_client

REDIS_URL_TEST = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")


class FakeClock:
    """A settable clock whose sleep advances it (no real waiting)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class CountingLoader:
    """A loader returning a fixed value and counting its calls."""

    def __init__(self, value: Any, ttl: float = 60.0) -> None:
        self.value, self.ttl, self.calls = value, ttl, 0

    def __call__(self) -> Loaded:
        self.calls += 1
        return Loaded(self.value, self.ttl)


class CommandCounter:
    """Records the name of every command sent on a connection of one class (pooled or direct)."""

    def __init__(self, send: Any) -> None:
        self.commands: list[str] = []
        self._send = send

    def wrap(self) -> Any:
        counter = self

        def send_command(connection: Any, *args: Any, **kwargs: Any) -> Any:
            counter.commands.append(str(args[0]).upper())
            return counter._send(connection, *args, **kwargs)

        return send_command


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake_client(fake_server: fakeredis.FakeServer) -> redis.Redis:
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def real_client() -> Iterator[redis.Redis]:
    client = make_client(REDIS_URL_TEST, connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as exc:  # fail, never skip: these tests must run
        pytest.fail(f"test Redis at {REDIS_URL_TEST} is unreachable: {exc}")
    client.flushdb()  # the test database only
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def cluster_client(redis_cluster) -> Iterator[Any]:
    """A client of the tests' Redis Cluster (tests/deployments.py), every primary flushed."""
    redis_cluster.flush()
    client = make_client(redis_cluster.url, mode="cluster", connect_timeout=1.0, socket_timeout=1.0)
    yield client
    client.close()


@pytest.fixture
def sentinel_client(sentinel_group) -> Iterator[Any]:
    """A client of the tests' Sentinel group's primary, found through the sentinels, flushed."""
    from cache.client import close_client

    sentinel_group.flush()
    client = make_client(None, mode="sentinel", sentinels=sentinel_group.sentinels,
                         sentinel_master=sentinel_group.master, connect_timeout=1.0, socket_timeout=1.0)
    yield client
    close_client(client)


@pytest.fixture(params=["fake", "real", "cluster", "sentinel"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """The same test against fakeredis, the real test Redis, a Redis Cluster and a Sentinel group."""
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stats() -> CacheStats:
    return CacheStats()


@pytest.fixture
def make_cache(clock: FakeClock, stats: CacheStats):
    """Build a ReadThroughCache on a client with the fake clock (overridable)."""

    def build(client: redis.Redis, **kwargs: Any) -> ReadThroughCache:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("stats", stats)
        kwargs.setdefault("breaker", Breaker(clock=clock))
        return ReadThroughCache(client, **kwargs)

    return build


@pytest.fixture
def cache(client: redis.Redis, make_cache) -> ReadThroughCache:
    return make_cache(client)


@pytest.fixture
def fake_cache(fake_client: redis.Redis, make_cache) -> ReadThroughCache:
    return make_cache(fake_client)


@pytest.fixture
def counting_loader():
    """Factory of loaders returning a fixed value and counting their calls."""
    return CountingLoader


@pytest.fixture
def count_commands(monkeypatch: pytest.MonkeyPatch):
    """Start counting the commands sent on `client`'s kind of connection; returns the counter.

    Pipelines (sent packed) are not counted.
    """

    def start(client: redis.Redis) -> CommandCounter:
        connection_class = client.connection_pool.connection_class
        counter = CommandCounter(connection_class.send_command)
        monkeypatch.setattr(connection_class, "send_command", counter.wrap())
        return counter

    return start


@pytest.fixture
def near_clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def make_near(real_client: redis.Redis, near_clock: FakeClock) -> Iterator[Any]:
    """Build near caches subscribed on the test Redis, on the fake clock; closed after the test."""
    made: list[NearCache] = []

    def build(max_bytes: int = 1 << 20) -> NearCache:
        near = NearCache.for_client(real_client, keys.INVALIDATION_CHANNEL, max_bytes=max_bytes, clock=near_clock)
        made.append(near)
        return near

    yield build
    for near in made:
        near.close()


@pytest.fixture
def near(make_near) -> NearCache:
    return make_near()


@pytest.fixture
def near_cache(real_client: redis.Redis, make_cache, near: NearCache) -> ReadThroughCache:
    return make_cache(real_client, near=near)


@pytest.fixture
def other_process(make_cache) -> Iterator[ReadThroughCache]:
    """Another process's cache on the same Redis: its own connection, no near cache."""
    client = make_client(REDIS_URL_TEST, connect_timeout=1.0, socket_timeout=1.0)
    yield make_cache(client, stats=CacheStats())
    client.close()
