"""Several replicas on one real Redis: one pseudonym per visitor whichever replica answers,
rotation, and beacons that keep flowing while Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from proxy.config import Config, from_mapping
from proxy.observe.metrics import Metrics
from proxy.server.public import init_app
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.redis import SALT_PREFIX, RedisState
from tests.capture import Capture
from tests.conftest import GA4_HITS
from tests.redis_server import RedisServer
from tests.serve_process import start_serve, wait_until_up

ROOT = Path(__file__).parents[2]
HIT = next(h for h in GA4_HITS if h["id"] == "TV-04")
QUERY = urlsplit(HIT["url"]).query
TID = "G-18JR3Q8PJ8"
CAPTURED_CID = dict(parse_qsl(QUERY))["cid"]
CLIENT_IP = "203.0.113.57"
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6049.0 Safari/537.36"
)
HEADERS = {"Cookie": "analytics_consent=granted", "User-Agent": CHROME}
DAY = 86400
Clients = Callable[..., Awaitable[Any]]


def cid_of(query: str) -> str:
    return dict(parse_qsl(query, keep_blank_values=True))["cid"]


async def salt_keys(url: str) -> list[str]:
    client = aioredis.from_url(url)
    try:
        return sorted(k.decode() for k in await client.keys(f"{SALT_PREFIX}*"))
    finally:
        await client.aclose()


# --- two `serve` processes ---------------------------------------------------------------


def start_replica(tmp_path: Path, name: str, redis_url: str) -> tuple[Popen[str], int, int]:
    return start_serve(tmp_path, name, f"measurement_ids: [{TID}]\n"
                       "upstream: {url: stdout}\n"
                       f"state: {{redis_url: '{redis_url}'}}\n")


def wait_ready(port: int) -> None:
    wait_until_up(port, "/readyz")


def send_beacon(port: int) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/g/collect?{QUERY}", data=b"", headers=HEADERS
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def metrics_text(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def test_two_serve_processes_on_one_redis_give_the_same_pseudonym(
    tmp_path: Path, redis_url: str
) -> None:
    replicas = [start_replica(tmp_path, name, redis_url) for name in ("a", "b")]
    outputs: list[tuple[str, str]] = []
    exposition: list[str] = []
    try:
        for _, port, admin in replicas:
            wait_ready(port)
            assert send_beacon(port) == 204
            exposition.append(metrics_text(admin))
    finally:
        for proc, _, _ in replicas:
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in replicas:
            outputs.append(proc.communicate(timeout=20))
    assert [proc.returncode for proc, _, _ in replicas] == [0, 0]
    lines = [json.loads(out.strip().splitlines()[0]) for out, _ in outputs]
    cids = [cid_of(urlsplit(line["url"]).query) for line in lines]
    assert cids[0] == cids[1] != CAPTURED_CID
    for text in exposition:
        assert 'analytics_proxy_salt_source{source="redis"} 1.0' in text
        assert 'analytics_proxy_salt_source{source="local"} 0.0' in text
    # One salt, of the current window, under the hash-tagged prefix.
    window = int(time.time() // DAY)
    assert await salt_keys(redis_url) == [f"{SALT_PREFIX}{window}"]
    assert all(CAPTURED_CID not in out + err for out, err in outputs)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_rotation_changes_the_shared_pseudonym_and_the_old_salt_leaves_redis(
    redis_url: str,
) -> None:
    # The 1h minimum rotation is a configuration rule; the mechanism works at any length.
    rotation, start = 2, 1_700_000_000
    clock = Clock(start + 1.5)
    stores = [RedisState(redis_url), RedisState(redis_url)]
    replicas = [
        Pseudonymizer(s, bits=32, rotation=rotation, clock=clock, skew=0, prefetch=0)
        for s in stores
    ]

    async def pseudonyms() -> set[str]:
        return {p.pseudonym(await p.current(), TID, CAPTURED_CID) for p in replicas}

    try:
        first = await pseudonyms()
        old = f"{SALT_PREFIX}{start // rotation}"
        assert await salt_keys(redis_url) == [old]
        clock.now += rotation
        rotated = await pseudonyms()
        assert len(first) == len(rotated) == 1 and first != rotated
        assert await salt_keys(redis_url) == [old, f"{SALT_PREFIX}{start // rotation + 1}"]
        for _ in range(100):  # bounded wait: the old salt had 1 s to live
            if old not in await salt_keys(redis_url):
                break
            await asyncio.sleep(0.05)
        assert old not in await salt_keys(redis_url)
    finally:
        for p, s in zip(replicas, stores, strict=True):
            await p.close()
            await s.close()


# --- Redis going away while beacons flow ---------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, so stopping it disturbs no other test. Listed before the
    application's fixtures, so it is torn down after the application has shut down."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def capture(aiohttp_server: Any) -> tuple[Capture, str]:
    cap = Capture()
    server = await aiohttp_server(cap.app())
    return cap, str(server.make_url("/g/collect"))


def config_for(upstream: str, redis_url: str) -> Config:
    return from_mapping(
        {
            "measurement_ids": [TID],
            "upstream": {"url": upstream, "backoff_initial": 0.01, "backoff_max": 0.05},
            "state": {"redis_url": redis_url},
        },
        env={},
    )


async def post(client: TestClient) -> int:
    resp = await client.post(
        f"/g/collect?{QUERY}", headers={**HEADERS, "X-Forwarded-For": CLIENT_IP}
    )
    return int(resp.status)


def source(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value("analytics_proxy_salt_source", {"source": name})


def assert_sanitised(hits: list[Any]) -> None:
    for hit in hits:
        params = dict(parse_qsl(hit.query, keep_blank_values=True))
        number, start = params["cid"].split(".")
        assert params["cid"] != CAPTURED_CID and int(start) % DAY == 0 and number.isdigit()
        assert params["_uip"] == "203.0.113.0"
        assert CLIENT_IP not in hit.query + hit.body + str(hit.headers)
        assert "1874137241" not in hit.query + hit.body


async def test_redis_stopped_and_restarted_while_beacons_flow(
    own_redis: RedisServer, capture: tuple[Capture, str], aiohttp_client: Clients
) -> None:
    cap, upstream = capture
    own_redis.start()
    metrics = Metrics()
    client = await aiohttp_client(init_app(config_for(upstream, own_redis.url), metrics))
    assert [await post(client) for _ in range(3)] == [204] * 3
    baseline = cid_of((await cap.wait_for(3))[0].query)
    assert source(metrics, "redis") == 1

    statuses: list[int] = []
    stop = asyncio.Event()

    async def flow() -> None:
        # Stopped between beacons, never cancelled in the middle of one: a post cut off
        # after the proxy took it would arrive without its status counted.
        for _ in range(5000):  # bounded: the test stops it long before
            if stop.is_set():
                return
            statuses.append(await post(client))
            await asyncio.sleep(0.005)

    async def more_beacons(count: int) -> None:
        target = len(statuses) + count
        for _ in range(1000):  # bounded wait for the flow to move on
            if len(statuses) >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("beacons stopped flowing")

    task = asyncio.create_task(flow())
    try:
        await more_beacons(5)
        await asyncio.to_thread(own_redis.stop)
        await more_beacons(5)
        await asyncio.to_thread(own_redis.start)
        await more_beacons(5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert statuses and set(statuses) == {204}
    hits = await cap.wait_for(3 + len(statuses))
    await asyncio.sleep(0.5)  # a duplicate would have had its chance to arrive
    assert len(cap.hits) == 3 + len(statuses)  # each answered beacon exactly once
    assert_sanitised(hits)
    # The window's salt was cached: the visitor kept one pseudonym through the outage.
    assert {cid_of(h.query) for h in hits} == {baseline}
    assert source(metrics, "redis") == 1 and source(metrics, "local") == 0


async def test_a_replica_started_without_redis_serves_on_a_local_salt_then_recovers(
    own_redis: RedisServer, capture: tuple[Capture, str], aiohttp_client: Clients
) -> None:
    cap, upstream = capture
    metrics = Metrics()
    client = await aiohttp_client(init_app(config_for(upstream, own_redis.url), metrics))
    assert source(metrics, "local") == 1
    assert [await post(client) for _ in range(3)] == [204] * 3
    local_cid = cid_of((await cap.wait_for(3))[0].query)

    await asyncio.to_thread(own_redis.start)
    statuses = []
    for _ in range(200):  # bounded: retries back off from a couple of seconds
        statuses.append(await post(client))
        if source(metrics, "redis") == 1:
            break
        await asyncio.sleep(0.05)
    assert source(metrics, "redis") == 1 and source(metrics, "local") == 0
    assert set(statuses) == {204}

    assert await post(client) == 204
    hits = await cap.wait_for(3 + len(statuses) + 1)
    assert_sanitised(hits)
    # Now the same pseudonym as any other replica on this Redis would give.
    store = RedisState(own_redis.url)
    other = Pseudonymizer(store, bits=32, rotation=DAY)
    try:
        shared = other.pseudonym(await other.current(), TID, CAPTURED_CID)
    finally:
        await other.close()
        await store.close()
    assert cid_of(hits[-1].query) == shared != local_cid
