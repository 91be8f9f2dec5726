"""Redis read-through cache for JSON answers, with leases against stale sets and stampedes."""
from .breaker import Breaker
from .client import make_client, make_near_cache
from .epoch import EPOCH_KEY, EpochGuard
from .near import NearCache
from .readthrough import NOT_FOUND, Claim, Entry, Loaded, ReadThroughCache
from .stats import CacheStats, read_from_redis

__all__ = ["Breaker", "CacheStats", "Claim", "EPOCH_KEY", "Entry", "EpochGuard", "Loaded", "NOT_FOUND", "NearCache", "ReadThroughCache",
           "make_client", "make_near_cache", "read_from_redis"]
