"""The forwarder with its outbox: nothing accepted is lost to a full queue, exhausted
retries or shutdown; and a Google outage of several seconds, with beacons arriving all
along, ends with every consented beacon delivered exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.config import ConfigError, Upstream
from proxy.delivery.forward import Outbox, Unconfirmed
from proxy.delivery.outbound import OutboundRequest
from proxy.delivery.outbox import Entry, MemorySpill, Spill
from proxy.delivery.redis_outbox import STREAM_KEY, RedisSpill
from proxy.observe.metrics import Metrics
from proxy.server.keys import OUTBOX, SPILL
from proxy.server.public import init_app
from proxy.server.wiring import make_redis
from tests.capture import Capture
from tests.delivery.test_spill import marker, request, until, until_async
from tests.server.test_server import FORWARDABLE, HEADERS, Clients, hit_target, proxy_config

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}
GOOGLE = "http://g.example/g/collect"


class ScriptedSender:
    """Answers from a script, then ``default``; an exception instance is raised instead."""

    def __init__(self, script: list[int | Exception] | None = None, default: int = 204) -> None:
        self.script = list(script or [])
        self.default = default
        self.gate: asyncio.Event | None = None
        self.delay = 0.0
        self.sent: list[int] = []  # markers of requests Google answered 2xx
        self.attempts = 0

    async def send(self, req: OutboundRequest) -> int:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.script.pop(0) if self.script else self.default
        if isinstance(answer, Exception):
            raise answer
        if 200 <= answer < 300:
            self.sent.append(marker(req))
        return answer

    async def close(self) -> None:
        pass


def upstream(**overrides: Any) -> Upstream:
    values: dict[str, Any] = {"max_connections": 2, "queue_size": 10, "retries": 2, **FAST}
    values.update(overrides)
    return Upstream(**values)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"analytics_proxy_{name}", labels) or 0.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = make_redis(redis_url)
    yield redis
    await redis.aclose()


async def test_a_full_queue_spills_instead_of_losing() -> None:
    sender, metrics = ScriptedSender(), Metrics()
    sender.gate = asyncio.Event()  # Google hangs: the queue cannot move
    spill = MemorySpill(100, metrics=metrics, **FAST)
    outbox = Outbox(sender, upstream(max_connections=1, queue_size=1), metrics, spill=spill)
    outbox.start()
    try:
        assert all([await outbox.put(request(i)) for i in range(5)])
        assert sample(metrics, "beacons_spilled_total", reason="queue_full") == 4
        assert sample(metrics, "beacons_lost_total", reason="queue_full") == 0
        sender.gate.set()
        await until(lambda: len(sender.sent) == 5)
    finally:
        assert await outbox.shutdown(1.0) == 0
    assert Counter(sender.sent) == Counter(range(5))


async def test_when_queue_and_outbox_are_full_put_refuses_and_counts_no_loss() -> None:
    sender, metrics = ScriptedSender(), Metrics()
    sender.gate = asyncio.Event()  # Google hangs
    spill = MemorySpill(2, metrics=metrics, **FAST)
    outbox = Outbox(sender, upstream(max_connections=1, queue_size=1), metrics, spill=spill)
    outbox.start()
    try:
        assert await outbox.put(request(0))  # taken by the one sender, which hangs
        await until(lambda: sender.attempts == 1)
        assert await outbox.put(request(1))  # queued
        assert not outbox.full
        assert all([await outbox.put(request(i)) for i in (2, 3)])  # spilled
        assert outbox.full
        assert not await outbox.put(request(4))  # refused: the caller drops it, unaccepted
        assert sample(metrics, "beacons_lost_total", reason="queue_full") == 0
        assert sample(metrics, "beacons_spilled_total", reason="queue_full") == 2
        sender.gate.set()
        await until(lambda: len(sender.sent) == 4)
        assert not outbox.full
    finally:
        assert await outbox.shutdown(1.0) == 0
    assert Counter(sender.sent) == Counter(range(4))


async def test_an_overloaded_proxy_answers_503_instead_of_accepting_what_it_would_lose(
    aiohttp_client: Clients,
) -> None:
    class Hanging(ScriptedSender):
        async def send(self, req: OutboundRequest) -> int:
            self.attempts += 1
            await self.gate.wait()  # type: ignore[union-attr]
            self.sent.append(self.attempts)
            return 204

    sender, metrics = Hanging(), Metrics()
    sender.gate = asyncio.Event()  # Google hangs, so nothing leaves the queue or the outbox
    config = proxy_config(GOOGLE, upstream={"url": GOOGLE, "max_connections": 1,
                                            "queue_size": 1, **FAST},
                          state={"memory_outbox_size": 1})
    proxy = await aiohttp_client(init_app(config, metrics, sender))
    target = hit_target(FORWARDABLE[0])
    statuses = []
    for _ in range(6):
        resp = await proxy.post(target, headers=HEADERS)
        statuses.append(resp.status)
        if len(statuses) == 1:
            await until(lambda: sender.attempts == 1)  # the first is in flight, hanging
    # In flight, queued, in the outbox: accepted. Then nothing could hold a beacon.
    assert statuses == [204, 204, 204, 503, 503, 503]
    assert resp.headers["Retry-After"] == "1"
    assert sample(metrics, "beacons_dropped_total", reason="queue_full") == 3
    assert sample(metrics, "beacons_accepted_total", reason="granted") == 3
    sender.gate.set()
    await until(lambda: len(sender.sent) == 3)  # every accepted beacon arrives
    for reason in ("queue_full", "retries_exhausted", "shutdown", "forward_error"):
        assert sample(metrics, "beacons_lost_total", reason=reason) == 0
    resp = await proxy.post(target, headers=HEADERS)
    assert resp.status == 204  # room again


async def test_a_final_4xx_is_counted_and_not_spilled() -> None:
    sender, metrics = ScriptedSender(default=400), Metrics()
    spill = MemorySpill(100, metrics=metrics)
    outbox = Outbox(sender, upstream(), metrics, spill=spill)
    outbox.start()
    await outbox.put(request(1))
    await until(lambda: sample(metrics, "beacons_lost_total", reason="rejected") == 1)
    assert await outbox.shutdown(1.0) == 0
    assert sender.attempts == 1
    assert sample(metrics, "beacons_spilled_total", reason="retries_exhausted") == 0


async def test_exhausted_retries_spill_and_the_outbox_delivers_later() -> None:
    sender, metrics = ScriptedSender([503, ConnectionResetError(), 429]), Metrics()
    spill = MemorySpill(100, metrics=metrics, **FAST)
    outbox = Outbox(sender, upstream(retries=2), metrics, spill=spill)
    outbox.start()
    await outbox.put(request(1))
    await until(lambda: sender.sent == [1])
    assert await outbox.shutdown(1.0) == 0
    assert sample(metrics, "beacons_spilled_total", reason="retries_exhausted") == 1
    assert sample(metrics, "outbox_delivered_total") == 1
    assert sender.attempts == 4


async def test_shutdown_spills_queued_and_in_flight_requests_to_redis(client: Redis) -> None:
    # Google is down; workers are mid-retry when the deadline passes.
    sender, metrics = ScriptedSender(default=503), Metrics()
    spill = RedisSpill(client, stream_maxlen=1000, metrics=metrics, **FAST)
    outbox = Outbox(sender, upstream(retries=1000), metrics, spill=spill)
    outbox.start()
    for i in range(6):
        assert await outbox.put(request(i))
    await until(lambda: sender.attempts >= 4)
    assert await outbox.shutdown(0.2) == 0
    entries = await client.xrange(STREAM_KEY)
    assert sorted(int(f[b"q"].decode().rpartition("_p=")[2]) for _, f in entries) == list(range(6))
    assert sample(metrics, "beacons_spilled_total", reason="shutdown") == 6
    assert sample(metrics, "beacons_lost_total", reason="shutdown") == 0


class LateAnswer(MemorySpill):
    """Holds each entry at once and answers when ``gate`` opens, like a Redis command that
    was applied and whose reply is slow to come back."""

    def __init__(self) -> None:
        super().__init__(100)
        self.gate = asyncio.Event()
        self.held: list[int] = []

    async def put(self, request: OutboundRequest, accepted_at: float) -> bool:
        return await self.put_many([(request, accepted_at)]) == 1

    async def put_many(self, entries: Sequence[Entry]) -> int:
        count = await super().put_many(entries)
        self.held.extend(marker(req) for req, _ in entries[:count])
        await self.gate.wait()
        return count


async def test_shutdown_while_a_worker_spills_holds_the_request_once() -> None:
    sender, metrics = ScriptedSender(default=503), Metrics()
    spill = LateAnswer()
    outbox = Outbox(sender, upstream(retries=0), metrics, spill=spill)
    outbox.start()
    assert await outbox.put(request(7))
    await until(lambda: spill.held == [7])  # retries exhausted: handed to the spill
    stopping = asyncio.create_task(outbox.shutdown(0.0))  # cancels the worker meanwhile
    await asyncio.sleep(0.05)
    spill.gate.set()
    assert await stopping == 1  # memory only: lost at exit, and counted
    assert spill.held == [7]  # not held a second time as an in-flight leftover
    assert sample(metrics, "beacons_spilled_total", reason="retries_exhausted") == 1
    assert sample(metrics, "beacons_spilled_total", reason="shutdown") == 0


async def test_shutdown_without_redis_reports_what_it_could_not_deliver() -> None:
    sender, metrics = ScriptedSender(default=503), Metrics()
    spill = MemorySpill(100, metrics=metrics, **FAST)
    outbox = Outbox(sender, upstream(retries=1), metrics, spill=spill)
    outbox.start()
    for i in range(5):
        await outbox.put(request(i))
    assert await outbox.shutdown(0.3) == 5
    assert sample(metrics, "beacons_lost_total", reason="shutdown") == 5
    assert await spill.depth() == 0


async def test_shutdown_delivers_what_it_holds_within_the_deadline() -> None:
    sender, metrics = ScriptedSender(), Metrics()
    sender.delay = 0.02  # Google is slow, not down
    spill = MemorySpill(100, metrics=metrics, **FAST)
    outbox = Outbox(sender, upstream(queue_size=5), metrics, spill=spill)
    outbox.start()
    for i in range(20):  # more than the queue holds: some wait in the memory outbox
        await outbox.put(request(i))
    assert await outbox.shutdown(30.0) == 0
    assert Counter(sender.sent) == Counter(range(20))


def beacon(index: int) -> str:
    return (
        "/g/collect?v=2&tid=G-TEST1234&cid=111.222&en=page_view"
        f"&dl=https%3A%2F%2Fwww.example.com%2F&_p={index}"
    )


async def google_outage(aiohttp_client: Clients, state: dict[str, Any]) -> Metrics:
    """Beacons keep arriving while the capture server is down for about three seconds."""
    cap = Capture()
    server = TestServer(cap.app(), port=0)
    await server.start_server()
    url, port = str(server.make_url("/g/collect")), server.port
    config = proxy_config(
        url,
        upstream={
            "url": url, "retries": 2, "timeout": 1.0, "connect_timeout": 0.5,
            "backoff_initial": 0.05, "backoff_max": 0.2, "queue_size": 10, "max_connections": 4,
        },
        state=state,
    )
    metrics = Metrics()
    proxy = await aiohttp_client(init_app(config, metrics))
    spill: Spill = proxy.app[SPILL]

    async def send(index: int) -> None:
        resp = await proxy.post(beacon(index), headers=HEADERS)
        assert resp.status == 204

    for i in range(20):
        await send(i)
    await cap.wait_for(1)
    await server.close()  # Google is down
    for i in range(20, 50):
        await send(i)
        await asyncio.sleep(0.1)
    revived = TestServer(cap.app(), port=port)
    await revived.start_server()
    try:
        for i in range(50, 70):
            await send(i)
        await cap.wait_for(70, timeout=60)
        outbox = proxy.app[OUTBOX]
        await until(lambda: outbox.pending == 0)
        await until_async(lambda: _empty(spill))
        await asyncio.sleep(0.2)  # a duplicate would have had its chance to arrive
    finally:
        await revived.close()
    got = Counter(int(dict(parse_qsl(hit.query))["_p"]) for hit in cap.hits)
    assert got == Counter(range(70))  # every beacon, each exactly once
    assert sample(metrics, "beacons_spilled_total", reason="retries_exhausted") > 0
    return metrics


async def _empty(spill: Spill) -> bool:
    return await spill.depth() == 0


async def test_google_down_for_seconds_every_beacon_arrives_once_with_redis(
    aiohttp_client: Clients, redis_url: str
) -> None:
    metrics = await google_outage(aiohttp_client, {"redis_url": redis_url, "claim_idle": 2.0})
    assert sample(metrics, "outbox_delivered_total") > 0
    assert sample(metrics, "outbox_max_entries") == 100_000


async def test_google_down_for_seconds_every_beacon_arrives_once_without_redis(
    aiohttp_client: Clients,
) -> None:
    metrics = await google_outage(aiohttp_client, {})
    assert sample(metrics, "outbox_delivered_total") > 0
    assert sample(metrics, "outbox_max_entries") == 10_000


async def test_beacons_are_stamped_when_accepted() -> None:
    # The age limit counts from acceptance, not from when the beacon was spilled.
    spill = MemorySpill(10)
    sender = ScriptedSender()
    sender.gate = asyncio.Event()
    outbox = Outbox(sender, upstream(max_connections=1, queue_size=1), Metrics(), spill=spill)
    before = time.time()
    await outbox.put(request(1))
    await outbox.put(request(2))  # queue full: spilled with its acceptance time
    (entry,) = spill.take(1)
    assert entry[1] >= before and marker(entry[0]) == 2


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("state", {"outbox_maxlen": 0}, "state.outbox_maxlen"),
        ("state", {"memory_outbox_size": 0}, "state.memory_outbox_size"),
        ("state", {"outbox_max_age": "forever"}, "state.outbox_max_age"),
        ("state", {"outbox_max_age": "7d"}, "state.outbox_max_age"),
        ("state", {"claim_idle": 5.0}, "state.claim_idle"),  # not above upstream.timeout
        ("upstream", {"url": GOOGLE, "shutdown_deadline": 0}, "upstream.shutdown_deadline"),
        ("upstream", {"url": GOOGLE, "shutdown_grace": -1}, "upstream.shutdown_grace"),
    ],
)
def test_outbox_settings_are_checked_naming_the_key(
    section: str, values: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        proxy_config(GOOGLE, **{section: values})


@pytest.mark.parametrize(("resend", "attempts"), [(False, 1), (True, 3)])
async def test_a_request_sent_and_not_answered_is_not_sent_again_by_default(
    resend: bool, attempts: int
) -> None:
    # Google may have taken it: a second send would count its events twice in GA4.
    sender, metrics = ScriptedSender([Unconfirmed("timeout"), Unconfirmed("timeout")]), Metrics()
    outbox = Outbox(sender, upstream(resend_unconfirmed=resend), metrics)
    outbox.start()
    await outbox.put(request(1))
    await until(lambda: outbox.pending == 0)
    assert sender.attempts == attempts
    assert sample(metrics, "beacons_unconfirmed_total") == (0 if resend else 1)
    assert sample(metrics, "beacons_lost_total", reason="retries_exhausted") == 0
    await outbox.shutdown(1.0)
