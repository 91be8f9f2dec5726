"""Every Redis key and hash-field format of the cache; nothing else builds keys."""
from __future__ import annotations

SCHEMA_VERSION = 1
"""Bumped when the cached JSON shape changes, so a deploy never reads older entries."""

PREFIX = f"pf:{SCHEMA_VERSION}"
GENERATION_SEPARATOR = ":g"
LEASE_PREFIX = "lease|"
NEGATIVE_MARKER = b"\x00"


INVALIDATION_CHANNEL = f"{PREFIX}:invalidations"
"""Pub/sub channel of invalidations: each message the space-separated hash tags a write touched."""
ALL = "*"
"""The tag that drops every copy of every process (after a FLUSHDB, say)."""


def profile_key(user_id: int) -> str:
    """Hash holding a user's profile answer, one field per variant."""
    # The {u:<id>} hash tag puts all of a user's keys in one Redis Cluster slot,
    # which the generation-keyed Lua scripts rely on.
    return f"{PREFIX}:{{u:{user_id}}}:profile"


def generation_key(user_id: int) -> str:
    """Counter naming the live generation of a creator's page hash."""
    return f"{PREFIX}:{{u:{user_id}}}:gen"


def pages_key(user_id: int) -> str:
    """Base name of a creator's page hash (the live hash is `generation_hash_key(base, gen)`)."""
    return f"{PREFIX}:{{u:{user_id}}}:pages"


def generation_hash_key(base: str, generation: int | str | bytes) -> str:
    """Concrete page hash for one generation (Lua builds the same name from GENERATION_SEPARATOR)."""
    if isinstance(generation, bytes):
        generation = generation.decode()
    return f"{base}{GENERATION_SEPARATOR}{generation}"


def page_field(page: int, page_size: int, variant: str = "") -> str:
    """Hash field of one page of a listing for one variant (e.g. a public base URL)."""
    return f"p{page}:s{page_size}|{variant}"


def flyer_key(flyer_id: int) -> str:
    """Hash holding one flyer's answer, one field per variant."""
    return f"{PREFIX}:{{f:{flyer_id}}}:flyer"


def lease_field(variant: str) -> str:
    """Field holding the fill lease of `variant` in the same hash as its value."""
    # Same hash as the value: deleting the key revokes value and lease atomically.
    return LEASE_PREFIX + variant


def stats_bucket_key(epoch_bucket: int) -> str:
    """Counter hash of one 10-second bucket, shared by every process (fields ``kind|label...``)."""
    # One {stats} tag keeps the bucket and total hashes in one slot, so a push
    # can be a MULTI/EXEC even on Redis Cluster.
    return f"{PREFIX}:{{stats}}:b:{epoch_bucket}"


def stats_total_key() -> str:
    """Since-start counter hash shared by every process (fields ``kind|label...``)."""
    return f"{PREFIX}:{{stats}}:totals"


def stats_processes_key() -> str:
    """Hash of every process's last report (breaker state, near-cache size), field ``instance|pid``."""
    return f"{PREFIX}:{{stats}}:processes"


def hash_tag(key: str) -> str:
    """The `{...}` part of a key (the whole key if it has none): one user's or one flyer's keys."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start:end + 1] if start >= 0 and end > start else key
