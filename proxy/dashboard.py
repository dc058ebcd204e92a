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
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric

from proxy import metrics as metrics_module
from proxy.client import parse_address, truncate
from proxy.config import Config
from proxy.consent.registry import source_type
from proxy.explain import BeaconInput, Explainer, har_beacons
from proxy.metrics import NAMESPACE, Metrics
from proxy.pipeline import OutboundRequest
from proxy.policy import Action, Rule, compile_policy

log = logging.getLogger(__name__)

RecentAudit = Callable[[int], Awaitable[list[dict[str, Any]]]]

PREFIX = "/dashboard"
HISTORY_INTERVAL = 5.0  # seconds between samples of the totals (the page polls as often)
HISTORY_SIZE = 360  # samples kept: half an hour at 5 s
AUDIT_LIMIT = 25  # audit records shown
AUDIT_TIMEOUT = 2.0  # seconds: a slow audit store must not hold the counts back
MAX_INPUT = 1 << 20  # bytes accepted by the try-a-beacon box
MAX_HAR_BEACONS = 100  # beacons of one HAR explained; the rest are counted, not run
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
FAVICON = "favicon.svg"  # the page links it; the admin port's /favicon.ico is the same
STATIC_FILES = {
    "/": ("dashboard.html", "text/html"),
    "/app.js": ("dashboard.js", "text/javascript"),
    "/style.css": ("dashboard.css", "text/css"),
    "/favicon.svg": (FAVICON, "image/svg+xml"),
}
_COUNTERS = {
    "received": f"{NAMESPACE}_beacons_received",
    "accepted": f"{NAMESPACE}_beacons_accepted",
    "forwarded": f"{NAMESPACE}_beacons_forwarded",
    "dropped": f"{NAMESPACE}_beacons_dropped",
    "lost": f"{NAMESPACE}_beacons_lost",
}
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_NUMBERED = re.compile(r"^(\D+)(\d+)$")


async def no_audit(limit: int) -> list[dict[str, Any]]:
    """The provider until an audit trail is connected: no records."""
    return []


class BadInput(ValueError):
    """The try-a-beacon input cannot be explained. The message is fixed text, never the
    input itself, so it can be shown and logged safely."""


# Counts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    """Beacon totals since start-up (of every worker under ``--workers``)."""

    received: int
    accepted: int
    forwarded: int
    lost: int
    dropped: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "forwarded": self.forwarded,
            "lost": self.lost,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items(), key=lambda kv: -kv[1])),
        }


def read_totals(metrics: Metrics) -> Totals:
    """The counters as /metrics would show them: across workers in multiprocess mode."""
    if metrics_module.MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, metrics_module.MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        families: Iterable[Metric] = registry.collect()
    else:
        families = metrics.registry.collect()
    wanted = {name: key for key, name in _COUNTERS.items()}
    sums = dict.fromkeys(_COUNTERS, 0)
    dropped: dict[str, int] = {}
    for family in families:
        key = wanted.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            sums[key] += int(sample.value)
            if key == "dropped" and sample.value:  # every reason is exposed, most at 0
                reason = sample.labels.get("reason", "")
                dropped[reason] = dropped.get(reason, 0) + int(sample.value)
    return Totals(sums["received"], sums["accepted"], sums["forwarded"], sums["lost"], dropped)


# The policy in plain words -------------------------------------------------------------


