import redis.asyncio as aioredis


async def test_the_suite_talks_to_a_real_redis_server(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        info = await client.info("server")
        assert info["redis_version"]  # a real server answers INFO; fakes rarely do
        assert await client.set("k", "v") and await client.get("k") == b"v"
    finally:
        await client.aclose()
