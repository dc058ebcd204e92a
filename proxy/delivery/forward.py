"""Forwarding to Google: a bounded queue between ingest and a pool of senders.

The browser's ``204`` never waits for Google. What provably did not reach Google (connection
refused, connect timeout), 5xx and 429 are retried with capped exponential backoff and full
jitter; other answers are final. A request sent and never answered (``Unconfirmed``) is not
sent again unless ``upstream.resend_unconfirmed``: GA4 would count its events twice. A full queue or
exhausted retries put the request into the outbox (``proxy.delivery.outbox``), which delivers it
later; only what the outbox cannot hold either is counted as lost. With
``state.durable_ack`` every request goes to the Redis outbox first (a group commit), and the
browser's answer waits for that round trip only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

import aiohttp

from proxy.config import EU_ENDPOINT, Upstream
from proxy.delivery.outbound import MEASUREMENT_PROTOCOL, OutboundRequest
from proxy.delivery.outbox import Entry, Spill
from proxy.delivery.redis_outbox import RedisSpill
from proxy.observe.metrics import Metrics

log = logging.getLogger(__name__)

SHUTDOWN_POLL = 0.05  # seconds between checks that a non-durable spill has emptied


class Unconfirmed(Exception):
    """The request was sent and no answer came (a timeout, or the connection closed after
    sending): Google may have taken it. GA4 has no idempotency key, so sending it again
    could count its events twice."""


class Sender(Protocol):
    """Delivers one request; returns the HTTP status. Raises ``Unconfirmed`` when the request
    was sent but not answered, another error (OSError, TimeoutError, aiohttp's) when it
    provably never reached Google (connection refused, connect timeout, DNS)."""

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
        try:
            async with self._session.post(
                url, data=request.body.encode(), headers=request.headers(), allow_redirects=False
            ) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            raise  # never connected: nothing was sent
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unconfirmed(type(exc).__name__) from None

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


def event_count(request: OutboundRequest) -> int:
    """Events in a request: one per body line of a batch, else the query's one; a
    Measurement Protocol request's ``events`` (its JSON, written by the proxy)."""
    if request.kind == MEASUREMENT_PROTOCOL:
        return len(json.loads(request.body).get("events", ())) or 1
    return request.body.count("\n") + 1 if request.body else 1


class Outbox:
    """Bounded queue plus ``max_connections`` workers that deliver with retries, and the
    loop that drains the spill (when there is one) through single attempts."""

    def __init__(
        self,
        sender: Sender,
        config: Upstream,
        metrics: Metrics,
        jitter: Callable[[float], float] = lambda cap: random.uniform(0, cap),
        spill: Spill | None = None,
        durable: bool = False,
    ) -> None:
        if durable and not isinstance(spill, RedisSpill):
            raise ValueError("durable acknowledgement needs the Redis outbox")
        self._durable = spill if durable and isinstance(spill, RedisSpill) else None
        self._sender = sender
        self._config = config
        self._metrics = metrics
        self._jitter = jitter
        self._spill = spill
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._current: dict[asyncio.Task[None], Entry] = {}  # in flight, by worker
        self._handoffs: set[asyncio.Future[bool]] = set()  # being spilled by a worker
        self._drainer: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"forward-{i}")
            for i in range(self._config.max_connections)
        ]
        if self._spill is not None:
            self._drainer = asyncio.create_task(
                self._spill.run(self.deliver_once), name="outbox-drain"
            )

    @property
    def full(self) -> bool:
        """Nothing more can be held now: the queue is full and so is the spill. The server
        then sheds new beacons, before spending any work on them."""
        if self._durable is not None:
            return not self._durable.has_room()
        return self._queue.full() and (self._spill is None or not self._spill.has_room())

    async def put(self, request: OutboundRequest) -> bool:
        """Hold a sanitised request: queued, or spilled when the queue is full. False when
        neither can take it: the caller has not answered yet, so it drops the beacon
        (reason ``queue_full``) instead of accepting one it would lose."""
        accepted_at = time.time()
        if self._durable is not None:
            # Durable acknowledgement: held once Redis has it, delivered from the stream.
            return await self._durable.commit(request, accepted_at)
        if not self._closing:
            try:
                self._queue.put_nowait((request, accepted_at))
            except asyncio.QueueFull:
                pass
            else:
                self._metrics.queue_depth.set(self._queue.qsize())
                return True
        return await self._spill_one(request, accepted_at, "queue_full", count_loss=False)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._current)

    async def _spill_one(
        self, request: OutboundRequest, accepted_at: float, reason: str, *, count_loss: bool = True
    ) -> bool:
        held = False
        if self._spill is not None:
            try:
                held = await self._spill.put(request, accepted_at)
            except Exception:
                log.exception("outbox error")
        if held:
            self._metrics.spilled(reason)
        elif count_loss:
            self._metrics.lost(reason)
        return held

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            if task.cancelling():  # raise_if_cancelled(), this loop's task being known
                raise asyncio.CancelledError
            entry = await self._queue.get()
            self._current[task] = entry
            try:
                if not await self._deliver(*entry):
                    del self._current[task]  # the spill holds it now, cancelled or not
                    await self._hand_off(entry)
            except asyncio.CancelledError:
                raise  # a request still in _current is spilled by shutdown()
            except Exception:
                log.exception("forwarder error")
                self._metrics.lost("forward_error")
            self._current.pop(task, None)
            self._queue.task_done()
            self._metrics.queue_depth.set(self._queue.qsize())

    async def _deliver(self, request: OutboundRequest, accepted_at: float) -> bool:
        """Send with retries; False when they are exhausted (the request is not settled)."""
        config = self._config
        for attempt in range(config.retries + 1):
            if attempt:
                cap = min(config.backoff_max, config.backoff_initial * 2 ** (attempt - 1))
                self._metrics.retries.inc()
                await asyncio.sleep(self._jitter(cap))
            if await self._attempt(request) is not None:
                return True
        return False

    async def _hand_off(self, entry: Entry) -> None:
        """Spill a request whose retries are exhausted, to the end even if the worker is
        cancelled: a put cut off after Redis applied it, and then spilled again by
        ``shutdown()`` as in flight, would be delivered twice. ``shutdown()`` waits for it."""
        handoff = asyncio.ensure_future(self._spill_one(*entry, "retries_exhausted"))
        self._handoffs.add(handoff)
        handoff.add_done_callback(self._handoffs.discard)
        await asyncio.shield(handoff)

    async def _attempt(self, request: OutboundRequest) -> bool | None:
        """One send. True: delivered; False: final answer (counted); None: worth a retry.
        Every attempt, from the queue or the outbox and failed or not, is timed."""
        started = time.perf_counter()
        try:
            status = await self._sender.send(request)
        except Unconfirmed:
            self._metrics.upstream_duration.observe(time.perf_counter() - started)
            self._metrics.upstream("error")
            if self._config.resend_unconfirmed:
                return None
            # Google may have taken it: sending it again could count its events twice.
            self._metrics.unconfirmed.inc()
            return False
        except (TimeoutError, aiohttp.ClientError, OSError):
            self._metrics.upstream_duration.observe(time.perf_counter() - started)
            self._metrics.upstream("error")
            return None
        self._metrics.upstream_duration.observe(time.perf_counter() - started)
        self._metrics.upstream(f"{status // 100}xx")
        if 200 <= status < 300:
            self._metrics.forwarded.inc()
            self._metrics.events_forwarded.inc(event_count(request))
            return True
        if retryable(status):
            return None
        # Google does not validate hits: a 4xx will not get better by repeating it.
        self._metrics.lost("rejected")
        return False

    async def deliver_once(self, request: OutboundRequest) -> bool:
        """For the spill's drain loop: True once the request is settled (delivered, or
        finally rejected); False when it should be tried again later."""
        try:
            return await self._attempt(request) is not None
        except Exception:
            # Not Google's answer but our own failure: retrying would fail the same way.
            log.exception("forwarder error")
            self._metrics.lost("forward_error")
            return True

    async def shutdown(self, deadline: float) -> int:
        """Deliver what is queued within ``deadline`` seconds, then spill the rest (queued
        and in flight). Without a durable spill, also wait for it to empty. Returns how
        many accepted requests are lost (counted as lost "shutdown")."""
        self._closing = True  # from now on, a late put goes straight to the spill
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), deadline)
        spill = self._spill
        while spill is not None and not spill.durable and loop.time() < end:
            await asyncio.sleep(SHUTDOWN_POLL)  # the drain loop delivers meanwhile
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.gather(*self._handoffs, return_exceptions=True)
        self._workers = []
        leftovers = list(self._current.values())
        self._current.clear()
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        self._metrics.queue_depth.set(0)
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
            self._drainer = None
        held = 0
        lost = 0
        if spill is not None:
            try:
                held = await spill.put_many(leftovers) if leftovers else 0
                lost = await spill.close()
            except Exception:
                log.exception("outbox error")
        lost += len(leftovers) - held
        if held:
            self._metrics.spilled("shutdown", held)
            log.info("spilled to the outbox at shutdown", extra={"count": held})
        if lost:
            self._metrics.lost("shutdown", lost)
        return lost
