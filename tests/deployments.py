"""Session fixtures that start a Redis Sentinel group and a Redis Cluster on this worktree's loopback ports.

Each is started on first use, by the tests themselves (no daemon outside the test run), and
stopped by PID when the session ends. Ports: ``tests.processes.PORT_BASE`` + 10..15 (Sentinel:
primary, replica, three sentinels), + 20..25 (Cluster nodes) and + 50..55 (their cluster bus).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from cache.sentinel import DOWN_FLAGS
from tests.processes import PORT_BASE, Processes, redis_args, wait_until

MASTER = "mymaster"


@dataclass
class SentinelGroup:
    """One primary, one replica, three sentinels."""

    data_ports: tuple[int, int]
    sentinel_ports: tuple[int, ...]
    processes: Processes
    master: str = MASTER

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.sentinel_ports]

    @property
    def setting(self) -> str:
        """REDIS_SENTINELS as the service reads it."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    def sentinel(self, n: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[n], socket_timeout=2, decode_responses=True)

    def primary_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(self.master)[1])

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def replica_port(self) -> int:
        primary = self.primary_port()
        return next(port for port in self.data_ports if port != primary)

    def settled(self) -> bool:
        """Every sentinel names the same primary, which has its replica online and in sync."""
        primaries = {int(self.sentinel(n).sentinel_get_master_addr_by_name(self.master)[1])
                     for n in range(len(self.sentinel_ports))}
        if len(primaries) != 1:
            return False
        primary = primaries.pop()
        info = self.node(primary).info("replication")
        replica = self.node(next(port for port in self.data_ports if port != primary)).info("replication")
        return (info["role"] == "master" and info.get("connected_slaves") == 1
                and replica["role"] == "slave" and replica.get("master_link_status") == "up"
                and int(replica.get("master_port", 0)) == primary
                and int(info.get("master_repl_offset", -1)) == int(replica.get("slave_repl_offset", -2))
                and all(len(self.sentinel(n).sentinel_sentinels(self.master)) == len(self.sentinel_ports) - 1
                        for n in range(len(self.sentinel_ports))))

    def failover(self, timeout: float = 60.0) -> int:
        """SENTINEL FAILOVER and wait until the other node is the primary everywhere; its port.

        Asked again every failover-timeout (10 s): a sentinel aborts a failover whose replica it
        does not judge good yet (one restarted moments ago) and does not try it again by itself.
        """
        old = self.primary_port()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sentinel().execute_command("SENTINEL", "FAILOVER", self.master)
            except redis.ResponseError:
                pass  # INPROG (one is running) or NOGOODSLAVE (the replica is not ready): wait, then ask again
            attempt = min(10.0, deadline - time.monotonic())
            if attempt <= 0:
                pytest.fail(f"Sentinel failover not reached within {timeout} s")
            try:
                wait_until(lambda: self.primary_port() != old and self.settled(), attempt, "Sentinel failover")
                return self.primary_port()
            except pytest.fail.Exception:
                if time.monotonic() >= deadline:
                    raise

    def flush(self) -> None:
        self.node(self.primary_port()).flushall()
        self.node(self.primary_port()).execute_command("WAIT", 1, 2000)

    def stop_replica(self, timeout: float = 30.0) -> int:
        """Stop the replica's redis-server and wait until every sentinel flags it down; its port."""
        port = self.replica_port()
        self.processes.stop(self._process_name(port))
        wait_until(lambda: all(self._replica_down(n, port) for n in range(len(self.sentinel_ports))), timeout,
                   "every sentinel sees the replica down")
        return port

    def start_replica(self, port: int, timeout: float = 40.0) -> None:
        """Start the stopped replica again (empty, following the primary); wait until every sentinel sees it up."""
        self.processes.start(self._process_name(port),
                             redis_args(port, "--replicaof", "127.0.0.1", str(self.primary_port())), port)
        wait_until(lambda: self.settled() and not any(self._replica_down(n, port)
                                                      for n in range(len(self.sentinel_ports))),
                   timeout, "Sentinel group settled with its replica back")

    def _process_name(self, port: int) -> str:
        return "primary" if port == self.data_ports[0] else "replica"  # as the fixture started them

    def _replica_down(self, n: int, port: int) -> bool:
        for replica in self.sentinel(n).execute_command("SENTINEL", "REPLICAS", self.master):
            fields = replica if isinstance(replica, dict) else dict(zip(replica[::2], replica[1::2]))
            if int(fields["port"]) == port:
                return not DOWN_FLAGS.isdisjoint(fields["flags"].split(","))
        return False


