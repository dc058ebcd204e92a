"""The Pseudonymizer's caching, rotation, fallback and recovery, with an injected clock."""

from __future__ import annotations

import asyncio
import secrets
from itertools import pairwise

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.observe.metrics import Metrics
from proxy.state.pseudonym import CLOCK_SKEW, RETRY_INITIAL, RETRY_MAX, Pseudonymizer, WindowKey
from proxy.state.salts import SALT_BYTES, MemoryState

ROTATION = 3600
T0 = 1_700_000_000 // ROTATION * ROTATION  # a window start
TID, CID = "G-18JR3Q8PJ8", "1874137241.1685438100"


class RecordingStore:
    """A shared store standing in for Redis in pure-logic tests: counts calls, can fail."""

    source = "redis"

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.down = False
        self.salts: dict[int, bytes] = {}

    async def salt_for(self, window: int, ttl: float) -> bytes:
        self.calls.append((window, ttl))
        if self.down:
            raise RedisConnectionError("unreachable")
        return self.salts.setdefault(window, secrets.token_bytes(SALT_BYTES))

    async def ping(self) -> bool:
        return not self.down

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(store: RecordingStore | MemoryState, clock: Clock, **kwargs: object) -> Pseudonymizer:
    return Pseudonymizer(store, bits=32, rotation=ROTATION, clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_within_a_window_the_cached_key_means_no_store_call() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    p = make(store, clock)
    first = await p.current()
    for step in range(100):
        clock.now = T0 + 10 + step * 30
        assert await p.current() is first
    assert [w for w, _ in store.calls] == [T0 // ROTATION]
    assert first.source == "redis"


async def test_the_salt_lives_until_its_window_ends_plus_the_skew_margin() -> None:
    store = RecordingStore()
    await make(store, Clock(T0 + 100)).current()
    assert store.calls == [(T0 // ROTATION, ROTATION - 100 + CLOCK_SKEW)]


async def test_a_new_window_asks_the_store_and_changes_the_pseudonym() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    p = make(store, clock)
    key = await p.current()
    before = p.pseudonym(key, TID, CID)
    clock.now = T0 + ROTATION
    rotated = await p.current()
    assert rotated.window == key.window + 1 and rotated.start == T0 + ROTATION
    assert p.pseudonym(rotated, TID, CID) != before
    assert [w for w, _ in store.calls] == [key.window, key.window + 1]


async def test_replicas_on_one_store_give_the_same_pseudonym() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    a, b = make(store, clock), make(store, clock)
    assert a.pseudonym(await a.current(), TID, CID) == b.pseudonym(await b.current(), TID, CID)


async def test_beacons_arriving_together_at_a_boundary_share_one_store_call() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    p = make(store, clock)
    keys = await asyncio.gather(*(p.current() for _ in range(50)))
    assert len({k.salt for k in keys}) == 1
    assert len(store.calls) == 1


async def test_an_unreachable_store_means_a_local_salt_not_a_failure() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    store.down = True
    p = make(store, clock)
    key = await p.current()
    assert key.source == "local" and len(key.salt) == SALT_BYTES
    assert p.salt_source == "local"
    assert p.pseudonym(key, TID, CID) != CID


class Hanging(RecordingStore):
    async def salt_for(self, window: int, ttl: float) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_store_that_never_answers_is_abandoned_at_the_deadline() -> None:
    p = make(Hanging(), Clock(T0 + 10), deadline=0.01)
    assert (await p.current()).source == "local"


async def test_while_local_the_store_is_retried_with_backoff_not_per_beacon() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    store.down = True
    p = make(store, clock)
    await p.current()
    for _ in range(100):  # a burst of beacons at the same moment
        await p.current()
    await p.idle()
    assert len(store.calls) == 1
    # One beacon per second for five minutes: retries spread out as the backoff doubles.
    for _ in range(300):
        clock.now += 1
        await p.current()
        await p.idle()
    # The ttl asked for shrinks by the time that passed: it dates each attempt.
    attempts = [-ttl for _, ttl in store.calls]
    gaps = [b - a for a, b in pairwise(attempts)]
    assert gaps == sorted(gaps) and gaps[0] == RETRY_INITIAL and max(gaps) == RETRY_MAX
    assert len(store.calls) < 30
    assert (await p.current()).source == "local"


async def test_the_shared_salt_replaces_the_local_one_when_the_store_answers() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    store.down = True
    p = make(store, clock)
    local = await p.current()
    store.down = False
    clock.now += RETRY_INITIAL
    assert await p.current() is local  # the beacon does not wait for the retry
    await p.idle()
    shared = await p.current()
    assert shared.source == "redis" and shared.salt == store.salts[local.window]
    assert p.pseudonym(shared, TID, CID) != p.pseudonym(local, TID, CID)
    other = make(store, clock)
    assert p.pseudonym(shared, TID, CID) == other.pseudonym(await other.current(), TID, CID)


async def test_after_recovery_the_next_window_asks_the_store_again() -> None:
    store, clock = RecordingStore(), Clock(T0 + ROTATION - 5)
    store.down = True
    p = make(store, clock)
    await p.current()
    store.down = False
    clock.now += RETRY_INITIAL
    await p.current()
    await p.idle()
    clock.now = T0 + ROTATION  # sooner than the backoff the failure had set
    key = await p.current()
    assert key.source == "redis" and key.window == T0 // ROTATION + 1


async def test_a_rotation_soon_after_a_failure_goes_local_without_waiting_on_the_store() -> None:
    store, clock = RecordingStore(), Clock(T0 + ROTATION - 1)
    store.down = True
    p = make(store, clock)
    await p.current()
    clock.now = T0 + ROTATION  # a new window, one second after the failure
    key = await p.current()
    assert key.source == "local" and key.window == T0 // ROTATION + 1
    assert len(store.calls) == 1


async def test_the_next_salt_is_fetched_before_the_boundary() -> None:
    store, clock = RecordingStore(), Clock(T0 + ROTATION - 10)
    p = make(store, clock, prefetch=30)
    await p.current()
    await p.current()  # within the prefetch lead: the next salt is fetched in the background
    await p.idle()
    assert len(store.calls) == 2
    clock.now = T0 + ROTATION
    calls = len(store.calls)
    key = await p.current()
    assert len(store.calls) == calls  # the boundary beacon waited on nothing
    assert key.window == T0 // ROTATION + 1 and key.salt == store.salts[key.window]


async def test_a_memory_store_is_never_asked_ahead() -> None:
    state, clock = MemoryState(), Clock(T0 + ROTATION - 1)
    p = make(state, clock)
    for _ in range(3):
        await p.current()
    await p.idle()
    assert state.windows() == [T0 // ROTATION]
    assert (await p.current()).source == "memory"


async def test_key_changes_reach_the_hook_once_each() -> None:
    store, clock = RecordingStore(), Clock(T0 + 10)
    seen: list[WindowKey] = []
    p = make(store, clock, on_key=seen.append)
    for _ in range(10):
        await p.current()
    store.down = True
    clock.now = T0 + ROTATION
    await p.current()
    assert [k.source for k in seen] == ["redis", "local"]


async def test_metrics_show_the_salt_source_and_age() -> None:
    store, clock, metrics = RecordingStore(), Clock(T0 + 90), Metrics()
    p = make(store, clock, on_key=metrics.observe_salt)
    metrics.sample(metrics.salt_age, p.salt_age)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(f"analytics_proxy_{name}", labels)

    assert sample("salt_source", source="redis") == 0
    await p.current()
    assert sample("salt_age_seconds") == 90
    assert [sample("salt_source", source=s) for s in ("memory", "redis", "local")] == [0, 1, 0]
    store.down = True
    clock.now = T0 + ROTATION + 5
    await p.current()
    assert sample("salt_age_seconds") == 5
    assert [sample("salt_source", source=s) for s in ("memory", "redis", "local")] == [0, 0, 1]
    assert b'analytics_proxy_salt_source{source="local"} 1.0' in metrics.exposition()


class FailsThenHangs(RecordingStore):
    async def salt_for(self, window: int, ttl: float) -> bytes:
        self.calls.append((window, ttl))
        if len(self.calls) == 1:
            raise RedisConnectionError("unreachable")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_close_stops_a_background_retry() -> None:
    store, clock = FailsThenHangs(), Clock(T0 + 10)
    p = make(store, clock, deadline=60)
    assert (await p.current()).source == "local"
    clock.now += RETRY_INITIAL
    await p.current()  # starts the retry, which hangs
    for _ in range(10):  # let the background task reach the store
        if len(store.calls) == 2:
            break
        await asyncio.sleep(0)
    assert len(store.calls) == 2
    await asyncio.wait_for(p.close(), 5)
    assert p.salt_source is None


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
async def test_pseudonym_has_gas_shape_and_the_configured_bits(bits: int) -> None:
    p = Pseudonymizer(MemoryState(), bits=bits, rotation=ROTATION, clock=Clock(T0 + 1))
    number, start = p.pseudonym(await p.current(), TID, CID).split(".")
    assert 0 <= int(number) < 2**bits and int(start) == T0
