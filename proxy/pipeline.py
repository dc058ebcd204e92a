"""The beacon's path, top to bottom: parse → validate → consent → sanitise → outbound.

``serve`` and ``explain`` both call ``Pipeline.process``; there is no second code path.
Fail closed: any exception drops the beacon with a counted reason, and nothing but a
``Sanitized`` result can become an ``OutboundRequest``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config import Config, ConfigError
from proxy.consent.gate import ConsentGate, ConsentVerdict, unreadable
from proxy.consent.verdict import ConsentInput
from proxy.delivery.outbound import OutboundRequest
from proxy.ingest.beacon import MalformedBeacon, encode_sanitised, parse
from proxy.ingest.client import IPAddress, truncate
from proxy.ingest.cookies import UnreadableCookie, parse_cookie_header
from proxy.location.geo import GeoDatabase, Place
from proxy.location.geo_index import Representatives
from proxy.location.mesh import CellCounter, MemoryCellCounter
from proxy.location.modes import compile_location
from proxy.location.regions import Regime, RegimeMap
from proxy.sanitize.policy import compile_policy
from proxy.sanitize.sanitizer import Change, Sanitizer
from proxy.sanitize.useragent import UserAgentGeneraliser
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.ratelimit import RateLimiter

log = logging.getLogger(__name__)

UNKNOWN_NETWORK = "unknown"  # the rate limit's network for a beacon whose address is unknown
# Every reason a beacon can be dropped for; metric labels come only from this set.
DROP_REASONS = (
    "malformed",
    "too_large",
    "client_aborted",  # the client closed the connection before its body was read
    "timeout",  # headers or body slower than listen.header_timeout / body_timeout
    "unknown_tid",
    "bad_origin",
    "bot",
    "rate_limited",
    "no_consent",
    "denied",
    "gpc",
    "dnt",
    "consent_error",
    "no_client_id",
    "pseudonym_unavailable",
    "sanitize_error",
    "internal_error",
    "queue_full",  # decided by the server: neither the queue nor the outbox can hold it
    "ads_endpoint",  # an advertising endpoint the tag called: answered, never forwarded
)


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """What the pipeline reads of one HTTP request; built by the server or by ``explain``."""

    query: str
    body: bytes = b""
    cookie: str | None = None  # every Cookie line of the request, joined (join_cookie_lines)
    user_agent: str | None = None
    gpc: bool = False
    dnt: bool = False
    client_ip: IPAddress | None = None
    country: str | None = None  # from geo, or given to explain
    region: str | None = None
    origin: str | None = None  # the Origin header, checked against allowed_origins


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision on one beacon. ``reason`` is one of DROP_REASONS or a consent reason."""

    forward: bool
    reason: str
    detail: str = ""
    regime: Regime | None = None
    place: Place | None = None  # the visitor's country/region, in memory only
    consent: ConsentVerdict | None = None
    outbound: OutboundRequest | None = None
    events: int = 0
    changes: tuple[Change, ...] = field(default=())
    tid: str = ""  # the beacon's measurement id, once parsed (checked against the config)
    pseudonym: str = ""  # the cid Google receives, counted for the observed daily volume
    # Where the outbound hit places the visitor: city | region | country (the cell's
    # representative address), truncated, or omitted; "" when nothing was forwarded.
    location_level: str = ""


def _drop(reason: str, detail: str = "", **kwargs: object) -> Outcome:
    return Outcome(False, reason, detail, **kwargs)  # type: ignore[arg-type]


