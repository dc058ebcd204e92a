"""Forwarding to Google: a bounded outbox between ingest and a pool of senders.

The browser's ``204`` never waits for this. Network errors, 5xx and 429 are retried with
capped exponential backoff and full jitter; other answers are final. A full outbox or
exhausted retries are counted, never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
from collections.abc import Callable
from typing import Protocol, TextIO

import aiohttp

from proxy.config import EU_ENDPOINT, Upstream
from proxy.metrics import Metrics
from proxy.pipeline import OutboundRequest

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Delivers one request; returns the HTTP status, raises on a network error."""

    async def send(self, request: OutboundRequest) -> int: ...

    async def close(self) -> None: ...


class HttpSender:
    """One long-lived session: keep-alive pool, explicit timeouts, no cookies, no redirects."""

    def __init__(self, config: Upstream) -> None:
        self._url = config.url
        connector = aiohttp.TCPConnector(
            limit=config.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=config.timeout, sock_connect=config.connect_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "Accept"),
        )

    async def send(self, request: OutboundRequest) -> int:
        url = f"{self._url}?{request.query}"
        async with self._session.post(
            url, data=request.body.encode(), headers=request.headers(), allow_redirects=False
        ) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        await self._session.close()


class StdoutSender:
    """Dry run: one JSON line per request that would have been forwarded."""

    def __init__(self, url: str = EU_ENDPOINT, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._url = url

    async def send(self, request: OutboundRequest) -> int:
        line: dict[str, object] = {
            "dry_run": True,
            "url": f"{self._url}?{request.query}",
            "body": request.body,
            "headers": request.headers(),
        }
        self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._stream.flush()
        return 204

    async def close(self) -> None:
        pass


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


class Outbox:
    """Bounded queue plus ``max_connections`` workers that deliver with retries."""

    def __init__(
        self,
        sender: Sender,
        config: Upstream,
        metrics: Metrics,
        jitter: Callable[[float], float] = lambda cap: random.uniform(0, cap),
    ) -> None:
        self._sender = sender
        self._config = config
        self._metrics = metrics
        self._jitter = jitter
        self._queue: asyncio.Queue[OutboundRequest] = asyncio.Queue(config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"forward-{i}")
            for i in range(self._config.max_connections)
        ]

    def put(self, request: OutboundRequest) -> bool:
        """Accept a sanitised request without waiting; False (counted) when full."""
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            self._metrics.lost("queue_full")
            return False
        self._metrics.queue_depth.set(self._queue.qsize())
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._in_flight

    async def _work(self) -> None:
        while True:
            request = await self._queue.get()
            self._in_flight += 1
            try:
                await self._deliver(request)
            except Exception:
                log.exception("forwarder error")
                self._metrics.lost("forward_error")
            finally:
                self._in_flight -= 1
                self._queue.task_done()
                self._metrics.queue_depth.set(self._queue.qsize())

    async def _deliver(self, request: OutboundRequest) -> None:
        config = self._config
        for attempt in range(config.retries + 1):
            if attempt:
                cap = min(config.backoff_max, config.backoff_initial * 2 ** (attempt - 1))
                self._metrics.retries.inc()
                await asyncio.sleep(self._jitter(cap))
            try:
                status = await self._sender.send(request)
            except (TimeoutError, aiohttp.ClientError, OSError):
                self._metrics.upstream("error")
                continue
            self._metrics.upstream(f"{status // 100}xx")
            if 200 <= status < 300:
                self._metrics.forwarded.inc()
                return
            if not retryable(status):
                # Google does not validate hits: a 4xx will not get better by repeating it.
                self._metrics.lost("rejected")
                return
        self._metrics.lost("retries_exhausted")

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the queue to empty; returns what is left."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        return self.pending

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
