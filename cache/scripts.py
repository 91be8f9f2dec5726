"""Lua scripts of the lease protocol; each touches one hash tag, so one Cluster slot."""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable, Sequence

import redis
from redis.cluster import ClusterPipeline

# Lease field value: "<expiry epoch ms>|<token>". The caller supplies `now` so
# every process (and the tests' fake clock) agrees on one time base.

LOOKUP = """
local key = KEYS[1]
if #KEYS > 1 then
  -- The concrete page hash is not listed in KEYS; that is safe only because it
  -- shares the generation key's hash tag (same Cluster slot).
  key = key .. ARGV[6] .. (redis.call('GET', KEYS[2]) or '0')
end
local value = redis.call('HGET', key, ARGV[1])
if value then return {1, value, redis.call('PTTL', key)} end
local now = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local lease = redis.call('HGET', key, ARGV[2])
if lease then
  local expires = tonumber(string.match(lease, '^(%d+)|'))
  if expires and expires > now then return {2, key} end
end
local pttl = redis.call('PTTL', key)
redis.call('HSET', key, ARGV[2], string.format('%d', now + ttl) .. '|' .. ARGV[3])
-- A lease-only hash must not outlive its lease forever. A hash that already
-- expires keeps its deadline (other variants' values may be cut at a validity
-- boundary): a lease outliving it is dropped with it and its fill refused.
if pttl < 0 then redis.call('PEXPIRE', key, ttl) end
return {3, key}
"""
"""KEYS: hash (or pages base), [generation key]. ARGV: field, lease field, token,
now ms, lease ttl ms, generation separator. Returns {1, value, ms the hash has left}
on a hit (a field never outlives its hash: fills and leases never extend a deadline), else
{2, hash} when another reader holds a live lease or {3, hash} when granted."""

FILL = """
local lease = redis.call('HGET', KEYS[1], ARGV[2])
if not lease then return 0 end
local bar = string.find(lease, '|', 1, true)
if not bar or string.sub(lease, bar + 1) ~= ARGV[3] then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local deadline = tonumber(ARGV[5])
if deadline <= now then
  -- Loaded before a validity boundary that has passed since: never stored.
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 2
end
local others = false
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= ARGV[1] and string.sub(f, 1, #ARGV[6]) ~= ARGV[6] then others = true break end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HDEL', KEYS[1], ARGV[2])
local pttl = redis.call('PTTL', KEYS[1])
-- Another variant's value already set the hash's deadline; never extend it
-- (its deadline may be a validity boundary), only bring it forward.
if not others or pttl < 0 or deadline < now + pttl then redis.call('PEXPIREAT', KEYS[1], deadline) end
return 1
"""
"""KEYS: hash. ARGV: field, lease field, token, value, deadline (epoch ms), lease prefix.
Writes only while this token's lease is still in the hash and the deadline is ahead (by
Redis's clock): 1 if written, 2 if the deadline had passed, 0 if the lease was gone. An
absolute deadline, not a TTL, so a fill that waited on a lock or a slow network never
keeps a value past the validity boundary its loader computed."""