def check_compiles(config: Config) -> None:
    """Compile the consent sources and the policy once, so that an option only they can
    judge stops start-up as a ``ConfigError`` naming it, not as a traceback."""
    try:
        ConsentGate(config.consent)
        compile_policy(config.privacy, config.allowed_origins)
        compile_location(config.privacy.location, Representatives(), MemoryCellCounter(2, 1))
        if config.geo.database:
            GeoDatabase(config.geo.database).close()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Pipeline:
    """Everything compiled once from ``Config``; ``process`` is the per-beacon path."""

    def __init__(
        self,
        config: Config,
        pseudonymizer: Pseudonymizer,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
        geo: GeoDatabase | None = None,
        representatives: Representatives | None = None,
        cells: CellCounter | None = None,
    ) -> None:
        privacy = config.privacy
        location = privacy.location
        self._tids = frozenset(config.measurement_ids)
        self._origins = frozenset(config.allowed_origins)
        self._gate = ConsentGate(config.consent)
        self._regimes = RegimeMap(config.consent.regimes.opt_in, config.consent.regimes.opt_out)
        self._sanitizer = Sanitizer(compile_policy(privacy, config.allowed_origins))
        if location.mode == "mesh" and cells is None:
            cells = MemoryCellCounter(location.k, location.window_seconds)
        self._location = compile_location(
            location, Representatives() if representatives is None else representatives, cells
        )
        self._needs_member = location.mode == "mesh"
        self._internal = tuple(
            ipaddress.ip_network(net, strict=False) for net in config.internal_traffic.networks
        )
        self._traffic_type = config.internal_traffic.traffic_type
        self._agents = UserAgentGeneraliser(allow_headless=config.bots.allow_headless)
        self._pseudonymizer = pseudonymizer
        self._cookieless = privacy.pseudonym.cookieless
        self._clock = clock
        self._limiter = limiter
        self._geo = geo
        self._prefixes = (privacy.location.ipv4_prefix, privacy.location.ipv6_prefix)

    @property
    def sanitizer(self) -> Sanitizer:
        return self._sanitizer

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self._pseudonymizer

    def locate(self, address: IPAddress | None, member: str) -> tuple[str | None, str]:
        """What ``privacy.location.mode`` sends for ``address`` (a Measurement Protocol
        ``ip_override``), as for a beacon from it: the value and its level."""
        place = self._geo.lookup(address) if self._geo is not None else Place()
        return self._location(address, place, member)

    async def process(self, request: IncomingRequest, *, trace: bool = False) -> Outcome:
        try:
            return await self._process(request, trace)
        except Exception:
            # Never the exception text: it may quote the input.
            log.error("pipeline error", extra={"reason": "internal_error"})
            return _drop("internal_error")

    async def _process(self, request: IncomingRequest, trace: bool) -> Outcome:
        try:
            beacon = parse(request.query, request.body, decoded=self._sanitizer.decoded)
        except MalformedBeacon as exc:
            code = str(exc)
            too_large = code in ("too_large", "query_too_long")
            return _drop("too_large" if too_large else "malformed", code)
        events = beacon.events()
        if request.origin and self._origins and request.origin not in self._origins:
            return _drop("bad_origin", events=len(events), tid=beacon.tid)
        if beacon.tid not in self._tids:
            return _drop("unknown_tid", events=len(events), tid=beacon.tid)
        agent = self._agents.generalise(request.user_agent)
        if agent.is_bot:
            return _drop("bot", events=len(events), tid=beacon.tid)

        try:
            key = await self._pseudonymizer.current()
        except Exception:
            log.warning("no salt available", extra={"reason": "pseudonym_unavailable"})
            return _drop("pseudonym_unavailable", events=len(events), tid=beacon.tid)
        if self._limiter is not None:
            # An address that cannot be known (a trusted proxy wrote "unknown") is counted
            # in one shared bucket: never a way around the limit.
            address = request.client_ip
            network = UNKNOWN_NETWORK if address is None else truncate(address, *self._prefixes)
            if not self._limiter.allow(RateLimiter.network_key(network, key.salt)):
                return _drop("rate_limited", events=len(events), tid=beacon.tid)

        if request.country is None and self._geo is not None:
            place = self._geo.lookup(request.client_ip)
        else:
            place = Place(request.country, request.region)
        regime = self._regimes.regime(place.country, place.region)
        detail = ""
        try:
            cookies = parse_cookie_header(request.cookie)
        except UnreadableCookie as exc:
            # Unread, the header could hide a denial: never "no cookie" (serve and explain).
            consent = unreadable(regime)
            detail = str(exc)
        else:
            consent = self._gate.decide(
                ConsentInput(cookies, events, self._clock()),
                gpc=request.gpc,
                dnt=request.dnt,
                regime=regime,
            )
        if not consent.forward:
            return _drop(
                consent.reason,
                detail,
                regime=regime,
                place=place,
                consent=consent,
                events=len(events),
                tid=beacon.tid,
            )

        cid = beacon.shared.get("cid")
        if not cid and any(not e.get("cid") for e in events):
            if not self._cookieless or request.client_ip is None:
                return _drop(
                    "no_client_id",
                    regime=regime,
                    consent=consent,
                    events=len(events),
                    tid=beacon.tid,
                )
            # Cookieless: a stand-in id from the network and the generalised browser only.
            cid = f"cookieless|{truncate(request.client_ip)}|{agent.user_agent}"
            beacon.shared["cid"] = cid
        pseudonymize = functools.partial(self._pseudonymizer.pseudonym, key, beacon.tid)

        # The address's last uses, before it is discarded: the location and internal traffic.
        member = pseudonymize(cid or events[0]["cid"]) if self._needs_member else ""
        location, level = self._location(request.client_ip, place, member)
        extra = {"_uip": location} if location else {}
        address = request.client_ip
        if self._internal and address is not None and any(
            address in net for net in self._internal
        ):
            extra["tt"] = self._traffic_type
        try:
            clean = self._sanitizer.sanitize(beacon, pseudonymize, extra, trace=trace)
        except Exception:
            log.error("sanitiser error", extra={"reason": "sanitize_error"})
            return _drop("sanitize_error", regime=regime, consent=consent, tid=beacon.tid)
        if clean.query is not None and clean.body is not None:
            outbound = OutboundRequest(clean.query, clean.body, agent.user_agent)
        else:
            outbound = OutboundRequest(
                encode_sanitised(clean.shared),
                "\n".join(encode_sanitised(line) for line in clean.lines),
                agent.user_agent,
            )
        return Outcome(
            True,
            consent.reason,
            regime=regime,
            place=place,
            consent=consent,
            outbound=outbound,
            events=len(events),
            changes=clean.changes,
            location_level=level,
            tid=beacon.tid,
            pseudonym=clean.shared.get("cid") or next(
                (line["cid"] for line in clean.lines if "cid" in line), ""
            ),
        )
