"""Redis read-through cache for JSON answers, with leases against stale sets and stampedes."""
from .breaker import Breaker
from .client import make_client
from .readthrough import NOT_FOUND, Entry, Loaded, ReadThroughCache
from .stats import CacheStats, read_from_redis

__all__ = ["Breaker", "CacheStats", "Entry", "Loaded", "NOT_FOUND", "ReadThroughCache",
           "make_client", "read_from_redis"]
