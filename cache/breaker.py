"""A thread-safe circuit breaker with exponential back-off between half-open probes."""
from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Breaker:
    """closed -> open after `threshold` consecutive failures; open -> half_open after a delay.

    In half_open exactly one call is let through; its success closes the breaker
    and resets the delay, its failure reopens it with the delay doubled (capped
    at `max_delay`). `state` reports "open" until an `allow()` call starts the probe.
    """

    def __init__(self, threshold: int = 5, base_delay: float = 0.5, max_delay: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._delay = base_delay
        self._since = 0.0  # when the breaker opened, or when the probe was let through

    @property
    def state(self) -> str:
        """"closed", "open" or "half_open"."""
        return self._state

    def allow(self) -> bool:
        """True if the caller may try the protected resource now."""
        if self._state == CLOSED:  # lock-free fast path: this runs on every cache hit
            return True
        with self._lock:
            now = self._clock()
            if self._state == CLOSED:
                return True
            if self._state == OPEN and now - self._since >= self._delay:
                self._state, self._since = HALF_OPEN, now
                return True
            # A probe whose outcome was never reported would wedge the breaker in
            # half_open; after another delay, let a new probe through.
            if self._state == HALF_OPEN and now - self._since >= self._delay:
                self._since = now
                return True
            return False

    def record_success(self) -> None:
        """Close the breaker and reset the failure count and delay."""
        if self._state == CLOSED and self._failures == 0:  # fast path for the hit path
            return
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._delay = self._base_delay

    def record_failure(self) -> None:
        """Count a failure: open at the threshold, or reopen with a longer delay after a probe."""
        with self._lock:
            now = self._clock()
            if self._state == HALF_OPEN:
                self._delay = min(self._delay * 2, self._max_delay)
                self._state, self._since = OPEN, now
            elif self._state == CLOSED:
                self._failures += 1
                if self._failures >= self._threshold:
                    self._state, self._since = OPEN, now
            # Already open: a straggler that was let through before opening failed;
            # the current back-off stands.
