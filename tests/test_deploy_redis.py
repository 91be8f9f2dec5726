"""The cache against each Redis deployment mode: one node, a Redis Cluster and a Sentinel group.

The cluster and the Sentinel group are started by the tests (``tests.deployments``).
"""
from __future__ import annotations

import os
import time
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from cache import Loaded, ReadThroughCache, keys, make_client, make_near_cache
from cache.client import close_client, connection_factory, mode_of
from cache.epoch import EPOCH_KEY, slot_epoch_key
from cache.readthrough import Claim

pytestmark = pytest.mark.tdd_green

REDIS_URL_TEST = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")
MODES = ["single", "cluster", "sentinel"]


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def deployment(mode, request) -> Any:
    """The running cluster or Sentinel group of `mode` (flushed), or None for the single node."""
    if mode == "single":
        return None
    target = request.getfixturevalue({"cluster": "redis_cluster", "sentinel": "sentinel_group"}[mode])
    target.flush()
    return target


def _client(mode: str, deployment: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("connect_timeout", 1.0)
    kwargs.setdefault("socket_timeout", 1.0)
    if mode == "single":
        return make_client(REDIS_URL_TEST, **kwargs)
    if mode == "cluster":
        return make_client(deployment.url, mode="cluster", **kwargs)
    return make_client(None, mode="sentinel", sentinels=deployment.sentinels, sentinel_master=deployment.master,
                       **kwargs)


@pytest.fixture
def client(mode, deployment) -> Any:
    client = _client(mode, deployment)
    if mode == "single":
        client.flushdb()
    yield client
    close_client(client)


@pytest.fixture
def repairs() -> list[int]:
    return []


@pytest.fixture
def cache(client, repairs) -> ReadThroughCache:
    cache = ReadThroughCache(client, repair=lambda: repairs.append(1))
    yield cache
    cache._scripts.close()


def _profile(cache: ReadThroughCache, user_id: int, value: Any = None) -> Any:
    return cache.get_or_load("profile", keys.profile_key(user_id), lambda: Loaded(value or {"id": user_id}, 60))


def _page(cache: ReadThroughCache, user_id: int, value: Any = None) -> Any:
    return cache.get_or_load("flyer_page", keys.pages_key(user_id), lambda: Loaded(value or {"page": user_id}, 60),
                             variant=keys.page_field(1, 20), generation_key=keys.generation_key(user_id))


def _looked_up_page(cache: ReadThroughCache, user_id: int) -> Any:
    return cache.lookup("flyer_page", keys.pages_key(user_id), variant=keys.page_field(1, 20),
                        generation_key=keys.generation_key(user_id))


def test_the_factory_builds_the_client_of_each_mode(mode, client):
    assert mode_of(client) == mode
    assert isinstance(client, RedisCluster) == (mode == "cluster")


def test_a_filled_profile_is_a_hit_in_every_mode(cache):
    _profile(cache, 7)

    entry = cache.lookup("profile", keys.profile_key(7))

    assert not isinstance(entry, Claim) and entry.body == b'{"id":7}'


def test_a_filled_page_is_a_hit_in_every_mode(cache):
    """The page script reads the generation key and the page hash: one hash tag, one slot."""
    _page(cache, 7)

    entry = _looked_up_page(cache, 7)

    assert not isinstance(entry, Claim) and entry.body == b'{"page":7}'


def test_an_invalidation_across_many_slots_reaches_every_key(cache):
    users = range(1, 40)
    for user_id in users:
        _profile(cache, user_id)
        _page(cache, user_id)

    assert cache.invalidate(keys=[keys.profile_key(u) for u in users],
                            generations=[(keys.generation_key(u), keys.pages_key(u)) for u in users], timeout=2)

    assert all(isinstance(cache.lookup("profile", keys.profile_key(u)), Claim) for u in users)
    assert all(isinstance(_looked_up_page(cache, u), Claim) for u in users)


def test_a_second_reader_finds_the_lease_held(cache):
    first = cache.lookup("profile", keys.profile_key(3))
    second = cache.lookup("profile", keys.profile_key(3))

    assert first.granted and not second.granted


def test_a_fill_after_an_invalidation_is_refused(cache):
    claim = cache.lookup("profile", keys.profile_key(4))
    cache.invalidate(keys=[keys.profile_key(4)], timeout=1)

    cache.get_or_load("profile", keys.profile_key(4), lambda: Loaded({"old": True}, 60), claim=claim)

    assert isinstance(cache.lookup("profile", keys.profile_key(4)), Claim)


def test_every_new_server_is_repaired_before_its_first_hit(mode, cache, repairs):
    _profile(cache, 1)

    # A cluster client also talks to its startup node first (for the slot map): one repair per primary met.
    assert len(repairs) == 1 if mode != "cluster" else 1 <= len(repairs) <= 2


def test_cluster_epoch_keys_are_one_per_primary_and_in_its_own_slots(redis_cluster, repairs):
    redis_cluster.flush()
    client = make_client(redis_cluster.url, mode="cluster", connect_timeout=1, socket_timeout=1)
    cache = ReadThroughCache(client, repair=lambda: repairs.append(1))
    for user_id in range(1, 60):  # spread over every primary
        _profile(cache, user_id)

    primaries = [port for port, role in redis_cluster.roles().items() if role == "master"]
    for port in primaries:
        node = redis_cluster.node(port)
        epochs = node.keys(f"{keys.PREFIX}:*epoch")
        assert len(epochs) == 1 and node.execute_command("CLUSTER", "KEYSLOT", epochs[0]) in _slots(node)
        assert node.get(epochs[0]) == node.info("server")["run_id"].encode()
    assert len(repairs) == 3
    cache._scripts.close()
    client.close()


def _slots(node: redis.Redis) -> set[int]:
    for line in node.execute_command("CLUSTER", "NODES").decode().splitlines():
        fields = line.split()
        if "myself" in fields[2]:
            slots = set()
            for part in fields[8:]:
                low, _, high = part.partition("-")
                slots.update(range(int(low), int(high or low) + 1))
            return slots
    return set()


def test_slot_epoch_keys_hash_to_their_slot():
    from redis.crc import key_slot

    assert all(key_slot(slot_epoch_key(slot).encode()) == slot for slot in (0, 5461, 10923, 16383))


def test_the_near_cache_on_a_cluster_subscribes_on_a_primary(redis_cluster):
    client = make_client(redis_cluster.url, mode="cluster")
    near = make_near_cache(client, max_bytes=1 << 20)

    near.get("k", "f")

    assert redis_cluster.roles()[near._conn.port] == "master"
    near.close()
    client.close()


def test_sentinel_mode_needs_no_redis_url_and_finds_the_primary(sentinel_group):
    client = make_client(None, mode="sentinel", sentinels=sentinel_group.sentinels)

    client.set("pf:probe", b"1")

    assert client.info("server")["tcp_port"] == sentinel_group.primary_port()
    close_client(client)


def test_hand_made_connections_reach_the_primary_not_localhost_6379(sentinel_group):
    """The scripts' direct connection and the near cache's subscriber ask the sentinels."""
    client = make_client(None, mode="sentinel", sentinels=sentinel_group.sentinels)
    conn = connection_factory(client)()

    assert conn.port == sentinel_group.primary_port()
    conn.connect()
    conn.disconnect()
    close_client(client)


def test_the_near_cache_in_sentinel_mode_subscribes_on_the_primary(sentinel_group):
    client = make_client(None, mode="sentinel", sentinels=sentinel_group.sentinels)
    near = make_near_cache(client, max_bytes=1 << 20)

    near.get("k", "f")

    assert near._conn.port == sentinel_group.primary_port()
    near.close()
    close_client(client)


def test_sentinel_invalidations_wait_for_a_replica(sentinel_group):
    """Not counted as delivered while no replica has it (the primary a failover may leave)."""
    sentinel_group.flush()
    client = make_client(None, mode="sentinel", sentinels=sentinel_group.sentinels, socket_timeout=1.0)
    cache = ReadThroughCache(client)
    replica = sentinel_group.node(sentinel_group.replica_port())
    replica.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # the replica stops acknowledging
    try:
        delivered = cache.invalidate(keys=[keys.profile_key(1)], timeout=0.0)
    finally:
        replica.execute_command("CLIENT", "UNPAUSE")
    time.sleep(0.2)

    assert not delivered
    assert cache.invalidate(keys=[keys.profile_key(1)], timeout=2.0)
    close_client(client)


def test_a_resharded_slot_keeps_hits_and_takes_invalidations_during_and_after_the_move(redis_cluster, repairs):
    """ASK while the slot migrates, MOVED after: followed by the client, no Redis error reaches the cache."""
    from redis.crc import key_slot

    redis_cluster.flush()
    client = make_client(redis_cluster.url, mode="cluster", connect_timeout=1, socket_timeout=1)
    cache = ReadThroughCache(client, repair=lambda: repairs.append(1))
    slot = key_slot(keys.profile_key(7).encode())
    _profile(cache, 7, {"v": 1})
    _page(cache, 7)
    destination = next(port for port, role in redis_cluster.roles().items()
                       if role == "master" and port != redis_cluster.owner(slot))
    source = redis_cluster.begin_move(slot, destination)
    try:
        during = cache.lookup("profile", keys.profile_key(7))  # still on the source: a hit
        redis_cluster.node(source).execute_command(
            "MIGRATE", "127.0.0.1", destination, "", 0, 5000, "KEYS", keys.profile_key(7))
        moved = cache.lookup("profile", keys.profile_key(7))  # ASK to the destination: still a hit
    finally:
        redis_cluster.finish_move(slot, source, destination)
    after = _looked_up_page(cache, 7)
    delivered = cache.invalidate(keys=[keys.profile_key(7)], generations=[(keys.generation_key(7), keys.pages_key(7))],
                                 timeout=2)

    assert [entry.body for entry in (during, moved)] == [b'{"v":1}'] * 2
    assert after.body == b'{"page":7}' and redis_cluster.owner(slot) == destination
    assert delivered and cache.breaker.state == "closed"
    assert isinstance(cache.lookup("profile", keys.profile_key(7)), Claim)
    assert isinstance(_looked_up_page(cache, 7), Claim)
    cache._scripts.close()
    client.close()


def test_the_repair_wired_after_construction_still_runs_first(mode, deployment, client, repairs):
    """As in create_app: the cache is built first, its repair wired afterwards; no epoch is recorded unrepaired."""
    cache = ReadThroughCache(client)
    cache.epoch.repair = lambda: repairs.append(1)

    _profile(cache, 1)

    if mode == "cluster":
        recorded = sum(len(deployment.node(port).keys(f"{keys.PREFIX}:*epoch"))
                       for port, role in deployment.roles().items() if role == "master")
    else:
        recorded = client.exists(EPOCH_KEY)
    assert recorded == len(repairs) >= 1
    cache._scripts.close()


def test_an_unreachable_cluster_is_a_redis_connection_error():
    from tests.processes import PORT_BASE

    with pytest.raises(redis.ConnectionError, match="unavailable"):
        make_client(f"redis://127.0.0.1:{PORT_BASE + 2}", mode="cluster")


def test_a_repair_that_cannot_replay_is_a_redis_error_and_the_read_bypasses_the_cache(mode, client):
    """The outbox replay raises a plain ConnectionError (Redis unwritable, e.g. mid-failover): never a 5xx."""
    def repair() -> None:
        raise ConnectionError("could not replay the outbox to Redis")

    cache = ReadThroughCache(client, repair=repair)

    entry = _profile(cache, 1, {"from": "database"})

    assert entry.body == b'{"from":"database"}' and entry.result == "error"
    assert cache.lookup("profile", keys.profile_key(1)) is None
    cache._scripts.close()


def test_cache_stats_in_sentinel_mode_cover_every_instance_sharing_the_redis(tmp_path, sentinel_group):
    """Sentinel mode needs no REDIS_URL; that must not read as the embedded, this-process-only cache."""
    from service import create_app
    from service.testing import create_tables, service_config
    from tests.deployments import close_app

    app = create_app(service_config(database_url=f"sqlite:///{tmp_path / 'stats.db'}", REDIS_MODE="sentinel",
                                    REDIS_SENTINELS=sentinel_group.sentinels,
                                    REDIS_SENTINEL_MASTER=sentinel_group.master))
    create_tables(app)
    try:
        stats = app.test_client().get("/api/v1/cache/stats").json
    finally:
        close_app(app)

    assert stats["scope"] == "all instances sharing the Redis" and stats["redis"] is True


def test_the_sentinels_let_the_primary_take_invalidations_alone_only_while_its_replica_is_down(sentinel_group):
    from cache.sentinel import lone_primary_check

    client = make_client(None, mode="sentinel", sentinels=sentinel_group.sentinels,
                         sentinel_master=sentinel_group.master, connect_timeout=1.0, socket_timeout=1.0)
    check = lone_primary_check(client)
    run_id = client.info("server")["run_id"]
    try:
        with_replica = check(run_id)
        replica = sentinel_group.stop_replica()
        try:
            replica_down, other_server = check(run_id), check("0" * 40)
        finally:
            sentinel_group.start_replica(replica)
        replica_back = check(run_id)
    finally:
        close_client(client)

    assert (with_replica, replica_down, other_server, replica_back) == (False, True, False, False)
    assert lone_primary_check(make_client(REDIS_URL_TEST)) is None


def test_unreachable_sentinels_fail_a_command_at_once_not_after_retries():
    from tests.processes import PORT_BASE, port_free

    closed = PORT_BASE + 59  # nothing listens there: every connection is refused
    assert port_free(closed)
    client = make_client(None, mode="sentinel", sentinels=[("127.0.0.1", closed)] * 3)

    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.get("pf:probe")
    elapsed = time.monotonic() - started
    close_client(client)

    assert elapsed < 0.5


def test_a_cluster_invalidation_pipeline_asks_no_node_for_the_keys_of_its_bumps(redis_cluster):
    """Each COMMAND GETKEYS is a round trip: an outbox replay of 500 bumps took 10 s with Redis 20 ms away."""
    client = make_client(redis_cluster.url, mode="cluster", connect_timeout=1.0, socket_timeout=1.0)
    cache = ReadThroughCache(client)

    def getkeys_calls() -> int:
        return sum(redis_cluster.node(port).info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0)
                   for port in redis_cluster.ports)

    before = getkeys_calls()
    delivered = cache.invalidate(keys=[keys.profile_key(n) for n in range(50)],
                                 generations=[(keys.generation_key(n), keys.pages_key(n)) for n in range(50)],
                                 timeout=5.0)
    after = getkeys_calls()
    cache._scripts.close()
    client.close()

    assert delivered and after == before
