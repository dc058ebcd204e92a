"""The outbox against a real Redis (and its in-memory form): at-least-once delivery with
acknowledgement after Google's answer, take-over of a dead consumer's entries, age limit,
cap, and an unreachable Redis."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.delivery.outbound import OutboundRequest
from proxy.delivery.outbox import MemorySpill
from proxy.delivery.redis_outbox import STREAM_KEY, RedisSpill
from proxy.observe.metrics import Metrics
from proxy.server.wiring import make_redis
from tests.redis_server import RedisServer

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}
GROUP = "forwarders"


def request(marker: int) -> OutboundRequest:
    query = f"v=2&tid=G-TEST1234&cid=1.2&_p={marker}"
    return OutboundRequest(query=query, body="en=page_view", user_agent="Mozilla/5.0")


def marker(req: OutboundRequest) -> int:
    return int(req.query.rpartition("_p=")[2])


class Google:
    """A ``deliver`` function: records what it was given; ``up`` decides the answer."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.calls: list[int] = []
        self.delivered: list[int] = []
        self.hang: asyncio.Event | None = None  # when set, calls wait for it (a stuck send)

    async def __call__(self, req: OutboundRequest) -> bool:
        self.calls.append(marker(req))
        if self.hang is not None:
            await self.hang.wait()
        if self.up:
            self.delivered.append(marker(req))
        return self.up


async def until(condition: Callable[[], bool], rounds: int = 500) -> None:
    """Bounded wait for ``condition`` (a liveness bound, not a speed assertion)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def until_async(condition: Callable[[], Any], rounds: int = 500) -> None:
    for _ in range(rounds):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = make_redis(redis_url)
    yield redis
    await redis.aclose()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def pending(client: Redis) -> int:
    return int((await client.xpending(STREAM_KEY, GROUP))["pending"])


async def test_entries_are_delivered_once_then_removed(client: Redis) -> None:
    metrics = Metrics()
    spill = RedisSpill(client, stream_maxlen=1000, metrics=metrics, **FAST)
    for i in range(20):
        assert await spill.put(request(i), time.time())
    assert await spill.depth() == 20
    google = Google()
    task = asyncio.create_task(spill.run(google))
    try:
        await until(lambda: len(google.delivered) == 20)
        await until_async(lambda: _is(spill.depth(), 0))
    finally:
        await stop(task)
    assert sorted(google.delivered) == list(range(20))
    assert await client.xlen(STREAM_KEY) == 0
    assert await pending(client) == 0
    assert metrics.registry.get_sample_value("analytics_proxy_outbox_delivered_total") == 20


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_entry_is_acknowledged_only_after_google_answered(client: Redis) -> None:
    spill = RedisSpill(client, stream_maxlen=1000, **FAST)
    await spill.put(request(7), time.time())
    google = Google(up=False)
    task = asyncio.create_task(spill.run(google))
    try:
        await until(lambda: len(google.calls) >= 2)  # failed, then retried after a backoff
        assert await pending(client) == 1  # read, not acknowledged
        assert await client.xlen(STREAM_KEY) == 1
        google.up = True
        await until(lambda: google.delivered == [7])
        await until_async(lambda: _is(pending(client), 0))
    finally:
        await stop(task)
    assert await client.xlen(STREAM_KEY) == 0


async def test_a_dead_consumers_entries_are_claimed_by_another(client: Redis) -> None:
    stuck = Google()
    stuck.hang = asyncio.Event()  # sends that never finish: the replica then "dies"
    first = RedisSpill(client, stream_maxlen=1000, consumer="first", **FAST)
    for i in range(5):
        await first.put(request(i), time.time())
    task = asyncio.create_task(first.run(stuck))
    await until(lambda: len(stuck.calls) == 5)
    await stop(task)
    assert await pending(client) == 5
    assert stuck.delivered == []

    metrics = Metrics()
    second = RedisSpill(
        client, stream_maxlen=1000, claim_idle=0.2, consumer="second", metrics=metrics, **FAST
    )
    google = Google()
    task = asyncio.create_task(second.run(google))
    try:
        await until(lambda: len(google.delivered) == 5)
        await until_async(lambda: _is(pending(client), 0))
    finally:
        await stop(task)
    assert sorted(google.delivered) == list(range(5))
    assert metrics.registry.get_sample_value("analytics_proxy_outbox_claimed_total") == 5
    assert await client.xlen(STREAM_KEY) == 0


async def test_entries_older_than_max_age_are_discarded_and_counted(client: Redis) -> None:
    metrics = Metrics()
    spill = RedisSpill(client, stream_maxlen=1000, max_age=60, metrics=metrics, **FAST)
    await spill.put(request(1), time.time() - 3600)
    await spill.put(request(2), time.time())
    google = Google()
    task = asyncio.create_task(spill.run(google))
    try:
        await until(lambda: google.delivered == [2])
        await until_async(lambda: _is(spill.depth(), 0))
    finally:
        await stop(task)
    assert google.calls == [2]  # the stale one never reaches Google
    assert metrics.registry.get_sample_value("analytics_proxy_beacons_expired_total") == 1


async def test_stream_length_is_capped_approximately_and_trimming_is_counted(
    client: Redis,
) -> None:
    metrics = Metrics()
    spill = RedisSpill(client, stream_maxlen=100, metrics=metrics)
    for i in range(1000):
        assert await spill.put(request(i), time.time())
    length = int(await client.xlen(STREAM_KEY))
    # MAXLEN ~ trims whole internal nodes (100 entries by default): the cap is approximate.
    assert 100 <= length <= 300
    trimmed = metrics.registry.get_sample_value("analytics_proxy_outbox_trimmed_total")
    assert trimmed == 1000 - length


async def test_many_entries_are_added_in_chunks(client: Redis) -> None:
    spill = RedisSpill(client, stream_maxlen=10_000)
    assert await spill.put_many([(request(i), time.time()) for i in range(1200)]) == 1200
    assert await client.xlen(STREAM_KEY) == 1200


async def test_unreachable_redis_falls_back_to_bounded_memory_then_moves_back(
    own_redis: RedisServer
) -> None:
    redis_url = own_redis.url
    client = make_redis(redis_url)
    spill = RedisSpill(client, stream_maxlen=1000, memory_size=3, **FAST)
    google = Google(up=False)
    task = asyncio.create_task(spill.run(google))
    try:
        await until(lambda: spill.available)
        own_redis.stop()
        try:
            held = [await spill.put(request(i), time.time()) for i in range(4)]
            assert held == [True, True, True, False]  # memory is bounded too
            assert not spill.available and not spill.durable
            assert await spill.depth() == 3
        finally:
            own_redis.start()
        await until(lambda: spill.available, rounds=1000)  # reconnected with backoff
        await until_async(lambda: _is(client.xlen(STREAM_KEY), 3))  # moved to the stream
        assert spill.durable
        google.up = True
        await until(lambda: len(google.delivered) == 3)
        await until_async(lambda: _is(spill.depth(), 0))
    finally:
        await stop(task)
        await client.aclose()
    assert sorted(google.delivered) == [0, 1, 2]


async def test_close_forgets_the_consumer_only_without_pending_entries(client: Redis) -> None:
    spill = RedisSpill(client, stream_maxlen=1000, consumer="leaving", **FAST)
    await spill.put(request(1), time.time())
    google = Google()
    task = asyncio.create_task(spill.run(google))
    await until(lambda: google.delivered == [1])
    await until_async(lambda: _is(pending(client), 0))
    await stop(task)
    assert await spill.close() == 0
    consumers = await client.xinfo_consumers(STREAM_KEY, GROUP)
    assert [c["name"] for c in consumers] == []


async def test_only_the_primary_worker_reports_the_shared_stream(client: Redis) -> None:
    """With --workers, outbox_depth adds up the workers: the stream once (worker 0),
    and each worker's memory."""
    shared = RedisSpill(client, stream_maxlen=1000, **FAST)
    for i in range(5):
        await shared.put(request(i), time.time())
    assert shared.shared
    assert await shared.depth() == 5
    assert await shared.depth(include_shared=False) == 0
    memory = MemorySpill(10)
    await memory.put(request(9), time.time())
    assert not memory.shared
    assert await memory.depth(include_shared=False) == await memory.depth() == 1


