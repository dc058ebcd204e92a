"""Exactly once, as far as the proxy controls it: two replicas on one Redis through a Google
outage with slow answers, and (durable acknowledgement) a replica killed outright. Counted
at the loopback "Google": every beacon answered 204 arrives, none arrives twice.

A request Google took but answered too late is not sent again (GA4 would count it twice):
the slow answers below arrive once, and the proxy counts them as unconfirmed."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.delivery.redis_outbox import STREAM_KEY
from proxy.server.wiring import make_redis
from tests.capture import Capture, Hit
from tests.delivery.test_spill import until_async
from tests.redis_server import free_port
from tests.server.test_shutdown import Load, Proxy, delivered_once, write_config

TIMEOUT = 0.5  # upstream.timeout: a slow answer below takes three times as long


class FlakyGoogle(Capture):
    """Records every hit it reads, then answers 503 while ``failing``; answers hits whose
    marker ends in 0 only after ``TIMEOUT`` has passed (it took them, the proxy gave up)."""

    failing = False

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = (await request.read()).decode()
        if self.failing:
            return web.Response(status=503)
        async with self.arrived:
            self.hits.append(Hit(request.rel_url.raw_query_string, body, dict(request.headers)))
            self.arrived.notify_all()
        if dict(parse_qsl(request.rel_url.query_string))["_p"].endswith("0"):
            await asyncio.sleep(TIMEOUT * 3)
        return web.Response(status=204)


def replicas(tmp_path: Path, google_port: int, redis_url: str, **state: Any) -> list[Proxy]:
    common: dict[str, Any] = {
        "upstream": {
            "timeout": TIMEOUT, "connect_timeout": 0.2, "retries": 3, "backoff_initial": 0.05,
            "backoff_max": 0.3, "queue_size": 10, "max_connections": 4,
        },
        "state": {"redis_url": redis_url, "claim_idle": 2.0, **state},
        "rate_limit": {"per_network": 0},
    }
    out = []
    for name in ("one", "two"):
        proxy = Proxy(tmp_path / f"{name}.yaml", {}, tmp_path / f"{name}.log")
        proxy.ports = write_config(proxy.config, google_port, **json.loads(json.dumps(common)))
        out.append(proxy)
    return out


async def unconfirmed(session: aiohttp.ClientSession, proxy: Proxy) -> float:
    url = f"http://127.0.0.1:{proxy.ports['admin']}/metrics"
    async with session.get(url) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("analytics_proxy_beacons_unconfirmed_total "):
            return float(line.split()[1])
    return 0.0


async def test_two_replicas_through_an_outage_with_slow_answers_deliver_each_beacon_once(
    tmp_path: Path, redis_url: str
) -> None:
    google_port = free_port()  # nothing listens yet: Google refuses connections
    cap = FlakyGoogle()
    google = TestServer(cap.app(), port=google_port)
    one, two = replicas(tmp_path, google_port, redis_url)
    async with aiohttp.ClientSession() as session:
        loads = [Load(one, session), Load(two, session, first=1_000_000)]
        try:
            await one.start(session)
            await two.start(session)
            clients = [task for load in loads for task in load.start(clients=2)]
            for load in loads:
                await load.until_answered(150)
            await google.start_server()  # Google is back, slow on one hit in ten
            for load in loads:
                await load.until_answered(len(load.answered) + 100)
            for load in loads:
                load.stop()
            await asyncio.gather(*clients)
            answered = [m for load in loads for m in load.answered]
            await cap.wait_for(len(answered), timeout=60)
            redis = make_redis(redis_url)
            try:
                await until_async(lambda: _stream_empty(redis), rounds=1000)
            finally:
                await redis.aclose()
            await asyncio.sleep(5.0)  # past claim_idle twice: a duplicate would have come
            slow = sum([await unconfirmed(session, proxy) for proxy in (one, two)])
            assert await one.stop() == 0 and await two.stop() == 0
        finally:
            for load in loads:
                load.stop()
            one.kill()
            two.kill()
            await google.close()
    delivered_once(cap, answered)
    assert slow > 0  # the slow answers happened, and were not sent again


async def test_durable_ack_a_replica_killed_outright_loses_nothing_it_answered(
    tmp_path: Path, redis_url: str
) -> None:
    cap = FlakyGoogle()
    cap.failing = True  # Google answers 503: everything waits in the outbox
    google = TestServer(cap.app(), port=0)
    await google.start_server()
    assert google.port is not None
    one, two = replicas(tmp_path, google.port, redis_url, durable_ack=True)
    async with aiohttp.ClientSession() as session:
        loads = [Load(one, session), Load(two, session, first=1_000_000)]
        try:
            await one.start(session)
            await two.start(session)
            clients = [task for load in loads for task in load.start(clients=2)]
            await loads[0].until_answered(200)
            assert one.proc is not None
            one.proc.send_signal(signal.SIGKILL)  # no shutdown: memory would be lost
            await loads[1].until_answered(len(loads[1].answered) + 100)
            cap.failing = False
            await loads[1].until_answered(len(loads[1].answered) + 50)
            for load in loads:
                load.stop()
            await asyncio.gather(*clients)
            answered = [m for load in loads for m in load.answered]
            await cap.wait_for(len(answered), timeout=60)
            await asyncio.sleep(5.0)  # past claim_idle twice: a duplicate would have come
            assert await two.stop() == 0
        finally:
            for load in loads:
                load.stop()
            one.kill()
            two.kill()
            await google.close()
    delivered_once(cap, answered)
    assert one.proc is not None and one.proc.returncode == -signal.SIGKILL


async def _stream_empty(redis: Any) -> bool:
    return bool(await redis.xlen(STREAM_KEY) == 0)
