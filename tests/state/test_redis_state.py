"""The Redis salt store against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from proxy.state.redis import SALT_PREFIX, RedisState
from proxy.state.salts import KEY_PREFIX, SALT_BYTES
from tests.redis_server import RedisServer, free_port

WINDOW = 19_700


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def state(redis_url: str) -> AsyncIterator[RedisState]:
    store = RedisState(redis_url)
    yield store
    await store.close()


async def test_concurrent_replicas_agree_on_one_salt_per_window(
    redis_url: str, raw: aioredis.Redis
) -> None:
    replicas = [RedisState(redis_url), RedisState(redis_url)]
    try:
        salts = await asyncio.gather(
            *(replicas[i % 2].salt_for(WINDOW, ttl=60) for i in range(50))
        )
    finally:
        for replica in replicas:
            await replica.close()
    assert len(set(salts)) == 1
    assert len(salts[0]) == SALT_BYTES
    assert await raw.keys("*") == [f"{SALT_PREFIX}{WINDOW}".encode()]


async def test_windows_have_different_salts(state: RedisState) -> None:
    assert await state.salt_for(WINDOW, ttl=60) != await state.salt_for(WINDOW + 1, ttl=60)


@pytest.mark.parametrize(("ttl", "expected"), [(30.2, 31), (30.0, 30), (0.01, 1), (-5.0, 1)])
async def test_ttl_is_whole_seconds_rounded_up_and_at_least_one(
    state: RedisState, raw: aioredis.Redis, ttl: float, expected: int
) -> None:
    await state.salt_for(WINDOW, ttl=ttl)
    remaining = await raw.pttl(f"{SALT_PREFIX}{WINDOW}")
    assert expected * 1000 - 1000 < remaining <= expected * 1000


async def test_reading_an_existing_salt_does_not_extend_its_life(
    state: RedisState, raw: aioredis.Redis
) -> None:
    first = await state.salt_for(WINDOW, ttl=100)
    assert await state.salt_for(WINDOW, ttl=10_000) == first
    assert 0 < await raw.ttl(f"{SALT_PREFIX}{WINDOW}") <= 100


async def test_the_salt_is_gone_when_its_ttl_ends(state: RedisState, raw: aioredis.Redis) -> None:
    first = await state.salt_for(WINDOW, ttl=1)
    key = f"{SALT_PREFIX}{WINDOW}"
    for _ in range(100):  # bounded wait for Redis to expire the key
        if not await raw.exists(key):
            break
        await asyncio.sleep(0.05)
    assert not await raw.exists(key)
    assert await state.salt_for(WINDOW, ttl=1) != first  # nothing kept it anywhere


async def test_keys_carry_the_hash_tag_so_a_cluster_keeps_them_in_one_slot(
    state: RedisState, raw: aioredis.Redis
) -> None:
    await state.salt_for(WINDOW, ttl=60)
    await state.salt_for(WINDOW + 1, ttl=60)
    keys = [k.decode() for k in await raw.keys("*")]
    assert keys and all(k.startswith("{analytics_proxy}:salt:") for k in keys)
    assert {key_slot(k.encode()) for k in keys} == {key_slot(f"{KEY_PREFIX}other".encode())}


async def test_a_bounded_pool_serves_more_callers_than_connections(redis_url: str) -> None:
    store = RedisState(redis_url, max_connections=2)
    try:
        salts = await asyncio.gather(*(store.salt_for(WINDOW, ttl=60) for _ in range(30)))
        assert len(set(salts)) == 1
        assert store.client.connection_pool.max_connections == 2
    finally:
        await store.close()


async def test_the_client_is_shared_for_other_state(state: RedisState, raw: aioredis.Redis) -> None:
    await state.client.set(f"{KEY_PREFIX}outbox:probe", b"1")
    assert await raw.get(f"{KEY_PREFIX}outbox:probe") == b"1"


async def test_ping_follows_the_server_and_errors_stay_redis_errors(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    store = RedisState(server.url)
    try:
        assert await store.ping() is True
        await asyncio.to_thread(server.stop)
        assert await store.ping() is False  # never raises
        with pytest.raises(RedisError):
            await store.salt_for(WINDOW, ttl=60)
        await asyncio.to_thread(server.start)
        assert await store.ping() is True  # the pool reconnects by itself
        assert len(await store.salt_for(WINDOW, ttl=60)) == SALT_BYTES
    finally:
        await store.close()
        server.stop()


async def test_a_server_that_is_not_there_at_all_pings_false() -> None:
    store = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await store.ping() is False
    finally:
        await store.close()
