"""Loader results, lookup answers, and how an answer is stored in a hash field."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from .keys import NEGATIVE_MARKER

ETAG_LENGTH = 32


class _NotFound:
    """Type of the NOT_FOUND sentinel."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_FOUND"

    def __reduce__(self) -> str:
        return "NOT_FOUND"


NOT_FOUND: Any = _NotFound()
"""Loader value for a missing object: cached briefly as "missing" (negative caching)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a loader returns: a JSON-able value, its JSON already encoded (bytes), or NOT_FOUND; and how long it may be cached."""

    value: Any
    ttl: float


@dataclass(frozen=True, slots=True)
class Entry:
    """One lookup's answer: compact JSON body and etag (both None when not found)."""

    body: bytes | None
    etag: str | None
    result: str  # "hit" | "miss" | "lease_wait" | "error"

    @property
    def found(self) -> bool:
        """True unless the answer is "not found"."""
        return self.body is not None


def make_etag(body: bytes) -> str:
    """32 hex chars identifying `body`; computed once at fill time."""
    return hashlib.blake2b(body, digest_size=ETAG_LENGTH // 2).hexdigest()


def from_loaded(loaded: Loaded, result: str) -> tuple[Entry, bytes]:
    """Serialize a loader answer into the Entry to return and the field value to store."""
    if loaded.value is NOT_FOUND:
        return Entry(None, None, result), NEGATIVE_MARKER
    body = loaded.value if isinstance(loaded.value, bytes) else orjson.dumps(loaded.value)
    etag = make_etag(body)
    return Entry(body, etag, result), etag.encode("ascii") + body


def from_stored(raw: bytes, result: str) -> Entry:
    """Slice a stored field value (etag + body, or the negative marker) into an Entry."""
    if raw == NEGATIVE_MARKER:
        return Entry(None, None, result)
    return Entry(raw[ETAG_LENGTH:], raw[:ETAG_LENGTH].decode("ascii"), result)
