"""The public application: /g/collect, /mp/collect, /gtag/js, /t.js, the advertising endpoints a
tag may call, /healthz and /readyz.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from proxy.config import Config
from proxy.delivery.forward import Sender
from proxy.ingest.beacon import MAX_BODY
from proxy.ingest.client import ClientAddressResolver
from proxy.ingest.cookies import join_cookie_lines
from proxy.observe.audit import AuditTrail, make_audit
from proxy.observe.metrics import Metrics
from proxy.pipeline import IncomingRequest
from proxy.server.keys import (
    AUDIT,
    CONFIG,
    HEALTH,
    METRICS,
    MP,
    OUTBOX,
    READY,
    RESOLVER,
    TAG,
    TRACKER,
    TURNS,
    VISITORS,
    Health,
)
from proxy.server.protocol import (
    PUBLIC_LIMITS,
    BodyTimeout,
    FastRoute,
    Runner,
    close_after_response,
)
from proxy.server.wiring import audit_ctx, mp_ctx, outbox_ctx, pipeline_ctx, spill_ctx, tag_ctx
from proxy.state.visitors import DailyVisitors
from proxy.tag.endpoints import is_ads_endpoint
from proxy.tag.service import ads_answer
from proxy.tag.tracker import PATH as TRACKER_PATH
from proxy.tag.tracker import Tracker

log = logging.getLogger(__name__)

STATUS_OF = {"malformed": 400, "too_large": 413}
STATUS_OF_DETAIL = {"query_too_long": 414}  # the query alone: the request line is too long
CORS_METHODS = "GET, POST, OPTIONS"


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
    app.cleanup_ctx.append(audit_ctx)  # first in, last out: records to the very end
    app.cleanup_ctx.append(pipeline_ctx)
    app.cleanup_ctx.append(spill_ctx)
    app.cleanup_ctx.append(outbox_ctx(sender))
    app.router.add_route("GET", "/g/collect", collect)
    app.router.add_route("POST", "/g/collect", collect)
    app.router.add_route("OPTIONS", "/g/collect", preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.tag.enabled:
        app.cleanup_ctx.append(tag_ctx)
        app.router.add_get("/gtag/js", serve_tag)
        app.router.add_get("/gtag/destination", serve_tag)
    if config.tag.tracker:
        app[TRACKER] = Tracker(config, app[METRICS])
        app.router.add_get(TRACKER_PATH, serve_tracker)
    if config.measurement_protocol.enabled:
        app.cleanup_ctx.append(mp_ctx)  # after the outbox it puts into
        app.router.add_post("/mp/collect", mp_collect)
        app.router.add_post("/debug/mp/collect", mp_debug)
    # Last: the advertising endpoints a Google tag may call are answered here, never
    # forwarded; any other path is a 404.
    for method in ("GET", "POST"):
        app.router.add_route(method, "/{tail:.*}", other_path)
    return app


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


async def collect(request: web.Request) -> web.StreamResponse:
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
        _child(metrics.accepted, outcome.reason).inc()
        metrics.location(outcome.location_level)
        request.app[VISITORS].add(outcome.pseudonym)
    else:
        metrics.drop(outcome.reason)
    audit.observe(outcome, incoming.query, sampled=sampled)
    # The answer never waits for Google and never sets a cookie.
    status = STATUS_OF_DETAIL.get(outcome.detail) or STATUS_OF.get(outcome.reason, 204)
    if status == 204 and len(headers) == 1:
        return _NoContent()
    return web.Response(status=status, headers=headers)


# Per counter, its labelled children by label.
_CHILDREN: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _child(counter: Any, label: str) -> Any:
    """``counter.labels(label)``, looked up once per counter and label: per beacon, the
    label comes from a bounded set (consent reasons)."""
    children = _CHILDREN.get(counter)
    if children is None:
        children = _CHILDREN[counter] = {}
    child = children.get(label)
    if child is None:
        child = children[label] = counter.labels(label)
    return child


class _NoContent(web.StreamResponse):
    """``collect``'s usual answer, ``204`` with ``Cache-Control: no-store``. To an HTTP/1.1
    request that keeps its connection its head is the bytes aiohttp would write (status
    line, Cache-Control, Date, Server), serialised once per second instead of built per
    beacon; to any other request, aiohttp's own path writes it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(status=204, headers=NO_STORE)

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        writer = request._payload_writer
        if (
            not _HEAD_BUFFERED
            or self._eof_sent
            or self._payload_writer is not None
            or request.version != HttpVersion11
            or not request.keep_alive
            or (request.method != "GET" and request.method != "POST")
            or writer._on_headers_sent is not None  # type: ignore[attr-defined]
        ):
            return await super().prepare(request)
        self._must_be_empty_body = True
        self._req = request
        self._keep_alive = True
        self._payload_writer = writer
        await request._prepare_hook(self)  # on_response_prepare, as aiohttp sends it
        writer._headers_buf = _no_content_head()  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]
        return writer


