"""Rate limiting: the sliding-window rule in-process, deltas and pruning, and sharing over a
real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest
import redis.asyncio as aioredis

from proxy.state.ratelimit import (
    BUCKETS,
    KEY_PREFIX,
    Counts,
    MemoryCounters,
    RateLimiter,
    RedisCounters,
    WindowCounts,
)
from tests.redis_server import RedisServer

SALT = b"s" * 32
WINDOW = 60


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recording:
    """A memory store that keeps what each sync sent."""

    def __init__(self) -> None:
        self.store = MemoryCounters()
        self.sent: list[dict[int, dict[str, int]]] = []

    async def add(self, increments: WindowCounts, ttl: int) -> dict[int, Counts]:
        self.sent.append({w: dict(c) for w, c in increments.items()})
        return await self.store.add(increments, ttl)


def key(n: int) -> str:
    return RateLimiter.network_key(f"{10 + n // 65536}.{n // 256 % 256}.{n % 256}.0", SALT)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_beacons_over_the_limit_are_refused_until_the_window_slides() -> None:
    clock = Clock(1_000_020.0)  # window 1_000_020 // 60, at its start
    limiter = RateLimiter(limit=5, window=60, store=MemoryCounters(), clock=clock)
    net = RateLimiter.network_key("203.0.113.0", SALT)
    assert [limiter.allow(net) for _ in range(7)] == [True] * 5 + [False] * 2
    await limiter.sync()
    clock.now += 90  # half-way through the next window: the five weigh 2.5
    assert [limiter.allow(net) for _ in range(4)] == [True, True, True, False]
    clock.now += 120  # both windows gone
    assert limiter.allow(net)


@pytest.mark.parametrize("store", [None, MemoryCounters()], ids=["no store", "memory store"])
async def test_one_process_limits_the_same_with_or_without_a_store(
    store: MemoryCounters | None,
) -> None:
    clock = Clock(1_000_020.0)
    limiter = RateLimiter(limit=3, window=60, store=store, clock=clock)
    net = key(1)
    assert [limiter.allow(net) for _ in range(4)] == [True, True, True, False]
    await limiter.sync()
    assert not limiter.allow(net)


async def test_networks_are_counted_apart() -> None:
    limiter = RateLimiter(limit=1, window=60, store=MemoryCounters(), clock=Clock(600.0))
    a, b = (RateLimiter.network_key(n, SALT) for n in ("203.0.113.0", "198.51.100.0"))
    assert limiter.allow(a) and limiter.allow(b)
    assert not limiter.allow(a)


def test_network_key_is_a_salted_hash_not_the_address() -> None:
    net = RateLimiter.network_key("203.0.113.0", SALT)
    assert "203" not in net and net != RateLimiter.network_key("203.0.113.0", b"t" * 32)


async def test_a_sync_sends_only_the_networks_counted_since_the_last_one() -> None:
    clock = Clock(6_000.0)
    store = Recording()
    limiter = RateLimiter(limit=100, window=WINDOW, store=store, clock=clock)
    for n in range(1000):
        limiter.allow(key(n))
    await limiter.sync()
    assert sum(len(c) for c in store.sent[-1].values()) == 1000
    for _ in range(5):  # nothing arrived: nothing is sent, however many networks are known
        clock.now += 0.5
        await limiter.sync()
    assert len(store.sent) == 1
    limiter.allow(key(7))
    limiter.allow(key(7))
    await limiter.sync()
    assert store.sent[-1] == {6_000 // WINDOW: {key(7): 2}}


async def test_windows_that_ended_are_dropped_even_when_no_beacon_comes() -> None:
    clock = Clock(6_000.0)
    store = MemoryCounters()
    limiter = RateLimiter(limit=100, window=WINDOW, store=store, clock=clock)
    for n in range(500):
        limiter.allow(key(n))
    await limiter.sync()
    assert limiter.tracked() == 500
    clock.now += WINDOW  # the window is now the previous one: it still weighs
    await limiter.sync()
    assert limiter.tracked() == 500
    clock.now += WINDOW  # now it can no longer weigh on any beacon
    await limiter.sync()
    assert limiter.tracked() == 0


@pytest.mark.parametrize("with_store", [False, True], ids=["as serve builds it", "memory store"])
async def test_memory_stays_flat_with_100k_distinct_networks(with_store: bool) -> None:
    """100,000 networks, 10,000 per window: what is held never exceeds two windows' worth,
    in the limiter and in the store, however many windows go by."""
    clock = Clock(6_000.0)
    store = MemoryCounters() if with_store else None
    limiter = RateLimiter(limit=100, window=WINDOW, store=store, clock=clock)
    per_window, networks = 10_000, 100_000
    held = []
    for n in range(networks):
        clock.now = 6_000.0 + WINDOW * (n // per_window) + (n % per_window) * WINDOW / per_window
        assert limiter.allow(key(n))
        if n % 500 == 499:
            await limiter.sync()
            held.append(limiter.tracked() + (store.held() if store else 0))
    bound = 2 * per_window * (2 if with_store else 1)
    assert max(held) <= bound
    assert held[-1] >= per_window  # still counting: nothing dropped too early


async def test_redis_down_keeps_counting_locally_and_catches_up() -> None:
    class Down:
        calls = 0

        async def add(self, increments: WindowCounts, ttl: int) -> dict[int, Counts]:
            Down.calls += 1
            raise ConnectionError("down")

    limiter = RateLimiter(limit=3, window=60, store=Down(), clock=Clock(600.0))
    net = RateLimiter.network_key("203.0.113.0", SALT)
    assert all(limiter.allow(net) for _ in range(3))
    await limiter.sync()
    assert not limiter.allow(net)  # the unsynced local counts still apply
    assert Down.calls == 1


async def test_while_redis_is_down_unsent_counts_are_kept_for_two_windows_at_most() -> None:
    class Down:
        async def add(self, increments: WindowCounts, ttl: int) -> dict[int, Counts]:
            raise ConnectionError("down")

    clock = Clock(6_000.0)
    limiter = RateLimiter(limit=100, window=WINDOW, store=Down(), clock=clock)
    for minute in range(10):
        for n in range(200):
            clock.now = 6_000.0 + minute * WINDOW + n * 0.1
            limiter.allow(key(minute * 200 + n))
            if n % 50 == 0:
                await limiter.sync()
        # Counts of the current and the previous window, waiting to be sent, and known.
        assert limiter.tracked() <= 2 * (2 * 200)


async def test_a_catch_up_never_lowers_a_count_known_here() -> None:
    """A Redis that lost its counts (restarted without persistence) answers small totals:
    what this replica counted still stands."""
    clock = Clock(6_000.0)
    store = MemoryCounters()
    limiter = RateLimiter(limit=5, window=WINDOW, store=store, clock=clock)
    net = key(3)
    assert all(limiter.allow(net) for _ in range(5))
    await limiter.sync()
    limiter._store = MemoryCounters()  # an empty store: the counts are gone
    await limiter.sync()
    assert not limiter.allow(net)


async def test_a_clock_that_steps_back_counts_in_the_newest_window() -> None:
    clock = Clock(6_030.0)
    limiter = RateLimiter(limit=2, window=WINDOW, clock=clock)
    net = key(4)
    assert limiter.allow(net)
    clock.now -= 2 * WINDOW  # NTP stepped the clock back
    assert limiter.allow(net)
    assert not limiter.allow(net)


async def test_two_replicas_share_counts_through_redis(client: aioredis.Redis) -> None:
    clock = Clock(6_000.0)
    replicas = [RateLimiter(limit=6, window=60, store=RedisCounters(client), clock=clock)
                for _ in range(2)]
    net = RateLimiter.network_key("203.0.113.0", SALT)
    for replica in replicas:
        assert all(replica.allow(net) for _ in range(3))
        await replica.sync()
    # The first replica learns the other's three with its next beacon's sync.
    assert replicas[0].allow(net)
    await replicas[0].sync()
    assert not replicas[0].allow(net)
    stored = [k async for k in client.scan_iter(match=KEY_PREFIX + "*")]
    assert stored and all(b"203.0.113" not in k for k in stored)
    ttls = [await client.ttl(k) for k in stored]
    assert all(0 < ttl <= 125 for ttl in ttls)


async def test_a_network_busy_at_another_replica_is_refused_within_one_sync(
    client: aioredis.Redis,
) -> None:
    clock = Clock(6_000.0)
    a, b = (RateLimiter(limit=10, window=60, store=RedisCounters(client), clock=clock)
            for _ in range(2))
    net = key(9)
    assert a.allow(net)
    await a.sync()
    assert all(b.allow(net) for _ in range(9))
    await b.sync()
    # a holds an old total (1): its next beacon is allowed and brings the shared total back.
    assert a.allow(net)
    await a.sync()
    assert not a.allow(net)


async def test_redis_keys_are_per_window_and_bucket_not_per_network(
    client: aioredis.Redis,
) -> None:
    clock = Clock(6_000.0)
    limiter = RateLimiter(limit=100, window=WINDOW, store=RedisCounters(client), clock=clock)
    for window in range(3):
        clock.now = 6_000.0 + window * WINDOW
        for n in range(2000):
            limiter.allow(key(window * 2000 + n))
        await limiter.sync()
    stored = [k async for k in client.scan_iter(match=KEY_PREFIX + "*")]
    assert len(stored) <= 3 * BUCKETS  # 6,000 networks in 3 windows
    ttls = [await client.ttl(k) for k in stored]
    assert all(0 < ttl <= 2 * WINDOW + 5 for ttl in ttls)
    counted = 0
    for k in stored:
        counted += sum(int(v) for v in (await client.hgetall(k)).values())
    assert counted == 6000


async def test_redis_commands_follow_the_beacons_not_the_networks(
    own_redis: RedisServer,
) -> None:
    """10,000 networks known: a sync with nothing new sends no command at all; one beacon
    costs one HINCRBY and one EXPIRE. (A Redis of its own: the command counts are global.)"""
    c = aioredis.from_url(own_redis.url)
    try:
        clock = Clock(6_000.0)
        limiter = RateLimiter(limit=100, window=WINDOW, store=RedisCounters(c), clock=clock)
        for n in range(10_000):
            limiter.allow(key(n))
        await limiter.sync()
        await c.config_resetstat()
        for _ in range(10):
            clock.now += 0.5
            await limiter.sync()
        assert await counts(c) == {}
        limiter.allow(key(5))
        await limiter.sync()
        assert await counts(c) == {"hincrby": 1, "expire": 1}
    finally:
        await c.aclose()


async def counts(c: aioredis.Redis) -> Mapping[str, int]:
    stats = await c.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()
            if name not in ("cmdstat_info", "cmdstat_config")}


async def test_a_large_catch_up_goes_out_in_batches_and_adds_up(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxy.state.ratelimit.BATCH", 7)
    clock = Clock(6_000.0)
    limiter = RateLimiter(limit=3, window=WINDOW, store=RedisCounters(client), clock=clock)
    other = RateLimiter(limit=3, window=WINDOW, store=RedisCounters(client), clock=clock)
    for n in range(50):
        assert limiter.allow(key(n))
        assert other.allow(key(n)) and other.allow(key(n))
    await limiter.sync()
    await other.sync()
    assert not any(other.allow(key(n)) for n in range(50))  # 1 + 2 of 3, shared
