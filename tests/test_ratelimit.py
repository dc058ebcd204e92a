"""Rate limiting: the sliding-window rule in-process, and sharing over a real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from proxy.ratelimit import KEY_PREFIX, MemoryCounters, RateLimiter, RedisCounters

SALT = b"s" * 32


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_beacons_over_the_limit_are_refused_until_the_window_slides() -> None:
    clock = Clock(1_000_020.0)  # window 1_000_020 // 60, at its start
    limiter = RateLimiter(limit=5, window=60, store=MemoryCounters(), clock=clock)
    key = RateLimiter.network_key("203.0.113.0", SALT)
    assert [limiter.allow(key) for _ in range(7)] == [True] * 5 + [False] * 2
    await limiter.sync()
    clock.now += 90  # half-way through the next window: the five weigh 2.5
    assert [limiter.allow(key) for _ in range(4)] == [True, True, True, False]
    clock.now += 120  # both windows gone
    assert limiter.allow(key)


async def test_networks_are_counted_apart() -> None:
    limiter = RateLimiter(limit=1, window=60, store=MemoryCounters(), clock=Clock(600.0))
    a, b = (RateLimiter.network_key(n, SALT) for n in ("203.0.113.0", "198.51.100.0"))
    assert limiter.allow(a) and limiter.allow(b)
    assert not limiter.allow(a)


def test_network_key_is_a_salted_hash_not_the_address() -> None:
    key = RateLimiter.network_key("203.0.113.0", SALT)
    assert "203" not in key and key != RateLimiter.network_key("203.0.113.0", b"t" * 32)


async def test_two_replicas_share_counts_through_redis(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        clock = Clock(6_000.0)
        replicas = [RateLimiter(limit=6, window=60, store=RedisCounters(client), clock=clock)
                    for _ in range(2)]
        key = RateLimiter.network_key("203.0.113.0", SALT)
        for replica in replicas:
            assert all(replica.allow(key) for _ in range(3))
            await replica.sync()
        await replicas[0].sync()  # sees the other replica's three
        assert not replicas[0].allow(key)
        stored = [k async for k in client.scan_iter(match=KEY_PREFIX + "*")]
        assert stored and all(b"203.0.113" not in k for k in stored)
        ttls = [await client.ttl(k) for k in stored]
        assert all(0 < ttl <= 125 for ttl in ttls)
    finally:
        await client.aclose()


async def test_redis_down_keeps_counting_locally_and_catches_up() -> None:
    class Down:
        calls = 0

        async def add(self, increments: object, ttl: int) -> dict[str, int]:
            Down.calls += 1
            raise ConnectionError("down")

    limiter = RateLimiter(limit=3, window=60, store=Down(), clock=Clock(600.0))
    key = RateLimiter.network_key("203.0.113.0", SALT)
    assert all(limiter.allow(key) for _ in range(3))
    await limiter.sync()
    assert not limiter.allow(key)  # the unsynced local counts still apply
    assert Down.calls == 1


async def test_memory_is_bounded_to_two_windows() -> None:
    clock = Clock(600.0)
    limiter = RateLimiter(limit=100, window=60, store=MemoryCounters(), clock=clock)
    for minute in range(10):
        clock.now = 600.0 + 60 * minute
        for n in range(20):
            limiter.allow(RateLimiter.network_key(f"10.0.{n}.0", SALT))
        await limiter.sync()
    assert limiter.tracked() <= 2 * 20