async def test_memory_spill_is_bounded() -> None:
    spill = MemorySpill(3)
    assert [await spill.put(request(i), time.time()) for i in range(4)] == [
        True, True, True, False
    ]
    assert await spill.depth() == 3 and not spill.durable
    assert await spill.close() == 3  # what a memory outbox holds at exit is lost, and said so


async def test_memory_spill_probes_with_one_entry_while_google_fails() -> None:
    spill = MemorySpill(10, **FAST)
    for i in range(3):
        await spill.put(request(i), time.time())
    answers = iter([False] * 4)

    async def deliver(req: OutboundRequest) -> bool:
        calls.append(marker(req))
        ok = next(answers, True)
        if ok:
            delivered.append(marker(req))
        return ok

    calls: list[int] = []
    delivered: list[int] = []
    task = asyncio.create_task(spill.run(deliver))
    try:
        await until(lambda: len(delivered) == 3)
    finally:
        await stop(task)
    # A batch of 3 fails; then one entry at a time (a failing probe, a good one); then the
    # remaining two together. Google is not sent the whole outbox on every retry.
    assert len(calls) == 3 + 1 + 1 + 2
    assert Counter(delivered) == Counter([0, 1, 2])
    assert spill.durable


async def test_memory_spill_keeps_an_entry_whose_send_was_cancelled() -> None:
    spill = MemorySpill(10)
    await spill.put(request(1), time.time())
    google = Google()
    google.hang = asyncio.Event()
    task = asyncio.create_task(spill.run(google))
    await until(lambda: google.calls == [1])
    await stop(task)
    assert await spill.depth() == 1
    assert await spill.close() == 1