NO_STORE = {"Cache-Control": "no-store"}
# aiohttp's writer holds a response's head until its body or end (3.12 on): the prepared head
# is handed over the same way. An aiohttp without it takes its own path.
_HEAD_BUFFERED = hasattr(StreamWriter, "_send_headers_with_payload")
_HEAD: list[bytes | str] = ["", b""]  # the Date it was made with, the head


def _no_content_head() -> bytes:
    date = rfc822_formatted_time()
    if date != _HEAD[0]:
        headers = CIMultiDict(NO_STORE)
        headers[hdrs.DATE] = date
        headers[hdrs.SERVER] = SERVER_SOFTWARE
        _HEAD[:] = [date, _serialize_headers("HTTP/1.1 204 No Content", headers)]
    return _HEAD[1]  # type: ignore[return-value]


async def mp_collect(request: web.Request) -> web.Response:
    return await request.app[MP].collect(request)


async def mp_debug(request: web.Request) -> web.Response:
    return await request.app[MP].debug(request)


async def serve_tag(request: web.Request) -> web.Response:
    return await request.app[TAG].handle(request)


async def serve_tracker(request: web.Request) -> web.Response:
    return request.app[TRACKER].handle(request)


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

    return runner(app, refused, _CollectRoute(app))


class _CollectRoute:
    """``/g/collect`` (GET and POST) without the router and the middleware chain per beacon:
    the route's match resolved once per method, then handed to ``collect`` under
    ``_never_500``, exactly as the application would. Anything else, a request that expects
    ``100-continue`` or an application with other middlewares: routed as usual."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._matched: dict[str, web.UrlMappingMatchInfo] = {}
        self._usable: bool | None = None  # known at the first request (the app is frozen)

    def __call__(self, request: BaseRequest) -> Awaitable[web.StreamResponse] | None:
        method = request.method
        if (method != "POST" and method != "GET") or request.rel_url.path_safe != "/g/collect":
            return None
        if hdrs.EXPECT in request.headers:
            return None
        matched = self._matched.get(method)
        if matched is None:
            return self._first(request)
        request._match_info = matched  # type: ignore[attr-defined]
        return _never_500(request, collect)  # type: ignore[arg-type]

    async def _first(self, request: BaseRequest) -> web.StreamResponse:
        app = self._app
        if self._usable is None:
            self._usable = tuple(app.middlewares) == (_never_500,)
        matched = await app.router.resolve(request)  # type: ignore[arg-type]
        if not self._usable or not isinstance(matched, web.UrlMappingMatchInfo) or (
            matched.handler is not collect
        ):
            return await app._handle(request)  # type: ignore[arg-type]
        matched.add_app(app)
        matched.freeze()
        self._matched[request.method] = matched
        request._match_info = matched  # type: ignore[attr-defined]
        return await _never_500(request, collect)  # type: ignore[arg-type]


def runner(
    app: web.Application,
    on_refused: Callable[[str], None] | None,
    fast_route: FastRoute | None = None,
) -> Runner:
    listen = app[CONFIG].listen
    return Runner(
        app,
        access_log=None,
        on_refused=on_refused,
        fast_route=fast_route,
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
