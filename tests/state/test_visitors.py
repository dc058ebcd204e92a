"""The observed daily volume behind the report's collision figure: a bounded sketch in
memory, a HyperLogLog per day in Redis, and the admin port's /report."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from proxy.observe.metrics import Metrics
from proxy.server.admin import init_admin_app
from proxy.server.public import init_app
from proxy.state.visitors import PENDING_MAX, SKETCH_SIZE, DailyVisitors, Sketch
from tests.capture import Capture
from tests.conftest import GA4_HITS
from tests.server.test_server import HEADERS, proxy_config


def pseudonyms(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(32)}.{rng.getrandbits(20)}" for _ in range(count)]


def test_the_sketch_is_exact_when_small_and_close_when_large() -> None:
    sketch = Sketch()
    for p in pseudonyms(500, 1) * 3:  # repeats count once
        sketch.add(hash(p) % (1 << 61))
    assert sketch.estimate() == 500
    for true in (20_000, 200_000):
        sketch = Sketch()
        for p in pseudonyms(true, true):
            sketch.add(hash(p) % (1 << 61))
        # KMV with k = 1024: standard error about 1/sqrt(k) = 3 %; 4 standard errors here.
        assert abs(sketch.estimate() - true) < 0.125 * true
        assert len(sketch._heap) == SKETCH_SIZE  # bounded, whatever the volume


async def test_memory_count_rolls_over_at_midnight() -> None:
    now = [86400 * 20_000 + 3600.0]
    visitors = DailyVisitors(clock=lambda: now[0])
    assert await visitors.observed() is None
    for p in pseudonyms(40, 2):
        visitors.add(p)
    assert await visitors.observed() == (40, "today")
    now[0] += 86400
    visitors.add("1.1")
    assert await visitors.observed() == (40, "yesterday")


async def test_replicas_share_the_count_in_redis(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        a, b = DailyVisitors(client), DailyVisitors(client)
        shared = pseudonyms(300, 3)
        for p in shared[:200]:
            a.add(p)
        for p in shared[100:]:  # 100 seen by both
            b.add(p)
        await a.flush()
        await b.flush()
        count, label = await a.observed() or (0, "")
        assert label == "today" and abs(count - 300) <= 6  # HyperLogLog: 0.81 % error
        keys = [k.decode() async for k in client.scan_iter("*visitors*")]
        assert len(keys) == 1 and keys[0].startswith("{analytics_proxy}:visitors:")
        assert 0 < await client.ttl(keys[0]) <= 3 * 86400
    finally:
        await client.aclose()


async def test_the_admin_report_states_the_observed_volume(aiohttp_client: Any,
                                                           aiohttp_server: Any) -> None:
    cap = Capture()
    url = str((await aiohttp_server(cap.app())).make_url("/g/collect"))
    config = proxy_config(url)
    metrics, visitors = Metrics(), DailyVisitors()
    public = await aiohttp_client(init_app(config, metrics, visitors=visitors))
    admin = await aiohttp_client(init_admin_app(config, metrics, visitors=visitors))
    before = await (await admin.get("/report?format=json")).json()
    assert before["pseudonym"]["collision"]["basis"] == "illustrative"
    hit = next(h for h in GA4_HITS if h["id"] == "TV-04")
    query = urlsplit(hit["url"]).query
    for n in range(25):  # 25 visitors
        resp = await public.post(f"/g/collect?{query}&cid={n}.{n}", headers=HEADERS)
        assert resp.status == 204
    report = await (await admin.get("/report?format=json")).json()
    collision = report["pseudonym"]["collision"]
    assert (collision["basis"], collision["daily_visitors"]) == ("observed", 25)
    html = await admin.get("/report")
    assert html.status == 200 and html.content_type == "text/html"
    assert (await admin.get("/report?format=pdf")).status == 400


def test_pseudonyms_waiting_for_redis_are_capped() -> None:
    """Redis unreachable for long: the batch waiting for it stops growing at its cap."""
    visitors = DailyVisitors(client=object(), clock=lambda: 86400 * 20_000.0)
    for n in range(PENDING_MAX + 5_000):
        visitors.add(f"{n}.1700000000")
    assert len(visitors._pending) == PENDING_MAX
    assert visitors._today.estimate() > PENDING_MAX * 0.8  # the memory sketch still counts
