"""Per-application state: the cache, storage and clock every view reaches through ``services()``."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional

from flask import current_app

from cache import CacheStats, ReadThroughCache
from service.outbox import Outbox
from service.storage import LocalStorage, S3Storage
from service.telemetry import Telemetry

EXTENSION = "profile_service"


@dataclass
class Services:
    cache: ReadThroughCache
    redis: Any
    storage: LocalStorage | S3Storage
    clock: Callable[[], datetime]
    telemetry: Telemetry
    outbox: Outbox
    rng: random.Random = field(default_factory=random.Random)
    audit: Any = None  # service.audit.Auditor: samples cache hits for the staleness audit
    outbox_backlog: Optional[Callable[[], int]] = None
    """Pending invalidations in the outbox (``cache_outbox_backlog`` gauge); None until an outbox exists."""

    @property
    def stats(self) -> CacheStats:
        """The cache's lookup and invalidation counters."""
        return self.cache.stats


def services() -> Services:
    """Return the current application's services."""
    return current_app.extensions[EXTENSION]
