"""The tag cache: fresh, stale-while-revalidate, stale-if-error, single flight, in memory and
shared by replicas through a real Redis."""

from __future__ import annotations

import asyncio
import gzip

import brotli
import pytest
from redis.asyncio import Redis

from proxy.tag.cache import (
    CACHE_PREFIX,
    INDEX_KEY,
    LOCK_PREFIX,
    TagBody,
    TagCache,
    TagUnavailable,
)
from tests.redis_server import RedisServer

TTL, MAX_STALE = 60.0, 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Origin:
    """Builds a tag per call (``version`` increments); can fail, or wait to be released."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def build(self, key: str) -> TagBody:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise TagUnavailable("origin down")
        return TagBody.build(f"/* {key} v{self.calls} */", self.clock())


def make(clock: Clock, origin: Origin, redis: Redis | None = None) -> TagCache:
    return TagCache(origin.build, ttl=TTL, max_stale=MAX_STALE, redis=redis, clock=clock)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_fresh_copy_is_served_without_asking_the_origin() -> None:
    clock = Clock()
    origin = Origin(clock)
    cache = make(clock, origin)
    first = await cache.get("k")
    clock.now += TTL - 1
    second = await cache.get("k")
    assert (first.state, second.state) == ("fresh", "fresh")
    assert second.body is first.body
    assert origin.calls == 1


async def test_a_stale_copy_is_served_at_once_and_refreshed_once_in_the_background() -> None:
    clock = Clock()
    origin = Origin(clock)
    cache = make(clock, origin)
    await cache.get("k")
    clock.now += TTL + 1
    origin.gate = asyncio.Event()
    served = [await cache.get("k") for _ in range(5)]
    assert {s.state for s in served} == {"stale"}
    assert all(b"v1" in s.body.identity for s in served)
    await settle()
    assert origin.calls == 2  # one refresh for five stale answers
    origin.gate.set()
    await settle()
    again = await cache.get("k")
    assert again.state == "fresh" and b"v2" in again.body.identity


async def test_stale_if_error_until_max_stale_then_unavailable() -> None:
    clock = Clock()
    origin = Origin(clock)
    cache = make(clock, origin)
    await cache.get("k")
    origin.failing = True
    clock.now += TTL + MAX_STALE - 1
    served = await cache.get("k")
    await settle()  # the background refresh fails; the stale copy stays
    assert served.state == "stale"
    assert (await cache.get("k")).state == "stale"
    clock.now += 2
    with pytest.raises(TagUnavailable):
        await cache.get("k")


async def test_a_cold_cache_with_the_origin_down_is_unavailable() -> None:
    clock = Clock()
    origin = Origin(clock)
    origin.failing = True
    with pytest.raises(TagUnavailable):
        await make(clock, origin).get("k")


async def test_concurrent_requests_on_a_cold_cache_share_one_fetch() -> None:
    clock = Clock()
    origin = Origin(clock)
    origin.gate = asyncio.Event()
    cache = make(clock, origin)
    waiting = [asyncio.create_task(cache.get("k")) for _ in range(20)]
    await settle()
    origin.gate.set()
    served = await asyncio.gather(*waiting)
    assert origin.calls == 1
    assert len({id(s.body) for s in served}) == 1


async def test_a_cancelled_request_does_not_cancel_the_fetch_others_wait_for() -> None:
    clock = Clock()
    origin = Origin(clock)
    origin.gate = asyncio.Event()
    cache = make(clock, origin)
    first = asyncio.create_task(cache.get("k"))
    second = asyncio.create_task(cache.get("k"))
    await settle()
    first.cancel()
    origin.gate.set()
    assert (await second).state == "fresh"
    assert origin.calls == 1


def test_each_encoding_carries_the_same_script() -> None:
    body = TagBody.build("console.log('tag')" * 100, 0.0)
    assert gzip.decompress(body.gzip) == body.identity
    assert brotli.decompress(body.br) == body.identity
    assert body.etag.startswith('W/"')


async def test_replicas_on_one_redis_fetch_once_and_share_the_copy(redis_url: str) -> None:
    clock = Clock()
    origin = Origin(clock)
    origin.gate = asyncio.Event()
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    try:
        replicas = [make(clock, origin, client) for client in clients]
        waiting = [asyncio.create_task(r.get("k")) for r in replicas for _ in range(5)]
        await asyncio.sleep(0.05)
        origin.gate.set()
        served = await asyncio.gather(*waiting)
        assert origin.calls == 1
        assert len({s.body.identity for s in served}) == 1
        # A restarted replica (empty memory) serves the shared copy without fetching.
        restarted = make(clock, origin, clients[0])
        assert (await restarted.get("k")).body.identity == served[0].body.identity
        assert origin.calls == 1
    finally:
        for client in clients:
            await client.aclose()


async def test_the_shared_copy_is_in_redis_before_the_lock_is_released(redis_url: str) -> None:
    # A replica waiting for the lock's holder fetches itself once the lock is gone and no
    # copy is there: the order in which Redis executed the commands (MONITOR) shows it.
    clock = Clock()
    client, watcher = Redis.from_url(redis_url), Redis.from_url(redis_url)
    executed: list[str] = []
    try:
        async with watcher.monitor() as monitor:
            async def watch() -> None:
                while True:
                    executed.append((await monitor.next_command())["command"])

            watching = asyncio.create_task(watch())
            await make(clock, Origin(clock), client).get("k")
            await client.ping()  # the last command: everything before it was executed
            for _ in range(200):
                if executed and executed[-1] == "PING":
                    break
                await asyncio.sleep(0.01)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    finally:
        await client.aclose()
        await watcher.aclose()
    written = next(i for i, c in enumerate(executed) if c.startswith(f"HSET {CACHE_PREFIX}k "))
    released = next(i for i, c in enumerate(executed) if c == f"DEL {LOCK_PREFIX}k")
    assert written < released


async def test_a_refresh_by_one_replica_reaches_the_others(redis_url: str) -> None:
    clock = Clock()
    origin = Origin(clock)
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    try:
        one, two = (make(clock, origin, client) for client in clients)
        await one.get("k")
        await two.get("k")  # from Redis
        assert origin.calls == 1
        clock.now += TTL + 1
        await one.get("k")  # stale: one refreshes in the background
        await asyncio.sleep(0.05)
        assert origin.calls == 2
        await asyncio.sleep(1.1)  # past the once-a-second look in Redis
        served = await two.get("k")
        assert b"v2" in served.body.identity and served.state == "fresh"
        assert origin.calls == 2
    finally:
        for client in clients:
            await client.aclose()


async def test_an_unreachable_redis_leaves_memory_and_the_origin_serving(
    own_redis: RedisServer,
) -> None:
    clock = Clock()
    origin = Origin(clock)
    client = Redis.from_url(own_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        cache = make(clock, origin, client)
        own_redis.stop()
        assert (await cache.get("k")).state == "fresh"
        assert (await cache.get("k")).state == "fresh"
        assert origin.calls == 1
    finally:
        await client.aclose()


async def test_made_up_variants_never_hold_more_than_max_entries_copies(redis_url: str) -> None:
    """Keys carry the client's ``l``/``cx``/``gtm``: 3x the cap of distinct variants leaves
    at most the cap in memory and in Redis; the newest stay, an evicted one is fetched
    again when asked for."""
    clock = Clock()
    origin = Origin(clock)
    client = Redis.from_url(redis_url)
    try:
        cache = TagCache(origin.build, ttl=TTL, max_stale=MAX_STALE, redis=client, clock=clock,
                         max_entries=8)
        keys = [f"/gtag/js?id=G-TEST1234&gtm=v{n}" for n in range(24)]
        for key in keys:
            clock.now += 1
            await cache.get(key)
        assert len(cache) == 8
        assert [k for k in keys if cache.cached(k)] == keys[-8:]
        assert len(cache._checked) <= 8
        stored = [k async for k in client.scan_iter(match=CACHE_PREFIX + "*")]
        assert len(stored) == 8
        assert await client.zcard(INDEX_KEY) == 8
        calls = origin.calls
        assert b"gtm=v0" in (await cache.get(keys[0])).body.identity
        assert origin.calls == calls + 1
        assert len(cache) == 8
    finally:
        await client.aclose()


async def test_max_entries_holds_without_redis() -> None:
    clock = Clock()
    origin = Origin(clock)
    cache = TagCache(origin.build, ttl=TTL, max_stale=MAX_STALE, clock=clock, max_entries=4)
    for n in range(50):
        await cache.get(f"k{n}")
    assert len(cache) == 4
    assert (await cache.get("k49")).state == "fresh" and origin.calls == 50
