"""What an application is built from: state, sender, limiter, Redis, the outbox, and the start-up
and shutdown of each (aiohttp cleanup contexts).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.config import Config
from proxy.consent.registry import source_type
from proxy.delivery.forward import HttpSender, Outbox, Sender, StdoutSender
from proxy.delivery.outbox import MemorySpill, Spill
from proxy.delivery.redis_outbox import RedisSpill
from proxy.delivery.transport import FastSender
from proxy.location.geo import GeoDatabase
from proxy.location.geo_index import Representatives
from proxy.location.mesh import MemoryCellCounter, RedisCellCounter
from proxy.mp import delivery as mp_delivery
from proxy.mp.credentials import load_credentials
from proxy.observe.metrics import Metrics
from proxy.pipeline import DROP_REASONS, Pipeline
from proxy.server.keys import (
    AUDIT,
    CONFIG,
    HEALTH,
    METRICS,
    MP,
    OUTBOX,
    PIPELINE,
    READY,
    SPILL,
    TAG,
    TURNS,
    VISITORS,
    Health,
)
from proxy.server.mp import MeasurementProtocolService
from proxy.server.turns import InTurn
from proxy.state.periodic import raise_if_cancelled
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.ratelimit import RateLimiter, RedisCounters
from proxy.state.salts import MemoryState, SaltStore
from proxy.tag.service import TagService

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0  # seconds between Redis PINGs (readiness) and outbox depth readings
PROBE_TIMEOUT = 1.0
REDIS_POOL_SIZE = 16  # connections per process for the outbox; callers wait for a free one
REDIS_TIMEOUT = 2.0  # seconds for a connection, a free pool slot or an answer


def make_state(config: Config) -> SaltStore:
    """Redis when configured (several replicas share salts), else process memory."""
    if config.state.redis_url:
        # Imported only when configured: a single embedded process never loads the client.
        from proxy.state.redis import RedisState

        return RedisState(config.state.redis_url)
    return MemoryState()


def make_sender(config: Config) -> Sender:
    if config.dry_run:
        return StdoutSender()
    if config.upstream.client == "aiohttp":
        return HttpSender(config.upstream)
    return FastSender(config.upstream)


def make_limiter(config: Config, state: SaltStore) -> RateLimiter | None:
    """Counts shared through the salt store's Redis when there is one, else in memory."""
    limit = config.rate_limit
    if not limit.per_network:
        return None
    client = getattr(state, "client", None)
    store = RedisCounters(client) if client is not None else None  # memory: no store needed
    return RateLimiter(limit.per_network, limit.window_seconds, store)


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    audit = app[AUDIT]
    await audit.start()
    yield
    await audit.close()


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    config, metrics = app[CONFIG], app[METRICS]
    state = make_state(config)
    pseudo = config.privacy.pseudonym
    pseudonymizer = Pseudonymizer(
        state, bits=pseudo.bits, rotation=pseudo.rotation_seconds, on_key=metrics.observe_salt
    )
    metrics.sample(metrics.salt_age, pseudonymizer.salt_age)
    limiter = make_limiter(config, state)
    geo = GeoDatabase(config.geo.database) if config.geo.database else None
    location = config.privacy.location
    representatives = cells = None
    if geo is not None and location.mode in ("country", "mesh"):
        representatives = Representatives()
    if location.mode == "mesh":
        client = getattr(state, "client", None)
        cells = (
            RedisCellCounter(client, location.k, location.window_seconds)
            if client is not None
            else MemoryCellCounter(location.k, location.window_seconds)
        )
    app[PIPELINE] = Pipeline(
        config,
        pseudonymizer,
        limiter=limiter,
        geo=geo,
        representatives=representatives,
        cells=cells,
    )
    app[TURNS] = InTurn(app[PIPELINE])
    if config.bots.allow_headless:
        # Meant for a site's own end-to-end tests: said at start, so it is not left on unseen.
        log.warning("bots.allow_headless is on: headless Chromium's beacons are forwarded")
    metrics.track_parameters(app[PIPELINE].sanitizer.counts)
    metrics.init_consent(source_type(options) for options in config.consent.sources)
    metrics.init_drop_reasons(DROP_REASONS)
    metrics.salt_rotation.set(pseudo.rotation_seconds)
    tasks = []
    if limiter is not None:
        tasks.append(asyncio.create_task(limiter.run(), name="rate-limit"))
    if isinstance(cells, RedisCellCounter):
        tasks.append(asyncio.create_task(cells.run(), name="mesh-counts"))
    client = getattr(state, "client", None)
    if client is not None:  # the daily visitor count is shared by replicas
        app[VISITORS].share(client)
        tasks.append(asyncio.create_task(app[VISITORS].run(), name="visitors"))
    if geo is not None:
        rebuild = None
        if representatives is not None:
            # Built in a child process and cached per database version: until it is ready
            # the location is omitted, never the visitor's own address.
            reps = representatives

            async def rebuild() -> None:
                await reps.build(geo.path, config.geo.index_cache)

            tasks.append(asyncio.create_task(rebuild(), name="geo-index"))
        tasks.append(asyncio.create_task(geo.watch(on_reload=rebuild), name="geo-reload"))
    if geo is not None:
        metrics.sample(metrics.geo_age, geo.age)
    # The first beacon should not be the one to create a salt. Never raises: an unreachable
    # store means a local salt, and serving goes on.
    await pseudonymizer.current()
    yield
    for task in tasks:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if geo is not None:
        geo.close()
    await pseudonymizer.close()
    await state.close()