def describe_policy(config: Config) -> list[dict[str, Any]]:
    """What the compiled configuration does, in sentences, section by section. Derived from
    ``Config`` and the compiled policy table, so it changes when they do."""
    privacy, consent = config.privacy, config.consent
    pseudo = privacy.pseudonym
    policy = compile_policy(privacy, config.allowed_origins)

    accepted = [
        f"Measurement IDs: {', '.join(config.measurement_ids)}; any other tid is dropped.",
        (
            f"Origins: {', '.join(config.allowed_origins)}; a beacon from another Origin is "
            "dropped."
            if config.allowed_origins
            else "Origins: any (allowed_origins is empty)."
        ),
        "Bots and automation (crawlers, headless browsers, HTTP libraries) are dropped.",
        (
            f"Rate limit: {config.rate_limit.per_network} beacons per client network "
            f"(IPv4 /24, IPv6 /48) per {config.rate_limit.window}."
            if config.rate_limit.per_network
            else "Rate limit: off."
        ),
    ]

    regimes = consent.regimes
    defaults = consent.defaults
    gpc = {
        "deny": "Sec-GPC: 1 drops the beacon, whatever the consent cookie says.",
        "ignore": "Sec-GPC is ignored.",
        "ignore_for_explicit_grant": (
            "Sec-GPC: 1 drops the beacon unless a source reports an explicit grant."
        ),
    }[consent.gpc]
    dnt = {
        "deny": "DNT: 1 drops the beacon.",
        "ignore": "DNT is ignored.",
    }[consent.dnt]
    consent_lines = [
        "Sources, in order: " + ", ".join(source_type(s) for s in consent.sources) + ".",
        "Any source saying denied wins; then any granted forwards; a consent manager's "
        "'granted without user action' counts only in opt-out regions and never with GPC.",
        f"With no signal — opt-in regions ({', '.join(regimes.opt_in) or 'none'}): "
        f"{defaults.opt_in}; opt-out regions ({', '.join(regimes.opt_out) or 'none'}): "
        f"{defaults.opt_out}; elsewhere: {defaults.other}; place unknown: {defaults.unknown}.",
        gpc,
        dnt,
        (
            "The visitor's place comes from the geo database (in memory only)."
            if config.geo.database
            else "No geo database: every visitor's place is unknown, so the 'place unknown' "
            "default applies."
        ),
    ]

    outbound_headers = ", ".join(OutboundRequest("", "", "").headers())
    leaves = [
        f"Profile: {privacy.profile}.",
        f"cid becomes a keyed hash of {pseudo.bits} bits; the key (salt) changes every "
        f"{pseudo.rotation} and is never stored with the data.",
        (
            "Beacons without a cid get a pseudonym from the truncated network and the "
            "generalised browser (cookieless)."
            if pseudo.cookieless
            else "Beacons without a cid are dropped."
        ),
        _location_sentence(config),
        "The User-Agent is rebuilt from browser family, major version and OS family.",
        f"Headers sent to Google: {outbound_headers} — nothing else.",
        *(f"{name} is always set to {value}." for name, value in policy.forced.items()),
    ]
    if config.internal_traffic.networks:
        leaves.append(
            f"Beacons from {len(config.internal_traffic.networks)} internal network(s) are "
            f"marked tt={config.internal_traffic.traffic_type}."
        )
    leaves += _parameter_lines(policy.table)

    upstream = config.upstream
    where = [
        (
            "Dry run: nothing is sent; each request that would go to Google is printed."
            if config.dry_run
            else f"Endpoint: {upstream.url} ({upstream.client} client)."
        ),
        f"Retries: {upstream.retries}, for network errors, 5xx and 429.",
        (
            "Undelivered beacons wait in a Redis outbox, discarded after "
            f"{config.state.outbox_max_age}."
            if config.state.redis_url
            else "Undelivered beacons wait in memory (no Redis), discarded after "
            f"{config.state.outbox_max_age}."
        ),
        f"Audit trail: {config.audit.sample:.0%} of forwarded beacons and every drop, "
        f"at most {config.audit.max_records} records, no personal value.",
    ]
    return [
        {"title": "What is accepted", "lines": accepted},
        {"title": "Consent", "lines": consent_lines},
        {"title": "What leaves for Google", "lines": leaves},
        {"title": "Where it goes", "lines": where},
    ]


def _location_sentence(config: Config) -> str:
    loc = config.privacy.location
    if loc.mode == "omit":
        return "Visitor address: none is sent (_uip omitted)."
    if loc.mode == "truncated":
        example = ipaddress.ip_address("203.0.113.57")
        cut = truncate(example, loc.ipv4_prefix, loc.ipv6_prefix)
        return (
            f"Visitor address: the network part only, IPv4 /{loc.ipv4_prefix} and IPv6 "
            f"/{loc.ipv6_prefix} (203.0.113.57 → {cut})."
        )
    if loc.mode == "country":
        return "Visitor address: a representative address of the visitor's country."
    return (
        "Visitor address: a representative address of the smallest place (city, region, "
        f"country) where at least {loc.k} distinct visitors were seen within {loc.window}."
    )


