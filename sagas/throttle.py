"""A limit on how often one thing may be asked for: a token bucket per key, in this process."""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sagas.errors import TooManyRequestsError


class Throttle:
    """At most ``per_minute`` requests a minute per key, ``per_minute`` of them at once.

    Beyond ``max_keys`` the least recently used are forgotten. Thread-safe; per process."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(per_minute)
        self._refill_per_second = per_minute / 60
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, what: str) -> None:
        """Take one request for ``key``; :class:`TooManyRequestsError` (about ``what``) when
        its bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, since = self._buckets.pop(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - since) * self._refill_per_second)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self._refill_per_second
                raise TooManyRequestsError(
                    f"too many requests for {what}; try again in {wait:.0f} s", retry_after=wait
                )
            self._buckets[key] = (tokens - 1, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