def make_redis(url: str) -> Redis:
    """The outbox's own client: a bounded pool, short timeouts and a single quick retry (a
    pooled connection may have gone stale), so an unreachable Redis fails fast to memory.

    The retry is for connection errors only, never for a timeout: a command that timed out
    may have run, and an XADD run twice is a beacon delivered twice."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT + 3,  # above the drain loop's blocking read
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)


def make_spill(config: Config, metrics: Metrics, client: Redis | None) -> Spill:
    state, up = config.state, config.upstream
    if client is None:
        return MemorySpill(
            state.memory_outbox_size,
            max_age=state.outbox_max_age_seconds,
            metrics=metrics,
            backoff_initial=up.backoff_initial,
            backoff_max=up.backoff_max,
        )
    return RedisSpill(
        client,
        stream_maxlen=state.outbox_maxlen,
        max_age=state.outbox_max_age_seconds,
        claim_idle=state.claim_idle,
        memory_size=state.memory_outbox_size,
        metrics=metrics,
        backoff_initial=up.backoff_initial,
        backoff_max=up.backoff_max,
    )


async def spill_ctx(app: web.Application) -> AsyncIterator[None]:
    config, metrics, health = app[CONFIG], app[METRICS], app[HEALTH]
    # A dry run never drains the shared outbox: it would print real replicas' beacons.
    url = None if config.dry_run else config.state.redis_url
    client = make_redis(url) if url else None
    spill = app[SPILL] = make_spill(config, metrics, client)
    # A shared stream's cap is reported by the primary only, so workers add up right.
    metrics.outbox_max_entries.set(spill.capacity if metrics.primary or not spill.shared else 0)
    if client is not None:
        health.redis_ok = await _ping(client)  # readiness is right from the first request
    probe = asyncio.create_task(_probe(client, spill, health, metrics), name="readiness")
    yield
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    metrics.refresh()  # the last second's counts, while /metrics can still be read
    await spill.close()  # normally done by the outbox's shutdown already; idempotent
    if client is not None:
        await client.aclose()


async def _ping(client: Redis) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), PROBE_TIMEOUT))
    except (RedisError, OSError, TimeoutError):
        return False


async def _probe(client: Redis | None, spill: Spill, health: Health, metrics: Metrics) -> None:
    while True:
        raise_if_cancelled()
        await asyncio.sleep(PROBE_INTERVAL)
        if client is not None:
            ok = await _ping(client)
            if ok and health.redis_ok is False:
                log.info("redis reachable again")
            elif not ok and health.redis_ok:
                log.warning("redis unreachable, not ready")
            health.redis_ok = ok
        try:
            metrics.outbox_depth.set(await spill.depth(include_shared=metrics.primary))
        except Exception:
            log.exception("outbox depth unavailable")
        metrics.refresh()


async def tag_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    url = config.state.redis_url
    # Its own small client: tag bodies are bytes, and a slow Redis must not hold a tag.
    client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0) if url else None
    if config.tag.public_url is None:
        log.warning("tag.public_url is not set: /gtag/js is served to loopback requests only")
    tag = app[TAG] = TagService(config, app[METRICS], client)
    yield
    await tag.close()
    if client is not None:
        await client.aclose()


def outbox_ctx(sender: Sender | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
        config, metrics = app[CONFIG], app[METRICS]
        # Measurement Protocol entries leave by their own endpoint, with Google's secret.
        real_sender = mp_delivery.route(config, sender or make_sender(config))
        durable = config.state.durable_ack and not config.dry_run
        outbox = app[OUTBOX] = Outbox(
            real_sender, config.upstream, metrics, spill=app[SPILL], durable=durable
        )
        outbox.start()
        app[READY].set()
        yield
        app[READY].clear()
        deadline = config.upstream.shutdown_deadline
        lost = await outbox.shutdown(deadline)
        if lost:
            # Only possible without a reachable Redis: reported, never silent.
            log.error(
                "shutdown deadline passed with beacons undelivered",
                extra={"count": lost, "deadline": deadline},
            )
        await real_sender.close()

    return outbox_ctx


async def mp_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[MP] = MeasurementProtocolService(
        config, app[PIPELINE], app[OUTBOX], app[METRICS], app[AUDIT], app[VISITORS],
        load_credentials(os.environ, config.measurement_ids),
    )
    yield


def begin_shutdown(app: web.Application) -> None:
    """Readiness turns false first, while requests are still served."""
    app[HEALTH].shutting_down = True
