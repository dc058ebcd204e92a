"""The rotating pseudonymous client id (privacy-requirements.md §3).

``pseudonym = HMAC-SHA256(salt_window, tid + "|" + cid)`` truncated to ``bits``, rendered
in GA's ``<number>.<number>`` shape. Salts change every window, so pseudonyms do too:
linkage across windows is broken on purpose.

The current window's salt is cached in memory until its window ends, so beacons do not
wait on the shared store. When the store cannot answer, the proxy keeps serving on a
process-local salt (``source == "local"``, shown in metrics) and asks the store again in
the background, with backoff, switching to the shared salt as soon as it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from proxy.state.salts import MemoryState, SaltStore

log = logging.getLogger(__name__)

LOCAL = "local"
STORE_DEADLINE = 2.0  # seconds a rotation waits for the store before using a local salt
RETRY_INITIAL = 2.0  # seconds before a store that failed is asked again; doubles per failure
RETRY_MAX = 30.0
PREFETCH = 30.0  # seconds before a window ends when the next window's salt is fetched
# Seconds a shared salt outlives its window, so a replica whose clock lags a little still
# finds the salt the others used instead of creating a second one for the same window.
CLOCK_SKEW = 5.0


@dataclass(frozen=True, slots=True)
class WindowKey:
    """The salt of one rotation window. Lives in memory only."""

    window: int
    start: int  # epoch seconds the window began
    end: int
    salt: bytes
    source: str  # "memory" | "redis" | "local" (the store was unreachable)


class Pseudonymizer:
    """Computes pseudonyms; caches the current window's salt until its window ends.

    ``on_key`` is called whenever the key in use changes (rotation, fallback, recovery).
    """

    def __init__(
        self,
        store: SaltStore,
        *,
        bits: int,
        rotation: int,
        clock: Callable[[], float] = time.time,
        on_key: Callable[[WindowKey], None] | None = None,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
        prefetch: float = PREFETCH,
        skew: float = CLOCK_SKEW,
        deadline: float = STORE_DEADLINE,
    ) -> None:
        self._store = store
        self._bits = bits
        self._shift = 256 - bits
        self._rotation = rotation
        self._clock = clock
        self._on_key = on_key
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        # A memory store answers without I/O: nothing to gain from fetching ahead.
        self._prefetch = 0.0 if store.source == "memory" else prefetch
        self._skew = skew
        self._deadline = deadline
        self._local = MemoryState()
        self._key: WindowKey | None = None
        self._mac = hmac.new(b"", digestmod=hashlib.sha256)
        self._mac_salt: bytes | None = None
        self._next: WindowKey | None = None  # prefetched salt of the window after _key's
        self._prefetched = -1  # the last window a prefetch was started for
        self._failures = 0  # consecutive store failures
        self._retry_at = 0.0  # while failing, the store is not asked before this time
        self._lock = asyncio.Lock()  # one rotation at a time; the others reuse its key
        self._task: asyncio.Task[None] | None = None  # the one background fetch

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def salt_source(self) -> str | None:
        """Where the salt in use came from; None before the first key."""
        return self._key.source if self._key is not None else None

    def salt_age(self, now: float | None = None) -> float:
        """Seconds since the window of the salt in use began (0 before the first key)."""
        if self._key is None:
            return 0.0
        return (self._clock() if now is None else now) - self._key.start

    async def current(self) -> WindowKey:
        """The key of the window containing now, from the local cache when still valid."""
        now = self._clock()
        key = self._key
        if key is None or not key.start <= now < key.end:
            return await self._rotate(now)
        if key.source == LOCAL:
            if now >= self._retry_at and self._idle():
                # Not before another backoff step, however many beacons arrive meanwhile.
                self._retry_at = now + self._backoff()
                self._spawn(self._recover(key))
        elif key.end - now <= self._prefetch and self._prefetched <= key.window and self._idle():
            self._prefetched = key.window + 1
            self._spawn(self._fetch_next(key.window + 1))
        return key

    def pseudonym(self, key: WindowKey, tid: str, cid: str) -> str:
        if key.salt is not self._mac_salt:
            # Keyed once per salt; each beacon copies the keyed state (a third cheaper).
            self._mac = hmac.new(key.salt, digestmod=hashlib.sha256)
            self._mac_salt = key.salt
        mac = self._mac.copy()
        mac.update(f"{tid}|{cid}".encode())
        digest = mac.digest()
        number = int.from_bytes(digest, "big") >> self._shift
        # GA's cid is "<random>.<first-seen seconds>"; the window start stands for first-seen.
        return f"{number}.{key.start}"

    async def idle(self) -> None:
        """Wait for the background fetch, if one runs (tests, shutdown)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def close(self) -> None:
        """Stop background fetches and forget the salts held here."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        self._key = self._next = None
        await self._local.close()

    async def _rotate(self, now: float) -> WindowKey:
        async with self._lock:
            window = int(now // self._rotation)
            key = self._key
            if key is not None and key.window == window:
                return key  # another beacon rotated while this one waited for the lock
            nxt, self._next = self._next, None
            if nxt is not None and nxt.window == window:
                return self._activate(nxt)
            if now < self._retry_at:
                # The store failed moments ago: do not make beacons wait on it again.
                return self._activate(await self._local_key(window))
            try:
                salt = await self._ask_store(window, now)
            except Exception as exc:
                self._failed(now, exc)
                return self._activate(await self._local_key(window))
            self._succeeded()
            await self._local.close()  # a local salt of an earlier window is never needed
            return self._activate(self._key_of(window, salt, self._store.source))

    async def _recover(self, stale: WindowKey) -> None:
        now = self._clock()
        try:
            salt = await self._ask_store(stale.window, now)
        except Exception as exc:
            self._failed(now, exc)
            return
        self._succeeded()
        if self._key is stale:  # not rotated meanwhile
            self._activate(self._key_of(stale.window, salt, self._store.source))
            await self._local.close()  # the local salt is never needed again

    async def _fetch_next(self, window: int) -> None:
        now = self._clock()
        try:
            salt = await self._ask_store(window, now)
        except Exception as exc:
            # The rotation asks again; failing now spares the first beacon of the next
            # window from waiting on a store that is down.
            self._failed(now, exc)
            return
        self._succeeded()
        self._next = self._key_of(window, salt, self._store.source)

    async def _ask_store(self, window: int, now: float) -> bytes:
        end = (window + 1) * self._rotation
        # The store forgets the salt when its window ends (plus the clock-skew margin).
        ttl = end - now + self._skew
        return await asyncio.wait_for(self._store.salt_for(window, ttl), self._deadline)

    async def _local_key(self, window: int) -> WindowKey:
        salt = await self._local.salt_for(window, ttl=self._rotation)
        return self._key_of(window, salt, LOCAL)

    def _key_of(self, window: int, salt: bytes, source: str) -> WindowKey:
        start = window * self._rotation
        return WindowKey(window, start, start + self._rotation, salt, source)

    def _activate(self, key: WindowKey) -> WindowKey:
        was_local = self._key is not None and self._key.source == LOCAL
        self._key = key
        if key.source == LOCAL and not was_local:
            log.warning("salt store unreachable: pseudonyms use a local salt")
        elif was_local and key.source != LOCAL:
            log.info("salt store reachable again: pseudonyms use the shared salt")
        if self._on_key is not None:
            self._on_key(key)
        return key

    def _failed(self, now: float, exc: Exception) -> None:
        self._failures += 1
        self._retry_at = now + self._backoff()
        if self._failures == 1:
            # The type only: a store's message can carry addresses of infrastructure.
            log.warning("salt store failed", extra={"reason": type(exc).__name__})

    def _succeeded(self) -> None:
        self._failures = 0
        self._retry_at = 0.0

    def _backoff(self) -> float:
        steps = max(0, self._failures - 1)
        return float(min(self._retry_max, self._retry_initial * 2**steps))

    def _idle(self) -> bool:
        return self._task is None or self._task.done()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.create_task(work)
