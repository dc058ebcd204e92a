"""The aiohttp applications: public (``/g/collect``, ``/healthz``, ``/readyz``) and admin
(``/metrics``). ``init_app`` reads as a recipe; long-lived resources live in cleanup
contexts under typed keys, opened once and closed once."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.beacon import MAX_BODY
from proxy.client import ClientAddressResolver
from proxy.config import Config
from proxy.forward import HttpSender, Outbox, Sender, StdoutSender
from proxy.metrics import Metrics
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.pseudonym import Pseudonymizer
from proxy.state import MemoryState, SaltStore

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
PIPELINE = web.AppKey("pipeline", Pipeline)
OUTBOX = web.AppKey("outbox", Outbox)
RESOLVER = web.AppKey("resolver", ClientAddressResolver)
READY = web.AppKey("ready", asyncio.Event)

SHUTDOWN_DEADLINE = 10.0  # seconds to flush the outbox to Google on shutdown
STATUS_OF = {"malformed": 400, "too_large": 413}
CORS_METHODS = "GET, POST, OPTIONS"


def init_app(
    config: Config, metrics: Metrics | None = None, sender: Sender | None = None
) -> web.Application:
    """The public application. ``sender`` replaces the configured upstream (tests, explain)."""
    app = web.Application(client_max_size=MAX_BODY, handler_args={"access_log": None})
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[RESOLVER] = ClientAddressResolver(config.trusted_proxies)
    app[READY] = asyncio.Event()
    app.cleanup_ctx.append(_pipeline_ctx)
    app.cleanup_ctx.append(_outbox_ctx(sender))
    app.router.add_route("GET", "/g/collect", collect)
    app.router.add_route("POST", "/g/collect", collect)
    app.router.add_route("OPTIONS", "/g/collect", preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def init_admin_app(config: Config, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[_admin_auth(config.admin.token)])
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return app


def make_state(config: Config) -> SaltStore:
    return MemoryState()


def make_sender(config: Config) -> Sender:
    return StdoutSender() if config.dry_run else HttpSender(config.upstream)


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    state = make_state(config)
    pseudo = config.privacy.pseudonym
    pseudonymizer = Pseudonymizer(state, bits=pseudo.bits, rotation=pseudo.rotation_seconds)
    app[PIPELINE] = Pipeline(config, pseudonymizer)
    await pseudonymizer.current()  # the first beacon should not be the one to create a salt
    yield
    await state.close()


def _outbox_ctx(sender: Sender | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        real_sender = sender or make_sender(config)
        outbox = app[OUTBOX] = Outbox(real_sender, config.upstream, app[METRICS])
        outbox.start()
        app[READY].set()
        yield
        app[READY].clear()
        remaining = await outbox.drain(SHUTDOWN_DEADLINE)
        if remaining:
            log.error(
                "shutdown deadline passed with beacons undelivered",
                extra={"count": remaining, "deadline": SHUTDOWN_DEADLINE},
            )
            app[METRICS].lost("shutdown")
        await outbox.close()
        await real_sender.close()

    return outbox_ctx


def _cors(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin and origin in request.app[CONFIG].allowed_origins:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }
    return {}


async def collect(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.received.inc()
    headers = {"Cache-Control": "no-store", **_cors(request)}
    try:
        body = await request.read() if request.method == "POST" else b""
    except web.HTTPRequestEntityTooLarge:
        metrics.drop("too_large")
        return web.Response(status=413, headers=headers)
    h = request.headers
    incoming = IncomingRequest(
        query=request.rel_url.raw_query_string,
        body=body,
        cookie=h.get("Cookie"),
        user_agent=h.get("User-Agent"),
        gpc=h.get("Sec-GPC", "").strip() == "1",
        dnt=h.get("DNT", "").strip() == "1",
        client_ip=request.app[RESOLVER].resolve(request.remote, h.get("X-Forwarded-For")),
        origin=h.get("Origin"),
    )
    outcome = await request.app[PIPELINE].process(incoming)
    metrics.events.inc(outcome.events)
    if outcome.outbound is not None:
        if request.app[OUTBOX].put(outcome.outbound):
            metrics.accepted.labels(outcome.reason).inc()
    else:
        metrics.drop(outcome.reason)
    # The answer never waits for Google and never sets a cookie.
    return web.Response(status=STATUS_OF.get(outcome.reason, 204), headers=headers)


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
    if request.app[READY].is_set():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def _admin_auth(token: str | None) -> Middleware:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


async def run(config: Config, *, sender: Sender | None = None) -> None:
    """Serve both applications until SIGTERM/SIGINT, then shut down gracefully."""
    metrics = Metrics()
    app = init_app(config, metrics, sender)
    admin = init_admin_app(config, metrics)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(admin, access_log=None)]
    for runner in runners:
        await runner.setup()
    sites = [
        web.TCPSite(runners[0], config.listen.host, config.listen.port),
        web.TCPSite(runners[1], config.admin.host, config.admin.port),
    ]
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
    log.info("shutting down")
    app[READY].clear()
    for runner in reversed(runners):
        await runner.cleanup()
