"""A Measurement Protocol request's path, top to bottom: check → consent → pseudonym →
location → sanitise → outbound. ``serve`` (``proxy/server/mp.py``) and ``explain`` both call
``MeasurementProtocol.process``. Authentication is the server's (explain runs on the
operator's own input). Fail closed: any exception drops the request with a counted reason,
and only a ``SanitisedMp`` becomes an ``OutboundRequest``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy import __version__
from proxy.config import Config
from proxy.delivery.outbound import MEASUREMENT_PROTOCOL, OutboundRequest
from proxy.ingest.client import parse_address
from proxy.mp.sanitise import MpSanitiser
from proxy.mp.schema import InvalidRequest, ValidationMessage, parse
from proxy.pipeline import Outcome, Pipeline
from proxy.sanitize.useragent import UserAgentGeneraliser

log = logging.getLogger(__name__)

DETAIL = "measurement_protocol"  # Outcome.detail of every MP outcome: the audit tells them apart
# The forwarded request's User-Agent header: the proxy's own, never the back end's.
USER_AGENT = f"analytics-proxy/{__version__}"
GRANTED, DENIED = "granted", "denied"


@dataclass(frozen=True, slots=True)
class MpResult:
    outcome: Outcome
    messages: tuple[ValidationMessage, ...] = ()  # why the body is invalid (a 400)


def _drop(reason: str, tid: str = "", events: int = 0) -> MpResult:
    return MpResult(Outcome(False, reason, DETAIL, tid=tid, events=events))


def consent_reason(assertion: str | None) -> str:
    """The back end's assertion: forwarded on an explicit grant only."""
    said = assertion.strip().lower() if isinstance(assertion, str) else ""
    return GRANTED if said == GRANTED else DENIED if said == DENIED else "no_consent"


class MeasurementProtocol:
    """Compiled once from ``Config`` next to a ``Pipeline``, whose pseudonyms, location and
    sanitiser it shares: a back end's events get what its visitors' beacons get."""

    def __init__(
        self, config: Config, pipeline: Pipeline, clock: Callable[[], float] = time.time
    ) -> None:
        self._tids = frozenset(config.measurement_ids)
        self._pipeline = pipeline
        self._sanitiser = MpSanitiser(
            pipeline.sanitizer,
            UserAgentGeneraliser(allow_headless=config.bots.allow_headless),
            config.state.outbox_max_age_seconds,
            clock,
        )

    async def process(self, measurement_id: str, body: bytes, *, trace: bool = False
                      ) -> MpResult:
        try:
            return await self._process(measurement_id, body, trace)
        except Exception:
            # Never the exception text: it may quote the input.
            log.error("measurement protocol error", extra={"reason": "internal_error"})
            return _drop("internal_error")

    async def _process(self, tid: str, body: bytes, trace: bool) -> MpResult:
        if tid not in self._tids:
            return _drop("unknown_tid")
        try:
            request = parse(body)
        except InvalidRequest as exc:
            return MpResult(Outcome(False, "malformed", DETAIL, tid=tid), tuple(exc.messages))
        events = len(request.events)
        reason = consent_reason(request.consent)
        if reason != GRANTED:
            return _drop(reason, tid, events)
        pipeline = self._pipeline
        try:
            key = await pipeline.pseudonymizer.current()
        except Exception:
            log.warning("no salt available", extra={"reason": "pseudonym_unavailable"})
            return _drop("pseudonym_unavailable", tid, events)
        pseudonymize = functools.partial(pipeline.pseudonymizer.pseudonym, key, tid)
        # Only an address the back end names as the visitor's: never the back end's own.
        address = parse_address(request.ip_override) if request.ip_override else None
        location, level = (
            pipeline.locate(address, pseudonymize(request.client_id))
            if address is not None
            else (None, "omitted")
        )
        try:
            clean = self._sanitiser.sanitise(request, pseudonymize, location, trace=trace)
        except Exception:
            log.error("sanitiser error", extra={"reason": "sanitize_error"})
            return _drop("sanitize_error", tid, events)
        if "events" not in clean.body or not clean.pseudonym:
            return MpResult(Outcome(False, "nothing_left", DETAIL, tid=tid, events=events,
                                   changes=clean.changes))
        outbound = OutboundRequest(
            f"measurement_id={tid}",
            json.dumps(clean.body, ensure_ascii=False, separators=(",", ":")),
            USER_AGENT,
            MEASUREMENT_PROTOCOL,
        )
        return MpResult(Outcome(
            True,
            GRANTED,
            DETAIL,
            outbound=outbound,
            events=len(clean.body["events"]),
            changes=clean.changes,
            tid=tid,
            pseudonym=clean.pseudonym,
            location_level=level,
        ))
