"""The aiohttp applications: public (``/g/collect``, ``/gtag/js``, the advertising endpoints
the tag may call, ``/healthz``, ``/readyz``) and admin
(``/metrics``, ``/audit``, ``/dashboard/``). ``init_app`` reads as a recipe; long-lived
resources live in cleanup contexts under typed keys, opened once and closed once.

Shutdown (``run``, on SIGTERM): readiness turns false first while serving goes on for
``upstream.shutdown_grace``; then the listening sockets close, requests in progress finish,
and the outbox delivers what it holds within ``upstream.shutdown_deadline``, spilling the
rest to the durable outbox (Redis) for another replica to deliver."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy import dashboard
from proxy.audit import AuditTrail, AuditUnavailable, make_audit, parse_page
from proxy.beacon import MAX_BODY
from proxy.client import ClientAddressResolver
from proxy.config import Config
from proxy.consent.registry import source_type
from proxy.cookies import join_cookie_lines
from proxy.dashboard import RecentAudit, no_audit
from proxy.forward import HttpSender, Outbox, Sender, StdoutSender
from proxy.geo import GeoDatabase
from proxy.geo_index import Representatives
from proxy.mesh import MemoryCellCounter, RedisCellCounter
from proxy.metrics import Metrics
from proxy.periodic import raise_if_cancelled
from proxy.pipeline import DROP_REASONS, IncomingRequest, Pipeline
from proxy.protocol import PUBLIC_LIMITS, BodyTimeout, Runner, close_after_response
from proxy.pseudonym import Pseudonymizer
from proxy.ratelimit import RateLimiter, RedisCounters
from proxy.spill import MemorySpill, RedisSpill, Spill
from proxy.state import MemoryState, SaltStore
from proxy.tag.endpoints import is_ads_endpoint
from proxy.tag.service import TagService, ads_answer
from proxy.transport import FastSender
from proxy.turns import InTurn
from proxy.visitors import DailyVisitors

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
PIPELINE = web.AppKey("pipeline", Pipeline)
TURNS = web.AppKey("turns", InTurn)
OUTBOX = web.AppKey("outbox", Outbox)
RESOLVER = web.AppKey("resolver", ClientAddressResolver)
READY = web.AppKey("ready", asyncio.Event)  # set while the upstream sender is open
SPILL: web.AppKey[Spill] = web.AppKey("spill")
AUDIT = web.AppKey("audit", AuditTrail)
VISITORS = web.AppKey("visitors", DailyVisitors)
TAG = web.AppKey("tag", TagService)


@dataclass
class Health:
    """What /readyz answers from: kept current in the background, never probed per request."""

    shutting_down: bool = False
    redis_ok: bool | None = None  # None: no Redis configured


HEALTH = web.AppKey("health", Health)

PROBE_INTERVAL = 1.0  # seconds between Redis PINGs (readiness) and outbox depth readings
PROBE_TIMEOUT = 1.0
REDIS_POOL_SIZE = 16  # connections per process for the outbox; callers wait for a free one
REDIS_TIMEOUT = 2.0  # seconds for a connection, a free pool slot or an answer
STATUS_OF = {"malformed": 400, "too_large": 413}
STATUS_OF_DETAIL = {"query_too_long": 414}  # the query alone: the request line is too long
CORS_METHODS = "GET, POST, OPTIONS"
ADMIN_REALM = "analytics-proxy"


def init_app(
    config: Config,
    metrics: Metrics | None = None,
    sender: Sender | None = None,
    audit: AuditTrail | None = None,
    visitors: DailyVisitors | None = None,
) -> web.Application:
    """The public application. ``sender`` replaces the configured upstream (tests, explain);
    ``audit`` and ``visitors`` are shared with the admin application, which serves them."""
    app = web.Application(
        client_max_size=MAX_BODY,
        handler_args={"access_log": None, **PUBLIC_LIMITS},
        middlewares=[_never_500],
    )
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[RESOLVER] = ClientAddressResolver(config.trusted_proxies, config.forwarded_header)
    app[READY] = asyncio.Event()
    app[HEALTH] = Health()
    app[AUDIT] = audit if audit is not None else make_audit(config, app[METRICS])
    app[VISITORS] = visitors if visitors is not None else DailyVisitors()
    app.cleanup_ctx.append(_audit_ctx)  # first in, last out: records to the very end
    app.cleanup_ctx.append(_pipeline_ctx)
    app.cleanup_ctx.append(_spill_ctx)
    app.cleanup_ctx.append(_outbox_ctx(sender))
    app.router.add_route("GET", "/g/collect", collect)
    app.router.add_route("POST", "/g/collect", collect)
    app.router.add_route("OPTIONS", "/g/collect", preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.tag.enabled:
        app.cleanup_ctx.append(_tag_ctx)
        app.router.add_get("/gtag/js", serve_tag)
        app.router.add_get("/gtag/destination", serve_tag)
    # Last: the advertising endpoints a Google tag may call are answered here, never
    # forwarded; any other path is a 404.
    for method in ("GET", "POST"):
        app.router.add_route(method, "/{tail:.*}", other_path)
    return app


def init_admin_app(
    config: Config,
    metrics: Metrics,
    audit: AuditTrail | None = None,
    recent_audit: RecentAudit | None = None,
    visitors: DailyVisitors | None = None,
) -> web.Application:
    """The admin application: /metrics, /audit and the dashboard, behind the admin token.
    The dashboard shows ``recent_audit`` (default: the audit trail's recent records)."""
    app = web.Application(middlewares=[_admin_auth(config.admin.token)])
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    if audit is not None:
        app[AUDIT] = audit
        app.router.add_get("/audit", audit_handler)
    if recent_audit is None:
        recent_audit = audit.recent if audit is not None else no_audit
    app[CONFIG] = config
    app[VISITORS] = visitors if visitors is not None else DailyVisitors()
    app.router.add_get("/report", report_handler)
    dashboard.register(app, config, metrics, recent_audit)
    return app


def make_state(config: Config) -> SaltStore:
    """Redis when configured (several replicas share salts), else process memory."""
    if config.state.redis_url:
        # Imported only when configured: a single embedded process never loads the client.
        from proxy.redis_state import RedisState

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


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    audit = app[AUDIT]
    await audit.start()
    yield
    await audit.close()


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
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


async def _spill_ctx(app: web.Application) -> AsyncIterator[None]:
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


async def _tag_ctx(app: web.Application) -> AsyncIterator[None]:
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


def _outbox_ctx(sender: Sender | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
        config, metrics = app[CONFIG], app[METRICS]
        real_sender = sender or make_sender(config)
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


def begin_shutdown(app: web.Application) -> None:
    """Readiness turns false first, while requests are still served."""
    app[HEALTH].shutting_down = True


@web.middleware
async def _never_500(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The last line of defence: nothing was forwarded (the pipeline returns outcomes, it does
    not raise), so an unexpected error becomes a counted 503, never a 500 with a trace."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request handler error", extra={"reason": "internal_error"})
        request.app[METRICS].drop("internal_error")
        request.app[AUDIT].observe_drop("internal_error", request.rel_url.raw_query_string)
        return web.Response(status=503, headers={"Cache-Control": "no-store"})


def _cors(request: web.Request) -> dict[str, str]:
    """CORS for a listed origin, or for any origin when ``allowed_origins`` is empty (as the
    pipeline then takes beacons from any origin). Credentials are allowed, so the Origin is
    echoed, never ``*``: the answer is an empty 204, nothing another site could read."""
    origin = request.headers.get("Origin")
    allowed = request.app[CONFIG].allowed_origins
    if origin and (not allowed or origin in allowed):
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }
    return {}


async def collect(request: web.Request) -> web.Response:
    metrics, audit, outbox = request.app[METRICS], request.app[AUDIT], request.app[OUTBOX]
    metrics.received.inc()
    headers = {"Cache-Control": "no-store", **_cors(request)}
    if outbox.full:
        # Overloaded for longer than the queue and the outbox could absorb: shed the beacon
        # before spending work on it, and say so (503), rather than accept one to lose.
        return _shed(request, headers)
    try:
        body = await request.read() if request.method == "POST" else b""
    except web.HTTPRequestEntityTooLarge:
        metrics.drop("too_large")
        audit.observe_drop("too_large", request.rel_url.raw_query_string)
        return web.Response(status=413, headers=headers)
    except (web.RequestPayloadError, HttpProcessingError):
        # A body the parser could not read (broken chunked encoding, an undecodable
        # Content-Encoding): the client's fault, never a 503.
        return _client_fault(request, "malformed", 400, headers)
    except BodyTimeout:
        return _client_fault(request, "timeout", 408, headers)
    except ConnectionError:
        # The client went away mid-upload: nobody reads the answer, but it is counted.
        return _client_fault(request, "client_aborted", 400, headers)
    h = request.headers
    incoming = IncomingRequest(
        query=request.rel_url.raw_query_string,
        body=body,
        cookie=join_cookie_lines(h.getall("Cookie", ())),
        user_agent=h.get("User-Agent"),
        gpc=h.get("Sec-GPC", "").strip() == "1",
        dnt=h.get("DNT", "").strip() == "1",
        client_ip=request.app[RESOLVER].resolve(request.remote, h),
        origin=h.get("Origin"),
    )
    # Per-parameter changes are traced only for the audit's sample: tracing costs.
    sampled = audit.sample()
    outcome = await request.app[TURNS].process(incoming, trace=sampled)
    metrics.events.inc(outcome.events)
    if outcome.consent is not None:
        metrics.consent(outcome.consent)
    if outcome.outbound is not None:
        if not await outbox.put(outcome.outbound):
            return _shed(request, headers)
        metrics.accepted.labels(outcome.reason).inc()
        metrics.location(outcome.location_level)
        request.app[VISITORS].add(outcome.pseudonym)
    else:
        metrics.drop(outcome.reason)
    audit.observe(outcome, incoming.query, sampled=sampled)
    # The answer never waits for Google and never sets a cookie.
    status = STATUS_OF_DETAIL.get(outcome.detail) or STATUS_OF.get(outcome.reason, 204)
    return web.Response(status=status, headers=headers)


async def serve_tag(request: web.Request) -> web.Response:
    return await request.app[TAG].handle(request)


async def other_path(request: web.Request) -> web.Response:
    """An advertising endpoint the tag called: answered as the tag expects, counted, audited,
    never forwarded (the body is not even read). Anything else: 404."""
    if not is_ads_endpoint(request.path):
        return web.Response(status=404, headers={"Cache-Control": "no-store"})
    request.app[METRICS].received.inc()
    request.app[METRICS].drop("ads_endpoint")
    request.app[AUDIT].observe_drop("ads_endpoint", request.rel_url.raw_query_string)
    response = ads_answer(request)
    response.headers.update(_cors(request))
    return response


def public_runner(app: web.Application) -> Runner:
    """The public application's runner. A request aiohttp refuses before any handler runs
    (request line or headers too long, unparseable) is a dropped beacon: counted, audited."""
    metrics, audit = app[METRICS], app[AUDIT]

    def refused(reason: str) -> None:
        metrics.received.inc()
        metrics.drop(reason)
        audit.observe_drop(reason)

    return _runner(app, refused)


def admin_runner(app: web.Application) -> Runner:
    """The admin application's runner: refused requests are answered the same way (no
    address in the logs) but are not beacons, so not counted. Same read timeouts."""
    return _runner(app, None)


def _runner(app: web.Application, on_refused: Callable[[str], None] | None) -> Runner:
    listen = app[CONFIG].listen
    return Runner(
        app,
        access_log=None,
        on_refused=on_refused,
        header_timeout=listen.header_timeout,
        body_timeout=listen.body_timeout,
        keepalive_timeout=listen.keepalive_timeout,
    )


def _client_fault(
    request: web.Request, reason: str, status: int, headers: dict[str, str]
) -> web.Response:
    """A body the client broke, abandoned or sent too slowly: counted under its own reason
    (never internal_error), answered, and the connection closed without reading on."""
    request.app[METRICS].drop(reason)
    request.app[AUDIT].observe_drop(reason, request.rel_url.raw_query_string)
    close_after_response(request)
    response = web.Response(status=status, headers=headers)
    response.force_close()
    return response


def _shed(request: web.Request, headers: dict[str, str]) -> web.Response:
    request.app[METRICS].drop("queue_full")
    request.app[AUDIT].observe_drop("queue_full", request.rel_url.raw_query_string)
    return web.Response(status=503, headers={**headers, "Retry-After": "1"})


async def preflight(request: web.Request) -> web.Response:
    cors = _cors(request)
    if not cors:
        return web.Response(status=403)
    cors.update(
        {
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "86400",
        }
    )
    return web.Response(status=204, headers=cors)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    reason = not_ready_reason(request.app)
    if reason is None:
        return web.Response(text="ready\n")
    return web.Response(status=503, text=f"{reason}\n")


def not_ready_reason(app: web.Application) -> str | None:
    health = app[HEALTH]
    if health.shutting_down:
        return "shutting down"
    if not app[READY].is_set():
        return "starting"
    if health.redis_ok is False:
        # Beacons are still accepted (held in memory): degraded, so not ready for more.
        return "redis unreachable"
    return None


async def report_handler(request: web.Request) -> web.Response:
    """``GET /report?format=md|html|json``: the transfer report at the observed volume."""
    from proxy.report import build_report, render

    fmt = request.query.get("format", "html")
    if fmt not in REPORT_TYPES:
        return web.json_response({"error": "format: md, html or json"}, status=400)
    try:
        observed = await request.app[VISITORS].observed()
    except Exception:
        observed = None  # the shared count is unreachable: the report says it is illustrative
    report = build_report(request.app[CONFIG], observed=observed[0] if observed else None)
    return web.Response(text=render(report, fmt), content_type=REPORT_TYPES[fmt],
                        headers={"Cache-Control": "no-store"})


REPORT_TYPES = {"md": "text/markdown", "html": "text/html", "json": "application/json"}


async def audit_handler(request: web.Request) -> web.Response:
    """``GET /audit?limit=N&after=<id>``: records oldest first, as ``audit tail`` reads them."""
    trail = request.app[AUDIT]
    try:
        limit, after = parse_page(request.query, trail)
    except ValueError as exc:
        return web.Response(status=400, text=f"{exc}\n")
    try:
        records = await (trail.after(after, limit) if after else trail.recent(limit))
    except AuditUnavailable as exc:
        return web.Response(status=503, text=f"{exc}\n")
    body = {"storage": trail.storage, "newest": trail.newest_id(), "records": records}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def _admin_auth(token: str | None) -> Middleware:
    """The admin token, as ``Authorization: Bearer <token>`` (scrapers) or as the password
    of HTTP Basic auth with any user name (a browser's login prompt). No token: open, which
    config validation allows on a loopback address only."""
    expected = token.encode() if token else None
    challenge = CIMultiDict(
        [("WWW-Authenticate", f'Basic realm="{ADMIN_REALM}"'),
         ("WWW-Authenticate", f'Bearer realm="{ADMIN_REALM}"')]
    )

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None:
            given = _admin_credential(request.headers.get("Authorization", ""))
            if not hmac.compare_digest(given, expected):
                return web.Response(
                    status=401, text="401: the admin token is required\n", headers=challenge
                )
        return await handler(request)

    return auth


def _admin_credential(header: str) -> bytes:
    """The token an Authorization header carries, or b"" (never a match)."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip().encode()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return b""
        return decoded.partition(b":")[2]  # any user name; the password is the token
    return b""


async def run(
    config: Config,
    *,
    sender: Sender | None = None,
    reuse_port: bool = False,
    serve_admin: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. With ``--workers`` every
    worker shares the public port (``reuse_port``) and only one serves the admin port."""
    metrics = Metrics(primary=serve_admin)  # worker 0 reports the shared outbox
    audit = make_audit(config, metrics)
    visitors = DailyVisitors()
    app = init_app(config, metrics, sender, audit, visitors)
    runners = [public_runner(app)]
    if serve_admin:
        admin = init_admin_app(config, metrics, audit, visitors=visitors)
        runners.append(admin_runner(admin))
    for runner in runners:
        await runner.setup()
    sites = [
        web.TCPSite(
            runners[0], config.listen.host, config.listen.port, reuse_port=reuse_port or None
        )
    ]
    if serve_admin:
        sites.append(web.TCPSite(runners[1], config.admin.host, config.admin.port))
    for site in sites:
        await site.start()
    log.info(
        "serving",
        extra={
            "host": config.listen.host,
            "port": config.listen.port,
            "profile": config.privacy.profile,
            "upstream": "dry-run" if config.dry_run else config.upstream.url,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    up = config.upstream
    log.info("shutting down", extra={"deadline": up.shutdown_deadline})
    begin_shutdown(app)
    # Still serving: load balancers see /readyz fail and stop sending before we stop.
    await asyncio.sleep(up.shutdown_grace)
    # Public first: stop accepting, finish requests in progress, then the outbox's
    # shutdown (cleanup contexts). Admin last, so /metrics can be read to the end.
    for runner in runners:
        await runner.cleanup()
