"""Shared fixtures: the captured data (copied from shared/fixtures, never edited)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer, external_url

FIXTURES = Path(__file__).parent / "fixtures"


def load_jsonl(name: str) -> list[dict[str, Any]]:
    with open(FIXTURES / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


GA4_HITS = load_jsonl("ga4-hits.jsonl")
CONSENT_CASES = load_jsonl("consent-cookies.jsonl")


@pytest.fixture
def ga4_hits() -> list[dict[str, Any]]:
    return GA4_HITS


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """A real Redis for the session (None when $ANALYTICS_PROXY_TEST_REDIS_URL is used)."""
    if external_url():
        yield None
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer | None) -> AsyncIterator[str]:
    """The URL of a real, emptied Redis database."""
    url = external_url() or redis_server.url  # type: ignore[union-attr]
    client = aioredis.from_url(url)
    await client.flushdb()
    await client.aclose()
    yield url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and start: the shared one
    (or an external one from $ANALYTICS_PROXY_TEST_REDIS_URL) must not be."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's own checker (Debian's ``prometheus`` package; ``.ci/run`` installs it).
    In CI its absence is a failure, never a skip."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path
