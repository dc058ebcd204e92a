"""The admin application: /metrics, /audit, /report and the dashboard, behind a token when it
listens beyond loopback.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict

from proxy.config import Config
from proxy.observe import dashboard
from proxy.observe.audit import AuditTrail, AuditUnavailable, parse_page
from proxy.observe.dashboard import RecentAudit, no_audit
from proxy.observe.metrics import Metrics
from proxy.server.keys import AUDIT, CONFIG, METRICS, VISITORS
from proxy.server.protocol import (
    Runner,
)
from proxy.server.public import runner
from proxy.state.visitors import DailyVisitors

ADMIN_REALM = "analytics-proxy"


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


def admin_runner(app: web.Application) -> Runner:
    """The admin application's runner: refused requests are answered the same way (no
    address in the logs) but are not beacons, so not counted. Same read timeouts."""
    return runner(app, None)


async def report_handler(request: web.Request) -> web.Response:
    """``GET /report?format=md|html|json``: the transfer report at the observed volume."""
    from proxy.observe.report import build_report, render

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
