"""Rate limiting per client network, shared across replicas, never waited on per beacon.

A beacon is judged on what this replica knows of its network's count: the shared total as
of the last sync plus what it counted since, over a sliding window approximated from two
fixed windows. Every ``sync_interval`` a replica sends only what it counted since the last
sync (the deltas) and gets back, for those networks, the new shared totals: its cost follows
the beacons, not the networks it has seen, and it sends nothing when nothing arrives. A
network it has not counted lately may hold an older total; its next beacon is counted and
brings the total back within one sync, the same slack a network new to this replica has.

Counts are kept per window and a window is dropped whole once it can no longer weigh on a
beacon (older than the previous one): memory holds the networks of two windows at most, in
Redis too (one hash per window and bucket, expiring with its window). Networks are keyed by
a salted hash of the truncated address: no address is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from redis.asyncio import Redis

from proxy.state.periodic import raise_if_cancelled
from proxy.state.salts import KEY_PREFIX as STATE_PREFIX

log = logging.getLogger(__name__)

KEY_PREFIX = STATE_PREFIX + "rl:"
DEFAULT_SYNC_INTERVAL = 0.5
# Each window's counts in Redis are split over this many hashes (by the first hex digit of the
# network's key), so that no single key grows large enough to stall Redis when it expires.
BUCKETS = 16
BATCH = 5000  # networks per pipelined round trip

Counts = dict[str, int]  # network key -> beacons
WindowCounts = Mapping[int, Mapping[str, int]]  # window number -> network key -> beacons


class CounterStore(Protocol):
    """Adds increments to shared per-window counters and returns their new totals."""

    async def add(self, increments: WindowCounts, ttl: int) -> dict[int, Counts]: ...


class MemoryCounters:
    """Shared counters in this process (limiters sharing one store, as replicas share Redis).
    A window older than the one before the newest it was given is dropped whole."""

    def __init__(self) -> None:
        self._windows: dict[int, Counts] = {}

    async def add(self, increments: WindowCounts, ttl: int) -> dict[int, Counts]:
        totals: dict[int, Counts] = {}
        for window, counts in increments.items():
            held = self._windows.setdefault(window, {})
            for key, count in counts.items():
                held[key] = held.get(key, 0) + count
            totals[window] = {key: held[key] for key in counts}
        newest = max(self._windows, default=0)
        for window in [w for w in self._windows if w < newest - 1]:
            del self._windows[window]
        return totals

    def held(self) -> int:
        """Counters held (a bound, for tests)."""
        return sum(len(counts) for counts in self._windows.values())


class RedisCounters:
    """HINCRBY per network counted since the last sync, and one EXPIRE per hash touched:
    one pipelined round trip per sync (per ``BATCH`` networks, so that catching up after an
    outage never holds the event loop long)."""

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def add(self, increments: WindowCounts, ttl: int) -> dict[int, Counts]:
        totals: dict[int, Counts] = {window: {} for window in increments}
        batch: list[tuple[int, str, int]] = []
        for window, counts in increments.items():
            for key, count in counts.items():
                batch.append((window, key, count))
                if len(batch) == BATCH:
                    await self._send(batch, ttl, totals)
                    batch = []
        if batch:
            await self._send(batch, ttl, totals)
        return totals

    async def _send(
        self, batch: list[tuple[int, str, int]], ttl: int, totals: dict[int, Counts]
    ) -> None:
        pipe = self._client.pipeline(transaction=False)
        hashes: set[str] = set()
        for window, key, count in batch:
            name = f"{KEY_PREFIX}{window}:{key[:1]}"
            pipe.hincrby(name, key, count)
            hashes.add(name)
        for name in hashes:
            pipe.expire(name, ttl)
        results = await pipe.execute()
        for (window, key, _), result in zip(batch, results, strict=False):
            totals[window][key] = int(result)


class RateLimiter:
    """``allow`` is synchronous and reads memory only; ``run`` keeps the shared view fresh.
    Without a store (one process) the local counts are the totals and nothing is synced."""

    def __init__(self, limit: int, window: int, store: CounterStore | None = None,
                 clock: Callable[[], float] = time.time,
                 sync_interval: float = DEFAULT_SYNC_INTERVAL) -> None:
        self._limit = limit
        self._window = window
        self._store = store
        self._clock = clock
        self._sync_interval = sync_interval
        self._sync_failures = 0
        # Per window: the best known totals (shared as of the last sync, plus local counts
        # since), and the counts not yet sent. Only the current and previous windows.
        self._known: dict[int, Counts] = {}
        self._pending: dict[int, Counts] = {}
        self._number = -1  # the current window's number
        self._current: Counts = {}
        self._previous: Counts = {}
        self._current_pending: Counts = {}

    @staticmethod
    def network_key(network: str, salt: bytes) -> str:
        """A salted hash of the truncated address: rotates with the salt, reveals nothing."""
        return hashlib.blake2b(network.encode(), key=salt[:64], digest_size=10).hexdigest()

    def allow(self, network_key: str) -> bool:
        """Count one beacon from ``network_key``; False once over the limit."""
        now = self._clock()
        number = int(now // self._window)
        if number != self._number:
            if number > self._number:
                self._advance(number)
            else:  # the clock stepped back: count in the newest window, fully weighted
                number, now = self._number, self._number * self._window
        current = self._current
        count = current.get(network_key, 0)
        weight = 1.0 - (now - number * self._window) / self._window
        if count + weight * self._previous.get(network_key, 0) >= self._limit:
            return False
        current[network_key] = count + 1
        pending = self._current_pending
        pending[network_key] = pending.get(network_key, 0) + 1
        return True

    def _advance(self, number: int) -> None:
        """A new window: the two that matter become current and previous; older ones go."""
        self._number = number
        self._current = self._known.setdefault(number, {})
        self._previous = self._known.setdefault(number - 1, {})
        self._current_pending = self._pending.setdefault(number, {})
        for held in (self._known, self._pending):
            for old in [w for w in held if w < number - 1]:
                del held[old]

    async def sync(self) -> None:
        """Send the counts made here since the last sync; learn those networks' totals."""
        number = int(self._clock() // self._window)
        if number > self._number:
            self._advance(number)  # prunes expired windows even when no beacon comes
        pending = {w: counts for w, counts in self._pending.items() if counts}
        self._pending = {}
        self._current_pending = self._pending.setdefault(self._number, {})
        if not pending or self._store is None:
            return
        try:
            totals = await self._store.add(pending, ttl=2 * self._window + 5)
        except Exception:
            # Keep counting locally; the increments go out with the next successful sync
            # (if their window still matters then).
            for w, counts in pending.items():
                if w >= self._number - 1:
                    held = self._pending.setdefault(w, {})
                    for key, count in counts.items():
                        held[key] = held.get(key, 0) + count
            self._sync_failures += 1
            if self._sync_failures in (1, 10, 100):
                log.warning("rate-limit counters not shared", extra={"count": self._sync_failures})
            return
        self._sync_failures = 0
        for w, counts in totals.items():
            known = self._known.get(w)
            if known is None:
                continue  # the window ended while the sync was under way
            since = self._pending.get(w, {})  # counted here while the sync was under way
            for key, total in counts.items():
                total += since.get(key, 0)
                # Never below what is known here: a Redis that lost its data must not
                # hand a network back its allowance.
                if total > known.get(key, 0):
                    known[key] = total

    async def run(self) -> None:
        while True:
            raise_if_cancelled()
            await asyncio.sleep(self._sync_interval)
            await self.sync()

    def tracked(self) -> int:
        """Counters held in memory (networks per window, counted and pending): a bound, for
        tests and the benchmark."""
        return sum(len(c) for c in self._known.values()) + sum(
            len(c) for c in self._pending.values())