def _parameter_lines(table: dict[str, Rule]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for name, rule in table.items():
        if rule.name == "proxy_set":
            continue  # set by the proxy itself, described above
        if rule.drops:
            label = "Always removed"
        elif rule.action is Action.KEPT:
            label = "Kept as sent"
        elif rule.action is Action.DROPPED:
            label = "Kept only in the shape gtag sends, else removed"
        else:
            label = f"{rule.action.value.capitalize()} ({rule.name})"
        groups.setdefault(label, []).append(name)
    lines = [f"{label}: {_compact(names)}." for label, names in sorted(groups.items())]
    lines.append("Any other parameter is removed.")
    return lines


def _compact(names: list[str]) -> str:
    """``pr1 … pr200`` as ``pr1 to pr200``: runs of numbered names collapse."""
    runs: dict[str, list[int]] = {}
    plain: list[str] = []
    for name in names:
        match = _NUMBERED.match(name)
        if match:
            runs.setdefault(match.group(1), []).append(int(match.group(2)))
        else:
            plain.append(name)
    for stem, numbers in runs.items():
        numbers.sort()
        if len(numbers) > 2 and numbers[-1] - numbers[0] == len(numbers) - 1:
            plain.append(f"{stem}{numbers[0]} to {stem}{numbers[-1]}")
        else:
            plain += [f"{stem}{n}" for n in numbers]
    return ", ".join(plain)


# Try a beacon ------------------------------------------------------------------------------


def parse_explain_request(data: Any) -> tuple[list[BeaconInput], int]:
    """The beacons to explain from the box's JSON (``url`` + options, or ``har``), and how
    many there were in all. Raises ``BadInput`` with a message fit to show."""
    if not isinstance(data, dict):
        raise BadInput("expected a JSON object with 'url' or 'har'")
    har = data.get("har")
    if har is not None and har != "":
        # The box sends the file's text; a script may as well send the HAR object itself.
        text = _text(data, "har") if isinstance(har, str) else None
        try:
            parsed = har if text is None else json.loads(text)
            if not isinstance(parsed, dict):
                raise ValueError("not an object")
            beacons = list(har_beacons(parsed))
            for beacon in beacons:
                _check_har_beacon(beacon)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            raise BadInput("not a HAR export (DevTools → Network → Save all as HAR)") from None
        if not beacons:
            raise BadInput("the HAR holds no /g/collect request")
        return beacons[:MAX_HAR_BEACONS], len(beacons)
    url = _text(data, "url").strip()
    if not url:
        raise BadInput("paste a beacon URL (…/g/collect?v=2&tid=…) or a HAR")
    if "?" not in url and "=" in url:
        url = "/g/collect?" + url  # a bare query string
    if not urlsplit(url).query:
        raise BadInput("the URL has no query: paste the whole …/g/collect?v=2&tid=… URL")
    client_ip = _text(data, "client_ip").strip()
    if client_ip and parse_address(client_ip) is None:
        raise BadInput("client IP: not an IPv4 or IPv6 address")
    country = _text(data, "country").strip()
    if country and not _COUNTRY.match(country):
        raise BadInput("country: two letters (ISO 3166), e.g. DE")
    body = _text(data, "body")
    method = _text(data, "method").upper() or ("POST" if body else "GET")
    if method not in ("GET", "POST"):
        raise BadInput("method: GET or POST")
    user_agent = _text(data, "user_agent").strip()
    beacon = BeaconInput(
        url=url,
        method=method,
        body=body,
        # Not checked for encodability: an undecodable cookie is the pipeline's to refuse
        # (consent_error), as serve refuses it; it is never shown back.
        cookie=_text(data, "cookie", any_text=True).strip() or None,
        headers={"User-Agent": user_agent} if user_agent else {},
        country=country.upper() or None,
        client_ip=client_ip or None,
    )
    return [beacon], 1


def _text(data: dict[str, Any], key: str, *, any_text: bool = False) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not (any_text or _encodable(value)):
        raise BadInput(f"{key}: expected text")
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode()  # JSON may carry lone surrogates, which no request can
    except UnicodeEncodeError:
        return False
    return True


def _check_har_beacon(beacon: BeaconInput) -> None:
    """A HAR is JSON of any shape: what ``har_beacons`` took from it must be text."""
    texts = [beacon.url, beacon.method, beacon.body]
    texts += [*beacon.headers.keys(), *beacon.headers.values()]
    if not all(isinstance(t, str) and _encodable(t) for t in texts):
        raise ValueError("not text")
    if not isinstance(beacon.cookie or "", str):  # undecodable is the pipeline's to refuse
        raise ValueError("not text")
    if beacon.method.upper() not in ("GET", "POST"):
        raise ValueError("method")


# The application ---------------------------------------------------------------------------


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
        package = resources.files("proxy") / "static"
        self._files = {
            path: ((package / name).read_bytes(), kind)
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

    icon = (resources.files("proxy") / "static" / FAVICON).read_bytes()

    async def favicon(request: web.Request) -> web.Response:
        # Where a browser looks first; an SVG, which every current browser takes there.
        return web.Response(body=icon, content_type="image/svg+xml", headers=SECURITY_HEADERS)

    # Before the sub-application, which would otherwise answer its bare prefix with a 404.
    app.router.add_get("/", to_dashboard)
    app.router.add_get(PREFIX, to_dashboard)
    app.router.add_get("/favicon.ico", favicon)
    app.add_subapp(PREFIX, dashboard_app(config, metrics, recent_audit))
