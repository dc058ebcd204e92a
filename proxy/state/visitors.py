"""Distinct pseudonymous visitors per day, for the transfer report's collision figure at the
observed volume (privacy-requirements.md §3: "the expected collision rate for the observed
daily volume").

Only pseudonyms are counted (keyed hashes that rotate with the salt), never kept: in memory
as the k smallest hash values of the day (a K-minimum-values sketch: 1,024 integers, about
3 % error), with Redis as one HyperLogLog per day shared by every replica, written in batches
once a second so no beacon waits on Redis.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

from proxy.state.periodic import flush_forever
from proxy.state.salts import KEY_PREFIX

log = logging.getLogger(__name__)

SKETCH_SIZE = 1024
HASH_SPACE = 1 << 61
FLUSH_INTERVAL = 1.0
KEEP_DAYS = 3
PENDING_MAX = 100_000  # pseudonyms waiting for the next batch to Redis; past it, not counted


def day_of(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class Sketch:
    """K minimum values: the ``SKETCH_SIZE`` smallest hashes seen estimate the distinct count."""

    def __init__(self) -> None:
        self._heap: list[int] = []  # negated, so the largest kept value is at the top
        self._kept: set[int] = set()

    def add(self, value: int) -> None:
        if value in self._kept:
            return
        if len(self._heap) < SKETCH_SIZE:
            heapq.heappush(self._heap, -value)
            self._kept.add(value)
        elif value < -self._heap[0]:
            dropped = -heapq.heappushpop(self._heap, -value)
            self._kept.discard(dropped)
            self._kept.add(value)

    def estimate(self) -> int:
        if len(self._heap) < SKETCH_SIZE:
            return len(self._heap)  # exact below the sketch's size
        largest = -self._heap[0]
        return int((SKETCH_SIZE - 1) * HASH_SPACE / (largest + 1))


class DailyVisitors:
    """This process's count (memory), plus the shared one when Redis is configured."""

    def __init__(self, client: Any = None, clock: Callable[[], float] = time.time) -> None:
        self._client, self._clock = client, clock
        self._day = day_of(clock())
        self._day_start = float("-inf")  # the start of the UTC day named _day, once known
        self._today: Sketch = Sketch()
        self._yesterday: Sketch | None = None
        self._pending: set[str] = set()

    def share(self, client: Any) -> None:
        """Count in Redis too (from here on), so every replica reports the same volume."""
        self._client = client

    def add(self, pseudonym: str) -> None:
        """Per forwarded beacon: a hash and a comparison, rarely a heap operation."""
        now = self._clock()
        if self._day_start <= now < self._day_start + 86400:
            day = self._day  # the day's name is formatted once a day, not per beacon
        else:
            day = day_of(now)
            self._day_start = now - now % 86400
        if day != self._day:
            self._day, self._yesterday, self._today = day, self._today, Sketch()
        self._today.add(hash(pseudonym) % HASH_SPACE)
        if self._client is not None and len(self._pending) < PENDING_MAX:
            self._pending.add(pseudonym)

    async def observed(self) -> tuple[int, str] | None:
        """The last complete day's count if known, else today's so far; and which it is."""
        if self._client is not None:
            now = self._clock()
            for day, label in ((day_of(now - 86400), "yesterday"), (day_of(now), "today")):
                count = int(await self._client.pfcount(f"{KEY_PREFIX}visitors:{day}"))
                if count:
                    return count, label
            return None
        if self._yesterday is not None and self._yesterday.estimate():
            return self._yesterday.estimate(), "yesterday"
        count = self._today.estimate()
        return (count, "today") if count else None

    async def flush(self) -> None:
        if self._client is None or not self._pending:
            return
        pending, self._pending = self._pending, set()
        key = f"{KEY_PREFIX}visitors:{day_of(self._clock())}"
        pipe = self._client.pipeline(transaction=False)
        pipe.pfadd(key, *pending)
        pipe.expire(key, KEEP_DAYS * 86400)
        await pipe.execute()

    async def run(self) -> None:
        await flush_forever(self.flush, "visitor count unavailable", FLUSH_INTERVAL)