async def test_memory_spill_discards_expired_entries() -> None:
    metrics = Metrics()
    spill = MemorySpill(10, max_age=60, metrics=metrics)
    await spill.put(request(1), time.time() - 3600)
    await spill.put(request(2), time.time())
    google = Google()
    task = asyncio.create_task(spill.run(google))
    try:
        await until(lambda: google.delivered == [2])
        await until(lambda: len(spill) == 0)
    finally:
        await stop(task)
    assert google.calls == [2]
    assert metrics.registry.get_sample_value("analytics_proxy_beacons_expired_total") == 1


async def test_the_drain_loop_stops_whenever_it_is_cancelled(client: Redis) -> None:
    """Cancelled at many moments (reading, delivering, acknowledging, backing off), the loop
    always ends: redis-py could lose the cancellation, and shutdown waited forever."""
    rng = random.Random(7)
    for i in range(150):
        spill = RedisSpill(client, stream_maxlen=1000, **FAST)
        if i % 2:
            await spill.put(request(i), time.time())
        task = asyncio.create_task(spill.run(Google(up=bool(i % 3))))
        await asyncio.sleep(rng.uniform(0, 0.03))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done == {task}, f"the drain loop ran on after its cancellation (round {i})"


async def test_a_slow_send_is_not_taken_over_by_another_replica(client: Redis) -> None:
    # A round that takes longer than claim_idle (a slow Google, a wait for a connection)
    # keeps its entries: the other replica must not claim them and send them again.
    slow = Google()
    slow.hang = asyncio.Event()
    first = RedisSpill(client, stream_maxlen=1000, claim_idle=0.3, consumer="first", **FAST)
    second = RedisSpill(client, stream_maxlen=1000, claim_idle=0.3, consumer="second", **FAST)
    for i in range(5):
        await first.put(request(i), time.time())
    other = Google()
    tasks = [asyncio.create_task(first.run(slow))]
    await until(lambda: len(slow.calls) == 5)
    tasks.append(asyncio.create_task(second.run(other)))
    try:
        await asyncio.sleep(1.5)  # five times claim_idle
        slow.hang.set()
        await until(lambda: len(slow.delivered) == 5)
        await until_async(lambda: _is(pending(client), 0))
    finally:
        for task in tasks:
            await stop(task)
    assert sorted(slow.delivered) == list(range(5))
    assert other.calls == []


async def test_a_failed_acknowledgement_is_retried_before_reading_again(client: Redis) -> None:
    # Google took the entries, then the XACK failed (Redis unreachable for a moment): they
    # are acknowledged before the loop reads its own pending entries, never sent twice.
    from redis.exceptions import ConnectionError as RedisConnectionError

    spill = RedisSpill(client, stream_maxlen=1000, **FAST)
    for i in range(3):
        await spill.put(request(i), time.time())
    real_ack, failures = spill._ack, [1]

    async def ack_failing_once(ids: list[Any]) -> None:
        if failures:
            failures.pop()
            raise RedisConnectionError("injected: the acknowledgement did not reach Redis")
        await real_ack(ids)

    spill._ack = ack_failing_once  # type: ignore[method-assign]
    google = Google()
    task = asyncio.create_task(spill.run(google))
    try:
        await until(lambda: len(google.delivered) == 3)
        await until_async(lambda: _is(pending(client), 0))
        await asyncio.sleep(0.3)  # a second send would have had its chance
    finally:
        await stop(task)
    assert sorted(google.calls) == [0, 1, 2]


async def test_durable_puts_share_round_trips(client: Redis) -> None:
    spill = RedisSpill(client, stream_maxlen=10_000, **FAST)
    before = await _exec_calls(client)
    held = await asyncio.gather(*(spill.commit(request(i), time.time()) for i in range(300)))
    assert held == [True] * 300
    assert await client.xlen(STREAM_KEY) == 300
    # Group commits: 300 puts in a handful of transactions (at most 256 entries each).
    assert await _exec_calls(client) - before <= 5
    await spill.close()


async def _exec_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


async def test_a_durable_put_is_refused_while_redis_is_unreachable(
    own_redis: RedisServer,
) -> None:
    client = make_redis(own_redis.url)
    spill = RedisSpill(client, stream_maxlen=1000, **FAST)
    try:
        assert await spill.commit(request(1), time.time())
        own_redis.stop()
        assert not await spill.commit(request(2), time.time())
        assert not await spill.commit(request(3), time.time())  # not even tried: unavailable
        assert await spill.depth(include_shared=False) == 0  # never in memory instead
    finally:
        await spill.close()
        await client.aclose()
