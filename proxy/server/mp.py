"""``POST /mp/collect`` and ``POST /debug/mp/collect`` on the public port.

A back end authenticates with ``Authorization: Bearer <token>``, the token configured for the
request's ``measurement_id`` (``proxy/mp/credentials.py``). Google's ``api_secret`` stays on
the proxy: one sent to the proxy is ignored, and without a valid token the request is
refused (401). The body is read up to ``measurement_protocol.max_body`` and goes through
``MeasurementProtocol.process``; what passes joins the beacons' outbox. The debug endpoint
answers GA's validation-message shape itself and forwards nothing.

Answers: 204 accepted (or dropped for consent, counted: a back end cannot act on a
visitor's choice), 400 with validation messages, 401 token, 403 measurement id, 408, 413,
503 (overloaded or an internal error; retry later). Every answer says its outcome in
``X-Analytics-Proxy-Outcome``, a code from ``MP_OUTCOMES``; nothing of the request is
logged, counted by value or audited but codes.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.config import Config
from proxy.delivery.forward import Outbox
from proxy.mp.credentials import Credentials
from proxy.mp.ingest import DETAIL, MeasurementProtocol, MpResult, consent_reason
from proxy.mp.schema import CONSENT_FIELD, InvalidRequest, ValidationMessage, parse
from proxy.observe.audit import AuditTrail
from proxy.observe.metrics import Metrics
from proxy.pipeline import Outcome, Pipeline
from proxy.server.protocol import BodyTimeout, close_after_response
from proxy.state.visitors import DailyVisitors

log = logging.getLogger(__name__)

OUTCOME_HEADER = "X-Analytics-Proxy-Outcome"
CHALLENGE = 'Bearer realm="analytics-proxy"'
# Drops answered 204: the request was fine, the visitor's consent (or the policy) said no.
QUIET = frozenset({"no_consent", "denied", "nothing_left"})
STATUS = {"malformed": 400, "unknown_tid": 403, "too_large": 413, "timeout": 408,
          "client_aborted": 400}


class TooLarge(Exception):
    """The body is over ``measurement_protocol.max_body``."""


class MeasurementProtocolService:
    """The handlers' state, built once at start-up from the app's long-lived parts."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        outbox: Outbox,
        metrics: Metrics,
        audit: AuditTrail,
        visitors: DailyVisitors,
        credentials: Credentials,
    ) -> None:
        self._mp = MeasurementProtocol(config, pipeline)
        self._tids = frozenset(config.measurement_ids)
        self._max_body = config.measurement_protocol.max_body
        self._outbox = outbox
        self._metrics = metrics
        self._audit = audit
        self._visitors = visitors
        self._credentials = credentials

    async def collect(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        tid = request.query["measurement_id"]
        if self._outbox.full:
            return self._answer("queue_full", tid, status=503, retry=True)
        body, fault = await self._read(request)
        if fault is not None:
            return fault
        sampled = self._audit.sample()
        result = await self._mp.process(tid, body, trace=sampled)
        outcome = result.outcome
        if result.messages:
            return self._answer("malformed", tid, messages=result.messages)
        if outcome.outbound is not None:
            if not await self._outbox.put(outcome.outbound):
                return self._answer("queue_full", tid, status=503, retry=True)
            self._metrics.location(outcome.location_level)
            self._visitors.add(outcome.pseudonym)
        self._audit.observe(outcome, "", sampled=sampled)
        reason = "accepted" if outcome.forward else outcome.reason
        return self._count(web.Response(status=result_status(result)), reason)

    async def debug(self, request: web.Request) -> web.Response:
        """GA's ``/debug/mp/collect``: the validation messages, plus the proxy's own (a
        missing consent assertion). Never forwarded, never audited."""
        refused = self._refusal(request)
        if refused is not None:
            return refused
        body, fault = await self._read(request)
        if fault is not None:
            return fault
        messages: list[ValidationMessage] = []
        try:
            parsed = parse(body)
        except InvalidRequest as exc:
            messages = exc.messages
        else:
            reason = consent_reason(parsed.consent)
            if reason != "granted":
                messages.append(ValidationMessage(
                    CONSENT_FIELD,
                    f'the proxy forwards only with "{CONSENT_FIELD}": "granted" '
                    f"(this request: dropped, {reason})",
                    "VALUE_REQUIRED" if reason == "no_consent" else "VALUE_INVALID"))
        answer = web.json_response(
            {"validationMessages": [m.to_json() for m in messages]},
            headers={"Cache-Control": "no-store"},
        )
        return self._count(answer, "debug")

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The measurement id and the token, before any of the body is read."""
        tid = request.query.get("measurement_id", "")
        if not tid:
            message = ValidationMessage("measurement_id", "the query needs measurement_id",
                                        "VALUE_REQUIRED")
            return self._answer("malformed", "", messages=(message,), request=request)
        if tid not in self._tids:
            return self._answer("unknown_tid", tid, status=403, request=request)
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and self._credentials.accepts(tid, token.strip()):
            return None
        if "api_secret" in request.query:
            # Google's secret belongs on the proxy alone; it is not checked, only refused.
            log.warning("measurement protocol request with api_secret and no valid token",
                        extra={"reason": "bad_token"})
        response = self._answer("bad_token", tid, status=401, request=request)
        response.headers["WWW-Authenticate"] = CHALLENGE
        return response

    async def _read(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        tid = request.query["measurement_id"]
        try:
            return await self._body(request), None
        except TooLarge:
            return b"", self._answer("too_large", tid, status=413, request=request)
        except (web.RequestPayloadError, HttpProcessingError):
            return b"", self._answer("malformed", tid, status=400, request=request)
        except BodyTimeout:
            return b"", self._answer("timeout", tid, status=408, request=request)
        except ConnectionError:
            return b"", self._answer("client_aborted", tid, status=400, request=request)

    async def _body(self, request: web.Request) -> bytes:
        limit = self._max_body
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge
        chunks, size = [], 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _answer(
        self,
        reason: str,
        tid: str,
        *,
        status: int = 400,
        messages: tuple[ValidationMessage, ...] | list[ValidationMessage] = (),
        retry: bool = False,
        request: web.Request | None = None,
    ) -> web.Response:
        """A refusal or drop decided here, before or instead of the pipeline: audited with
        codes only (the id only when it is a configured one), counted, answered."""
        self._audit.observe(Outcome(False, reason, DETAIL, tid=tid), "", sampled=False)
        if messages:
            response = web.json_response(
                {"validationMessages": [m.to_json() for m in messages]}, status=status
            )
        else:
            response = web.Response(status=status)
        if retry:
            response.headers["Retry-After"] = "1"
        if request is not None:
            # The body is not read (or not all of it): close rather than read on.
            close_after_response(request)
            response.force_close()
        return self._count(response, reason)

    def _count(self, response: web.StreamResponse, outcome: str) -> web.Response:
        self._metrics.mp_requests.labels(outcome).inc()
        response.headers[OUTCOME_HEADER] = outcome
        response.headers.setdefault("Cache-Control", "no-store")
        assert isinstance(response, web.Response)
        return response


def result_status(result: MpResult) -> int:
    """The HTTP status ``collect`` answers a processed request with (explain shows it)."""
    outcome = result.outcome
    if outcome.forward:
        return 204
    return 204 if outcome.reason in QUIET else STATUS.get(outcome.reason, 503)
