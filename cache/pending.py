"""Invalidations that could not reach Redis, kept in-process until they are replayed."""
from __future__ import annotations

import itertools
import threading
from typing import Iterable

Item = tuple[str, ...]  # ("key", key) or ("generation", generation_key, pages_base)


class PendingInvalidations:
    """A thread-safe set of failed invalidations, each stamped with when it was last queued."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Item, int] = {}
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, keys: Iterable[str], generations: Iterable[tuple[str, str]]) -> None:
        """Queue deletions of `keys` and bumps of `(generation_key, pages_base)` pairs."""
        with self._lock:
            for key in keys:
                self._items[("key", key)] = next(self._seq)
            for gen_key, base in generations:
                self._items[("generation", gen_key, base)] = next(self._seq)

    def snapshot(self) -> dict[Item, int]:
        """The queued items with their stamps, to replay and then `discard`."""
        with self._lock:
            return dict(self._items)

    def discard(self, replayed: dict[Item, int]) -> None:
        """Forget replayed items, unless one was queued again while the replay was in flight."""
        # A re-queued item belongs to a later write: the replay may have reached
        # Redis before that write committed, so it must be replayed once more.
        with self._lock:
            for item, stamp in replayed.items():
                if self._items.get(item) == stamp:
                    del self._items[item]


def split(items: Iterable[Item]) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys and generation pairs of queued items."""
    keys: list[str] = []
    generations: list[tuple[str, str]] = []
    for item in items:
        if item[0] == "key":
            keys.append(item[1])
        else:
            generations.append((item[1], item[2]))
    return keys, generations
