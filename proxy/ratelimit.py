"""Rate limiting per client network, shared across replicas, never waited on per beacon.

Each replica counts locally and, every ``sync_interval``, adds its new counts to shared
counters (Redis) and reads back the totals. A beacon is judged on the last shared totals plus
what this replica counted since, over a sliding window approximated from two fixed windows.
Networks are keyed by a salted hash of the truncated address: no address is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from redis.asyncio import Redis

from proxy.periodic import raise_if_cancelled
from proxy.state import KEY_PREFIX as STATE_PREFIX

log = logging.getLogger(__name__)

KEY_PREFIX = STATE_PREFIX + "rl:"
DEFAULT_SYNC_INTERVAL = 0.5


class CounterStore(Protocol):
    """Adds increments to shared counters and returns their new totals."""

    async def add(self, increments: Mapping[str, int], ttl: int) -> dict[str, int]: ...


class MemoryCounters:
    """One process: the local counts are the totals."""

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}

    async def add(self, increments: Mapping[str, int], ttl: int) -> dict[str, int]:
        for key, count in increments.items():
            self._totals[key] = self._totals.get(key, 0) + count
        return {key: self._totals[key] for key in increments}


class RedisCounters:
    """INCRBY + EXPIRE in one pipelined round trip per sync, not per beacon."""

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def add(self, increments: Mapping[str, int], ttl: int) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for key, count in increments.items():
            pipe.incrby(KEY_PREFIX + key, count)
            pipe.expire(KEY_PREFIX + key, ttl)
        results = await pipe.execute()
        return {key: int(results[2 * i]) for i, key in enumerate(increments)}


class RateLimiter:
    """``allow`` is synchronous and reads memory only; ``run`` keeps the shared view fresh."""

    def __init__(self, limit: int, window: int, store: CounterStore,
                 clock: Callable[[], float] = time.time,
                 sync_interval: float = DEFAULT_SYNC_INTERVAL) -> None:
        self._limit = limit
        self._window = window
        self._store = store
        self._clock = clock
        self._sync_interval = sync_interval
        self._pending: dict[str, int] = {}  # counted here since the last sync
        self._shared: dict[str, int] = {}  # totals as of the last sync
        self._sync_failures = 0

    @staticmethod
    def network_key(network: str, salt: bytes) -> str:
        """A salted hash of the truncated address: rotates with the salt, reveals nothing."""
        return hashlib.blake2b(network.encode(), key=salt[:64], digest_size=10).hexdigest()

    def allow(self, network_key: str) -> bool:
        """Count one beacon from ``network_key``; False once over the limit."""
        now = self._clock()
        window = int(now // self._window)
        current, previous = f"{window}:{network_key}", f"{window - 1}:{network_key}"
        weight = 1.0 - (now - window * self._window) / self._window
        estimate = self._count(current) + weight * self._count(previous)
        if estimate >= self._limit:
            return False
        self._pending[current] = self._pending.get(current, 0) + 1
        return True

    def _count(self, key: str) -> int:
        return self._shared.get(key, 0) + self._pending.get(key, 0)

    async def sync(self) -> None:
        """Push local counts, pull shared totals, forget windows that no longer matter."""
        pending, self._pending = self._pending, {}
        # Zero increments read back what other replicas added to the networks we track.
        increments = dict.fromkeys(self._shared, 0) | pending
        try:
            totals = await self._store.add(increments, ttl=2 * self._window + 5)
        except Exception:
            # Keep counting locally; the increments go out with the next successful sync.
            for key, count in pending.items():
                self._pending[key] = self._pending.get(key, 0) + count
            self._sync_failures += 1
            if self._sync_failures in (1, 10, 100):
                log.warning("rate-limit counters not shared", extra={"count": self._sync_failures})
            return
        self._sync_failures = 0
        self._shared.update(totals)
        oldest = int(self._clock() // self._window) - 1
        for key in [k for k in self._shared if int(k.partition(":")[0]) < oldest]:
            del self._shared[key]

    async def run(self) -> None:
        while True:
            raise_if_cancelled()
            await asyncio.sleep(self._sync_interval)
            await self.sync()

    def tracked(self) -> int:
        """Networks currently held in memory (a bound, for tests and metrics)."""
        return len(self._shared) + len(self._pending)
