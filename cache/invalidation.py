"""Sending invalidations to Redis: deletions, generation bumps and the near caches' message.

There is no in-process queue of failed invalidations any more: what a write invalidates is
recorded durably in the database's outbox (see ``service.outbox``), so a failed delivery is
retried by whichever process can reach Redis, and none is lost with a process.
"""
from __future__ import annotations

import time
from typing import Callable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from .breaker import Breaker
from .keys import GENERATION_SEPARATOR, INVALIDATION_CHANNEL, hash_tag
from .scripts import Scripts


class Invalidator:
    """Deletes keys and bumps generations in one pipeline, retrying until a deadline.

    The breaker never stops an invalidation: it protects reads. A delivery is tried at
    least once whatever the breaker says, and its outcome is reported to the breaker.
    """

    def __init__(self, client: redis.Redis, scripts: Scripts, breaker: Breaker,
                 clock: Callable[[], float], generation_ttl_ms: int, *, settle: float = 0.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, replicas: int = 0,
                 fan_out: bool = False, lone_check: Callable[[str], bool] | None = None) -> None:
        self._client = client
        self.fan_out = fan_out
        """Redis Cluster: the message goes to every node directly, once the deletions are acknowledged."""
        self.replicas = replicas
        """Sentinel mode: replicas that must hold an invalidation before it counts as delivered (``WAIT``)."""
        self._lone_check = lone_check
        """Sentinel mode: whether a primary (by run_id) with no replica in sync may take it alone (``cache.sentinel``)."""
        self._short = False  # the last WAIT fell short: identify the server from now on (INFO), until one does not
        self.lone_deliveries = 0
        """Invalidations a primary took without a replica, the sentinels agreeing that its replicas are down."""
        self._scripts = scripts
        self._breaker = breaker
        self._clock = clock
        self._generation_ttl_ms = generation_ttl_ms
        self.settle = settle
        self._monotonic = monotonic
        self._sleep = sleep

    def deliver(self, keys: list[str], generations: list[tuple[str, str]], *,
                timeout: float = 0.0, settle: bool = True) -> bool:
        """Send these invalidations, retrying with back-off for up to `timeout` seconds; True once sent.

        After a successful send it also waits out `settle` (the near caches' proof window):
        by then no process serves a copy from before these deletions (see ``NearCache``).
        A caller sending several batches in a row passes ``settle=False`` and calls
        `wait_settled` once after the last.
        """
        if not keys and not generations:
            return True
        deadline = self._monotonic() + timeout
        delay = 0.01
        while True:
            try:
                self._execute(keys, generations)
                break
            except redis.RedisError:
                self._breaker.record_failure()
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return False
                self._sleep(min(delay, remaining))
                delay = min(delay * 2, 0.1)
        self._breaker.record_success()
        if settle:
            self.wait_settled()
        return True

    def wait_settled(self) -> None:
        """Wait until no near cache can still serve a copy from before the deliveries made so far."""
        if self.settle > 0:
            self._sleep(self.settle + 0.001)

    def _execute(self, keys: list[str], generations: list[tuple[str, str]]) -> None:
        """Send the deletions and generation bumps in one pipeline; raise on any Redis error."""
        try:
            try:
                self._send(keys, generations)
            except redis.exceptions.NoScriptError:
                # Every command is idempotent for our purpose (a bump twice is still a
                # new generation), so resending the whole batch is safe.
                self._scripts.load_bump()
                self._send(keys, generations)
        except RedisClusterException as error:  # not a RedisError: no cluster node reachable
            raise redis.ConnectionError(str(error)) from error

    def _send(self, keys: list[str], generations: list[tuple[str, str]]) -> None:
        now_us = int(self._clock() * 1_000_000)
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)  # one DEL per key: a multi-key DEL could span Cluster slots
        for gen_key, base in generations:
            self._scripts.queue_bump(pipe, gen_key, base, GENERATION_SEPARATOR, now_us,
                                     self._generation_ttl_ms)
        # After the deletions: a near cache that drops its copies on this message and
        # reads again must find them gone.
        tags = {hash_tag(key) for key in keys} | {hash_tag(gen_key) for gen_key, _ in generations}
        message = " ".join(sorted(tags))
        if self.fan_out:
            pipe.execute()  # the deletions first, wherever MOVED/ASK sent them, then the message
            publish_everywhere(self._client, INVALIDATION_CHANNEL, message)
            return
        pipe.publish(INVALIDATION_CHANNEL, message)
        identify = bool(self.replicas and self._lone_check is not None and self._short)
        if identify:
            pipe.execute_command("INFO", "server")  # which server applied it, for the sentinels' verdict
        if self.replicas:
            # Sentinel: a failover promotes a replica, whose data lacks what the old primary
            # did not replicate. Counted as delivered only once a replica has it (and the
            # message): a promoted replica then has it too, and a primary cut off from its
            # replicas (the one a failover is leaving) never acknowledges one; the write
            # leaves it in the outbox and every process suspends its reads until delivered.
            # Unless the sentinels say its replicas are down (see ``cache.sentinel``).
            pipe.execute_command("WAIT", self.replicas, 50)
        replies = pipe.execute()
        if not self.replicas or replies[-1] >= self.replicas:
            self._short = False
            return
        self._short = True
        if identify and self._lone_check(_run_id(replies[-2])):
            self.lone_deliveries += 1
            return
        raise redis.ConnectionError("cache: invalidation not replicated (WAIT); the primary may be leaving")


def publish_everywhere(client: RedisCluster, channel: str, message: str) -> None:
    """PUBLISH `message` on every node of `client`'s slot map, primaries and replicas, in one round trip.

    A near cache subscribes on one node of a cluster, and must hear of a write from that node
    itself before the write answers: a PUBLISH reaches other nodes over the cluster bus, later
    and in no order with anything. A node that refuses the connection is skipped: no process
    listens there, so no subscriber is left on it (those it had lost their connections with
    the process; a restarted node's subscribers start with no copies). A node that does not answer
    fails the whole delivery (the caller retries; the outbox keeps it): a subscriber on it may
    still be serving copies.
    """
    sent: list[tuple[redis.ConnectionPool, redis.Connection]] = []
    failed = True
    try:
        for node in client.get_nodes():
            pool = client.get_redis_connection(node).connection_pool  # made here for a node a MOVED named
            try:
                conn = pool.get_connection()
            except redis.ConnectionError as error:
                if isinstance(error.__context__, ConnectionRefusedError):
                    continue
                raise
            sent.append((pool, conn))
            conn.send_command("PUBLISH", channel, message)
        for _, conn in sent:
            conn.read_response()
        failed = False
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        try:  # the node may be gone from the cluster: read the slot map again before the retry
            client.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException):
            pass
        raise
    finally:
        for pool, conn in sent:
            if failed:
                conn.disconnect()  # its reply may still be on the way
            pool.release(conn)


def _run_id(info: object) -> str:
    """The run_id in an ``INFO server`` reply (parsed into a dict by redis-py, or raw)."""
    if isinstance(info, dict):
        return str(info.get("run_id", ""))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:"):].strip()
    return ""
