"""The dashboard on the admin port: what the privacy lead and operations see in a browser.

One page (``/dashboard/``) with the policy in plain words, live counts with a short history,
recent audit records and a "try a beacon" box that runs ``explain``. The page is static
HTML, CSS, vanilla JS and an SVG icon shipped as package data; everything it shows comes
from three JSON endpoints and is written into the page as text, never as HTML, under a
strict Content-Security-Policy. Nothing is fetched from anywhere but the admin port.

What it costs the beacon path: nothing. Counts are read from the ``Metrics`` the server
already keeps; the history is sampled every few seconds in the background; the explainer
is built once at start-up. What the operator pastes into the try-a-beacon box is used for
that one answer only: never logged, never stored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.config import Config
from proxy.observe.dashboard.counts import read_totals
from proxy.observe.dashboard.policy_words import describe_policy
from proxy.observe.dashboard.try_beacon import MAX_INPUT, BadInput, parse_explain_request
from proxy.observe.explain import Explainer
from proxy.observe.metrics import Metrics

log = logging.getLogger(__name__)

RecentAudit = Callable[[int], Awaitable[list[dict[str, Any]]]]

PREFIX = "/dashboard"
HISTORY_INTERVAL = 5.0  # seconds between samples of the totals (the page polls as often)
HISTORY_SIZE = 360  # samples kept: half an hour at 5 s
AUDIT_LIMIT = 25  # audit records shown
AUDIT_TIMEOUT = 2.0  # seconds: a slow audit store must not hold the counts back
# Nothing inline, nothing from elsewhere: the page's own files and its own API only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The page's files, shipped as package data next to this module.
STATIC = resources.files("proxy.observe.dashboard") / "static"
FAVICON = "favicon.svg"  # the page links it; the admin port's /favicon.ico is the same
STATIC_FILES = {
    "/": ("dashboard.html", "text/html"),
    "/app.js": ("dashboard.js", "text/javascript"),
    "/style.css": ("dashboard.css", "text/css"),
    "/favicon.svg": (FAVICON, "image/svg+xml"),
}


async def no_audit(limit: int) -> list[dict[str, Any]]:
    """The provider until an audit trail is connected: no records."""
    return []



class Dashboard:
    """The page's state: the policy described once, the explainer built once, the history
    of totals sampled in the background."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        recent_audit: RecentAudit,
        interval: float = HISTORY_INTERVAL,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._recent_audit = recent_audit
        self._interval = interval
        self._policy = describe_policy(config)
        self._history: deque[tuple[float, int, int, int]] = deque(maxlen=HISTORY_SIZE)
        self._explainer: Explainer | None = None
        self._files = {
            path: ((STATIC / name).read_bytes(), kind)
            for path, (name, kind) in STATIC_FILES.items()
        }

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: the explainer and the sampler live as long as the admin app."""
        self._explainer = Explainer(self._config)
        self.sample()  # the chart has a starting point before the first request
        sampler = asyncio.create_task(self._sample_forever(), name="dashboard-history")
        yield
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)

    def sample(self) -> None:
        totals = read_totals(self._metrics)
        dropped = sum(totals.dropped.values())
        self._history.append((time.time(), totals.received, totals.forwarded, dropped))

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.sample()
            except Exception:
                log.exception("dashboard sample failed", extra={"reason": "internal_error"})

    def file(self, path: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        body, kind = self._files[path]

        async def serve_file(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=kind, charset="utf-8")

        return serve_file

    async def policy(self, request: web.Request) -> web.Response:
        return web.json_response({"sections": self._policy})

    async def summary(self, request: web.Request) -> web.Response:
        totals = read_totals(self._metrics)
        records, available = await self._audit()
        return web.json_response(
            {
                "now": time.time(),
                "counts": totals.as_json(),
                "history": {"interval": self._interval, "samples": list(self._history)},
                "audit": {"available": available, "records": records},
            },
            dumps=_dumps,
        )

    async def _audit(self) -> tuple[list[dict[str, Any]], bool]:
        try:
            records = await asyncio.wait_for(self._recent_audit(AUDIT_LIMIT), AUDIT_TIMEOUT)
        except Exception:
            # Counts matter more than records: an unreachable store shows as "unavailable".
            log.warning("audit records unavailable", extra={"reason": "audit_unavailable"})
            return [], False
        return records[:AUDIT_LIMIT], True

    async def explain(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            # Also keeps other sites' plain forms from posting here with a browser's login.
            return _error(415, "send the input as application/json")
        raw = await _read_bounded(request, MAX_INPUT)
        if raw is None:
            return _error(413, f"input over {MAX_INPUT // (1 << 20)} MiB")
        try:
            data = json.loads(raw)
            beacons, total = parse_explain_request(data)
        except BadInput as exc:
            return _error(400, str(exc))
        except (ValueError, RecursionError):
            return _error(400, "the request is not valid JSON")
        explainer = self._explainer
        if explainer is None:
            return _error(503, "starting")
        results = []
        for beacon in beacons:
            try:
                outcome = await explainer.explain(beacon)
                result = explainer.to_json(outcome)
                result["text"] = explainer.to_text(outcome)
            except Exception:
                # The pipeline itself never raises; this is the last line. No input in logs.
                log.error("dashboard explain failed", extra={"reason": "internal_error"})
                return _error(400, "this input could not be explained")
            results.append(result)
        return web.json_response(
            {"results": results, "total": total, "shown": len(results)}, dumps=_dumps
        )


def _dumps(value: Any) -> str:
    # Audit records come from another module: anything not JSON becomes its text.
    return json.dumps(value, ensure_ascii=False, default=str)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None past ``limit`` bytes (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _guard(token: str | None) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # With no token the admin port is loopback-only, but a web page the operator visits
        # could still reach it under its own domain name (DNS rebinding): only loopback
        # names are answered then. With a token, the token protects it.
        if token is None and not _is_loopback_host(request.url.host):
            response: web.StreamResponse = web.Response(status=421, text="misdirected\n")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


def dashboard_app(
    config: Config,
    metrics: Metrics,
    recent_audit: RecentAudit = no_audit,
    interval: float = HISTORY_INTERVAL,
) -> web.Application:
    """The dashboard as a sub-application, mounted at ``/dashboard`` by the admin app
    (whose token middleware runs first)."""
    dash = Dashboard(config, metrics, recent_audit, interval)
    app = web.Application(middlewares=[_guard(config.admin.token)])
    app.cleanup_ctx.append(dash.running)
    for path in STATIC_FILES:
        app.router.add_get(path, dash.file(path))
    app.router.add_get("/api/policy", dash.policy)
    app.router.add_get("/api/summary", dash.summary)
    app.router.add_post("/api/explain", dash.explain)
    return app


def register(
    app: web.Application, config: Config, metrics: Metrics, recent_audit: RecentAudit = no_audit
) -> None:
    """Mount the dashboard on the admin app, with ``/`` and ``/dashboard`` leading to it."""

    async def to_dashboard(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{PREFIX}/")

    icon = (STATIC / FAVICON).read_bytes()

    async def favicon(request: web.Request) -> web.Response:
        # Where a browser looks first; an SVG, which every current browser takes there.
        return web.Response(body=icon, content_type="image/svg+xml", headers=SECURITY_HEADERS)

    # Before the sub-application, which would otherwise answer its bare prefix with a 404.
    app.router.add_get("/", to_dashboard)
    app.router.add_get(PREFIX, to_dashboard)
    app.router.add_get("/favicon.ico", favicon)
    app.add_subapp(PREFIX, dashboard_app(config, metrics, recent_audit))
