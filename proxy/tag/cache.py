"""The rewritten tag, kept ready to serve: compressed once, in memory, and in Redis.

Freshness (``tag.ttl``) and staleness (``tag.max_stale``) are counted from when the proxy
fetched the tag. A fresh copy is served as is. A stale one is served at once while one
refresh runs in the background (stale-while-revalidate), and goes on being served if Google
cannot be reached (stale-if-error) until it is older than ``ttl + max_stale``. Only a cold
cache, or one past that age, makes a request wait for Google.

One fetch per tag at a time: requests in this process share the refresh in flight, and with
Redis a short lock makes replicas share one fetch too; a replica that loses the race waits for
the winner's copy to appear in Redis. The copy in Redis also survives a restart.

Keys come from requests (the id is one of ``measurement_ids``, but ``l``, ``cx`` and ``gtm``
are the client's, within their shapes), so at most ``max_entries`` copies are kept, in memory
and in Redis alike: past it, the least recently fetched copy is forgotten (it is fetched again
if asked for). A site uses a handful; the cap only bites on made-up variants.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import brotli
from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.state.salts import KEY_PREFIX

log = logging.getLogger(__name__)

CACHE_PREFIX = KEY_PREFIX + "tag:"
INDEX_KEY = KEY_PREFIX + "tag-index"  # the copies held in Redis, by when they were written
MAX_ENTRIES = 32  # copies of the tag (~0.6 MB each in three encodings) kept at most
LOCK_PREFIX = KEY_PREFIX + "tag-lock:"
LOCK_SECONDS = 30  # longer than a fetch may take (TagOrigin's timeout)
PEER_WAIT = 0.1  # seconds between looks for another replica's copy
SHARED_CHECK = 1.0  # seconds between looks in Redis for a newer copy than memory's
GZIP_LEVEL = 9
BROTLI_QUALITY = 9  # 11 costs seconds on a 400 KB script for a few more per cent


class TagUnavailable(Exception):
    """No copy to serve: never fetched (or too old) and the origin cannot be reached."""


@dataclass(frozen=True, slots=True)
class TagBody:
    """One tag as served, in each encoding the proxy offers."""

    identity: bytes
    gzip: bytes
    br: bytes
    etag: str  # weak: the same entity whichever encoding carries it
    fetched_at: float  # wall-clock seconds, shared by replicas through Redis

    @classmethod
    def build(cls, text: str, fetched_at: float) -> TagBody:
        data = text.encode()
        digest = hashlib.sha256(data).hexdigest()[:20]
        return cls(
            identity=data,
            gzip=gzip.compress(data, GZIP_LEVEL, mtime=0),
            br=brotli.compress(data, quality=BROTLI_QUALITY),
            etag=f'W/"{digest}"',
            fetched_at=fetched_at,
        )

    def as_fields(self) -> dict[str, bytes]:
        return {
            "identity": self.identity,
            "gzip": self.gzip,
            "br": self.br,
            "etag": self.etag.encode(),
            "fetched_at": repr(self.fetched_at).encode(),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> TagBody | None:
        try:
            return cls(
                identity=fields[b"identity"],
                gzip=fields[b"gzip"],
                br=fields[b"br"],
                etag=fields[b"etag"].decode(),
                fetched_at=float(fields[b"fetched_at"]),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


@dataclass(frozen=True, slots=True)
class Served:
    body: TagBody
    state: str  # fresh | stale


Build = Callable[[str], Awaitable[TagBody]]  # key -> a freshly fetched, rewritten tag


class TagCache:
    """Tags by key (path and allowed query), in memory and optionally in Redis.

    ``build(key)`` fetches and rewrites one tag, raising ``TagUnavailable`` when the origin
    cannot be reached or answers something that is not a tag."""

    def __init__(
        self,
        build: Build,
        *,
        ttl: float,
        max_stale: float,
        redis: Redis | None = None,
        clock: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._build = build
        self._max = max_entries
        self.ttl = ttl
        self.max_stale = max_stale
        self._redis = redis
        self._clock = clock
        self._memory: dict[str, TagBody] = {}
        self._flights: dict[str, asyncio.Task[TagBody]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._checked: dict[str, float] = {}  # key -> when Redis was last asked (monotonic)

    async def get(self, key: str) -> Served:
        """A copy to serve now; waits for the origin only when there is none usable."""
        body = self._memory.get(key)
        if body is None or self._age(body) >= self.ttl:
            shared = await self._newer_shared(key, body)
            if shared is not None:
                body = shared
                self._keep(key, shared)
        if body is not None:
            age = self._age(body)
            if age < self.ttl:
                return Served(body, "fresh")
            if age < self.ttl + self.max_stale:
                self._refresh_in_background(key)
                return Served(body, "stale")
        return Served(await self._refresh(key), "fresh")

    def cached(self, key: str) -> TagBody | None:
        return self._memory.get(key)

    def __len__(self) -> int:
        """Copies held in memory (never more than ``max_entries``)."""
        return len(self._memory)

    def _keep(self, key: str, body: TagBody) -> None:
        """Hold ``body`` as the latest copy of ``key``, forgetting the least recently
        fetched copy when ``max_entries`` are held."""
        memory = self._memory
        memory.pop(key, None)
        while len(memory) >= self._max:
            oldest = next(iter(memory))
            del memory[oldest]
            self._checked.pop(oldest, None)
        memory[key] = body  # last: the first copy is always the least recently fetched

    async def close(self) -> None:
        tasks = [*self._background, *self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _age(self, body: TagBody) -> float:
        return max(0.0, self._clock() - body.fetched_at)

    def _refresh_in_background(self, key: str) -> None:
        if key in self._flights:
            return

        async def refresh() -> None:
            # stale-if-error: when this fails, the copy in hand goes on being served.
            with contextlib.suppress(TagUnavailable):
                await self._refresh(key)

        task = asyncio.create_task(refresh(), name="tag-refresh")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, key: str) -> TagBody:
        """The single flight: every caller in this process awaits the same fetch."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(self._fetch(key), name="tag-fetch")
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        # Shielded: one waiting request that is cancelled (client gone) must not cancel the
        # fetch the others wait for.
        return await asyncio.shield(flight)

    async def _fetch(self, key: str) -> TagBody:
        if self._redis is not None and not await self._lock(key):
            # Another replica is fetching: its copy will appear in Redis.
            body = await self._wait_for_peer(key)
            if body is not None:
                self._keep(key, body)
                return body
        try:
            body = await self._build(key)
            self._keep(key, body)
            # Written before the lock goes: a replica waiting for it reads the copy once the
            # lock is gone, and would fetch again if the copy were not there yet.
            await self._write_shared(key, body)
        finally:
            if self._redis is not None:
                await self._unlock(key)
        return body

    async def _wait_for_peer(self, key: str) -> TagBody | None:
        known = self._memory.get(key)
        deadline = time.monotonic() + LOCK_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(PEER_WAIT)
            shared = await self._read_shared(key, known.fetched_at if known else None)
            if shared is not None:
                return shared
            if not await self._locked(key):
                break  # the other replica gave up: fetch ourselves
        return None

    async def _newer_shared(self, key: str, known: TagBody | None) -> TagBody | None:
        """Another replica's copy when it is newer than ``known``; Redis is asked at most
        once a second per tag, and the body is read only when its date is newer."""
        if self._redis is None:
            return None
        now = time.monotonic()
        if known is not None:  # only keys held in memory are remembered as checked
            if now - self._checked.get(key, -SHARED_CHECK) < SHARED_CHECK:
                return None
            self._checked[key] = now
        return await self._read_shared(key, newer_than=known.fetched_at if known else None)

    async def _read_shared(self, key: str, newer_than: float | None = None) -> TagBody | None:
        if self._redis is None:
            return None
        try:
            if newer_than is not None:
                stamp = await self._redis.hget(CACHE_PREFIX + key, "fetched_at")
                if stamp is None or float(stamp) <= newer_than:
                    return None
            fields = await self._redis.hgetall(CACHE_PREFIX + key)
        except (RedisError, OSError, ValueError):
            return None  # memory (or the origin) serves; Redis is an optimisation here
        return TagBody.from_fields(fields) if fields else None

    async def _write_shared(self, key: str, body: TagBody) -> None:
        if self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(CACHE_PREFIX + key, mapping=body.as_fields())  # type: ignore[arg-type]
                pipe.expire(CACHE_PREFIX + key, int(self.ttl + self.max_stale) + 1)
                pipe.zadd(INDEX_KEY, {key: body.fetched_at})
                pipe.expire(INDEX_KEY, int(self.ttl + self.max_stale) + 1)
                pipe.zcard(INDEX_KEY)
                held = (await pipe.execute())[-1]
            if int(held) > self._max:
                # The least recently fetched copies beyond the cap go, with their index entry.
                evicted: list[tuple[Any, float]] = await self._redis.zpopmin(
                    INDEX_KEY, int(held) - self._max
                )  # type: ignore[assignment]
                names = [CACHE_PREFIX + (k.decode() if isinstance(k, bytes) else str(k))
                         for k, _ in evicted]
                if names:
                    await self._redis.delete(*names)
        except (RedisError, OSError):
            log.warning("tag cache: redis unavailable, kept in memory only")

    async def _lock(self, key: str) -> bool:
        assert self._redis is not None
        try:
            return bool(await self._redis.set(LOCK_PREFIX + key, b"1", nx=True, ex=LOCK_SECONDS))
        except (RedisError, OSError):
            return True  # no shared lock to take: fetch alone rather than not at all

    async def _locked(self, key: str) -> bool:
        assert self._redis is not None
        try:
            return bool(await self._redis.exists(LOCK_PREFIX + key))
        except (RedisError, OSError):
            return False

    async def _unlock(self, key: str) -> None:
        assert self._redis is not None
        with contextlib.suppress(RedisError, OSError):  # else it expires by itself
            await self._redis.delete(LOCK_PREFIX + key)