@dataclass
class Cluster:
    """Three primaries with `replicas` replicas each."""

    ports: tuple[int, ...]
    processes: Processes
    extra: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def roles(self) -> dict[int, str]:
        return {port: self.node(port).info("replication")["role"] for port in self.ports}

    def healthy(self) -> bool:
        if any(self.node(port).info("cluster").get("cluster_enabled") != 1 for port in self.ports):
            return False
        states = [self.node(port).execute_command("CLUSTER", "INFO") for port in self.ports]
        if not all(b"cluster_state:ok" in (s if isinstance(s, bytes) else s.encode()) for s in states):
            return False
        roles = self.roles()
        if sorted(roles.values()) != ["master"] * 3 + ["slave"] * 3 * self.replicas:
            return False
        return all(self.node(port).info("replication").get("master_link_status") == "up"
                   for port, role in roles.items() if role == "slave")

    def failover(self, primary_port: int | None = None, timeout: float = 30.0) -> tuple[int, int]:
        """CLUSTER FAILOVER on a replica (of `primary_port`, or of the first primary); (old, new) primary ports."""
        roles = self.roles()
        old = primary_port or next(port for port, role in sorted(roles.items()) if role == "master")
        replica = next(port for port, role in roles.items()
                       if role == "slave" and int(self.node(port).info("replication")["master_port"]) == old)
        self.node(replica).execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: self.roles()[replica] == "master" and self.roles()[old] == "slave" and self.healthy(),
                   timeout, "Cluster failover")
        return old, replica

    def owner(self, slot: int) -> int:
        """Port of the primary serving `slot`."""
        for low, high, primary, *_ in self.node(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            if low <= slot <= high:
                return int(primary[1])
        raise LookupError(slot)

    def begin_move(self, slot: int, destination: int) -> int:
        """Mark `slot` MIGRATING on its owner and IMPORTING on `destination` (clients now get ASK); the owner."""
        source = self.owner(slot)
        source_id = self.node(source).execute_command("CLUSTER", "MYID")
        destination_id = self.node(destination).execute_command("CLUSTER", "MYID")
        self.node(destination).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self.node(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", destination_id)
        return source

    def finish_move(self, slot: int, source: int, destination: int) -> None:
        """MIGRATE every key of `slot`, then give the slot to `destination` on every primary."""
        node = self.node(source)
        while keys := node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            node.execute_command("MIGRATE", "127.0.0.1", destination, "", 0, 5000, "REPLACE", "KEYS", *keys)
        destination_id = self.node(destination).execute_command("CLUSTER", "MYID")
        for port in (destination, source):
            self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", destination_id)
        for port, role in self.roles().items():
            if role == "master" and port not in (source, destination):
                self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", destination_id)

    def flush(self) -> None:
        for port, role in self.roles().items():
            if role == "master":
                self.node(port).flushall()
        for port, role in self.roles().items():
            if role == "master":
                self.node(port).execute_command("WAIT", 1, 2000)


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory) -> Iterator[SentinelGroup]:
    """A running Sentinel group for the session (fails, never skips, if it cannot start)."""
    directory = tmp_path_factory.mktemp("sentinel")
    processes = Processes(directory)
    primary, replica = PORT_BASE + 10, PORT_BASE + 11
    sentinels = (PORT_BASE + 12, PORT_BASE + 13, PORT_BASE + 14)
    try:
        processes.start("primary", redis_args(primary), primary)
        processes.start("replica", redis_args(replica, "--replicaof", "127.0.0.1", str(primary)), replica)
        for port in sentinels:
            conf = directory / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} 2000\n"
                            f"sentinel failover-timeout {MASTER} 10000\n"
                            f"sentinel parallel-syncs {MASTER} 1\n")
            # Debian's redis-sentinel is redis-server started as a sentinel; either does.
            binary = shutil.which("redis-sentinel")
            args = [binary, str(conf)] if binary else [redis_args(port)[0], str(conf), "--sentinel"]
            processes.start(f"sentinel-{port}", args, port)
        group = SentinelGroup((primary, replica), sentinels, processes)
        wait_until(group.settled, 40, "Sentinel group ready")
        yield group
    finally:
        processes.stop_all()


def start_cluster(directory, ports: tuple[int, ...], *, replicas: int = 1, node_timeout_ms: int = 2000,
                  extra_args: Callable[[int], list[str]] = lambda port: []) -> Cluster:
    """Start cluster-enabled redis-servers on `ports` (bus on port + 30, `extra_args(port)` added) and
    create a cluster of three primaries with `replicas` replicas each."""
    processes = Processes(directory)
    try:
        for port in ports:
            processes.start(f"node-{port}", redis_args(
                port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-port", str(port + 30), "--cluster-node-timeout", str(node_timeout_ms),
                *extra_args(port), "--dir", str(directory)), port)
        cli = shutil.which("redis-cli") or pytest.fail("redis-cli is not installed")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"], check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cluster = Cluster(ports, processes, replicas=replicas)
        wait_until(cluster.healthy, 40, "Redis Cluster ready")
        # Every node must agree on the slot map before a client trusts it.
        client = RedisCluster.from_url(cluster.url)
        wait_until(lambda: client.set("pf:probe", 1) and client.delete("pf:probe") >= 0, 20, "cluster writes")
        client.close()
        return cluster
    except BaseException:
        processes.stop_all()
        raise


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A running Redis Cluster (3 primaries, 3 replicas) for the session."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), tuple(PORT_BASE + 20 + n for n in range(6)))
    try:
        yield cluster
    finally:
        cluster.processes.stop_all()


def close_app(app: Any) -> None:
    """Stop an app's outbox deliverer and close its Redis (scripts, near cache, client) and database connections."""
    from cache.client import close_client
    from service.testing import dispose_app

    services = app.extensions["profile_service"]
    services.outbox.stop()
    services.cache._scripts.close()
    if services.cache.near is not None:
        services.cache.near.close()
    close_client(services.redis)
    dispose_app(app)