RELEASE = """
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 0 end
local bar = string.find(lease, '|', 1, true)
if bar and string.sub(lease, bar + 1) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
"""KEYS: hash. ARGV: lease field, token. Drops the lease if it is still ours."""

BUMP_GENERATION = """
local current = redis.call('GET', KEYS[1]) or '0'
redis.call('DEL', KEYS[2] .. ARGV[1] .. current)
-- Never reuse a number: if the counter is evicted or expires, restarting from the
-- clock (not 0) keeps an orphaned older page hash from becoming live again.
local nextgen = math.max(tonumber(current) + 1, tonumber(ARGV[2]))
redis.call('SET', KEYS[1], string.format('%d', nextgen), 'PX', ARGV[3])
return nextgen
"""
"""KEYS: generation key, pages base. ARGV: generation separator, now in µs,
generation ttl ms. Deletes the live page hash and advances the generation."""


class DirectConnection:
    """This process's own connection for the lease scripts, called without redis-py's command layer.

    `Redis.execute_command` (pool checkout and release, retry wrapper, telemetry hooks)
    costs ~27 µs of a ~60 µs EVALSHA round trip (measured interleaved, in-process), and a
    miss makes two such calls. One connection per process, under a lock; a fork gets its
    own. A failure other than an error reply drops the connection (it may be out of step
    with its replies); the next call reconnects. Every new connection is first handed to
    `on_connect` (the epoch check, see ``cache.epoch``); if that raises, it is not used.
    """

    def __init__(self, client: redis.Redis,
                 on_connect: Callable[[redis.Connection], None] | None = None) -> None:
        from .client import connection_factory  # (client imports near, which imports nothing of ours)

        # Sentinel mode: a plain connection to the primary the sentinels name now.
        self._make = connection_factory(client)
        self._lock = threading.Lock()
        self._conn: redis.Connection | None = None
        self._pid = 0
        self.on_connect = on_connect

    def evalsha(self, sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        with self._lock:
            conn = self._conn
            if conn is None or self._pid != os.getpid():
                conn = self._open()
            try:
                conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                return conn.read_response()
            except redis.exceptions.ReadOnlyError:
                # A demoted primary (a failover): the next call asks for the primary again.
                conn.disconnect()
                self._conn = None
                raise
            except redis.ResponseError:
                raise
            except BaseException:
                conn.disconnect()
                self._conn = None
                raise

    def _open(self) -> redis.Connection:
        conn = self._make()
        if self.on_connect is not None:
            try:
                conn.connect()
                self.on_connect(conn)
            except redis.RedisError:
                conn.disconnect()
                raise
            except Exception as error:  # e.g. the epoch repair could not replay: a Redis failure to callers
                conn.disconnect()
                raise redis.ConnectionError(f"cache: new Redis connection not usable: {error}") from error
            except BaseException:
                conn.disconnect()
                raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
                self._conn = None


class DirectScript:
    """A Lua script run over a DirectConnection, loaded again after a NOSCRIPT (flushed cache, restarted Redis)."""

    def __init__(self, client: redis.Redis, connection: DirectConnection, source: str) -> None:
        self._client = client
        self._connection = connection
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self._connection.evalsha(self.sha, keys, args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(self._source)
            return self._connection.evalsha(self.sha, keys, args)


class LazyClient:
    """The cluster client of the lookup path, made on first use (not at start-up).

    At start-up the epoch check's repair is not wired yet, and the cluster may be down: made
    then, its first connection would record an epoch without repairing, or fail the start.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class ClientScript:
    """A Lua script run through a (cluster) client's command layer, which routes it by its keys' slot."""

    def __init__(self, client: LazyClient, source: str) -> None:
        self._client = client
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        client = self._client.get()
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self._source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """The lease scripts of one client: the hot three over a DirectConnection, the bump in pipelines.

    On a Redis Cluster the hot three go through a second cluster client instead (``lookup_client``:
    MOVED/ASK and failovers followed by redis-py, each new connection epoch-checked); the
    ~30 µs of redis-py's command layer is the price there.
    """

    def __init__(self, client: Any,
                 on_connect: Callable[[redis.Connection], None] | None = None) -> None:
        from redis.cluster import RedisCluster

        if isinstance(client, RedisCluster):
            from .client import lookup_client

            lookups = LazyClient((lambda: lookup_client(client, on_connect)) if on_connect is not None
                                 else (lambda: client))
            self.lookup = ClientScript(lookups, LOOKUP)
            self.fill = ClientScript(lookups, FILL)
            self.release = ClientScript(lookups, RELEASE)
            self.close = lookups.close if on_connect is not None else (lambda: None)
        else:
            from .client import mode_of

            # Sentinel: declared as Redis 7 scripts (a shebang, no `no-writes` flag), which a
            # replica refuses before running, even a hit. A primary demoted by a failover thus
            # answers READONLY to every lookup, and the connection moves to the new primary
            # (epoch-checked there) instead of serving hits from a replica.
            shebang = "#!lua\n" if mode_of(client) == "sentinel" else ""
            connection = DirectConnection(client, on_connect)
            self.lookup = DirectScript(client, connection, shebang + LOOKUP)
            self.fill = DirectScript(client, connection, shebang + FILL)
            self.release = DirectScript(client, connection, shebang + RELEASE)
            self.close = connection.close
        self.bump = client.register_script(BUMP_GENERATION)

    def queue_bump(self, pipe: redis.client.Pipeline, generation_key: str, pages_base: str,
                   separator: str, now_us: int, ttl_ms: int) -> None:
        """Add a generation bump to `pipe` as a bare EVALSHA (see `load_bump`)."""
        # A Script passed to a pipeline first sends SCRIPT EXISTS, a second round
        # trip; the caller instead reloads and retries on NOSCRIPT, which is rare.
        # execute_command: a cluster pipeline refuses its evalsha() method, not the command
        # (routed by its first key; both keys share the {u:id} tag, so one slot).
        options = {}
        if isinstance(pipe, ClusterPipeline):
            # Named, its node is known from the local slot map. Left to itself, redis-py 8.1's
            # cluster pipeline asks the server for the keys of each EVALSHA (COMMAND GETKEYS,
            # one round trip per bump): an outbox replay of 500 bumps then took 10 s with
            # Redis 20 ms away, holding every read of the process.
            options["target_nodes"] = pipe.get_node_from_key(generation_key)
        pipe.execute_command("EVALSHA", self.bump.sha, 2, generation_key, pages_base, separator, now_us, ttl_ms,
                             **options)

    def load_bump(self) -> None:
        """Load the bump script after a NOSCRIPT (flushed script cache, restarted Redis)."""
        self.bump.registered_client.script_load(BUMP_GENERATION)
