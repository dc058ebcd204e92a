"""The whole per-beacon path in-process, driven by the captured beacons and consent cases."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import pytest

from proxy.config import Config, from_mapping
from proxy.consent.registry import source_type
from proxy.ingest.beacon import MAX_QUERY
from proxy.ingest.cookies import MAX_COOKIE_HEADER
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from tests.conftest import CONSENT_CASES, GA4_HITS

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/122.0.6261.69 Safari/537.36"
)
GRANTED = "analytics_consent=granted"
HIT = next(h for h in GA4_HITS if h["id"] == "TV-04")  # no consent parameters of its own


def config(**overrides: Any) -> Config:
    tids = {dict(parse_qsl(urlsplit(h["url"]).query))["tid"] for h in GA4_HITS}
    return from_mapping(
        {"measurement_ids": sorted(tids - {"G-XXXXX"}), **overrides}, env={}
    )


def pipeline(cfg: Config | None = None, clock: Any = None) -> Pipeline:
    cfg = cfg or config()
    pseudo = Pseudonymizer(
        MemoryState(),
        bits=cfg.privacy.pseudonym.bits,
        rotation=cfg.privacy.pseudonym.rotation_seconds,
        **({"clock": clock} if clock else {}),
    )
    return Pipeline(cfg, pseudo)


def request(hit: dict[str, str], **kwargs: Any) -> IncomingRequest:
    kwargs.setdefault("user_agent", CHROME)
    return IncomingRequest(query=urlsplit(hit["url"]).query, body=hit["body"].encode(), **kwargs)


@pytest.mark.parametrize("hit", GA4_HITS, ids=[h["id"] for h in GA4_HITS])
async def test_captured_beacon_outcome(hit: dict[str, str]) -> None:
    outcome = await pipeline().process(request(hit, cookie=GRANTED))
    if "G-XXXXX&" in hit["url"]:
        assert outcome.reason == "unknown_tid"
    elif "gcs=G100" in hit["url"]:
        # Advanced Consent Mode's cookieless ping: denied on the beacon beats the cookie.
        assert (outcome.forward, outcome.reason, outcome.consent.source) == (  # type: ignore[union-attr]
            False,
            "denied",
            "consent_mode",
        )
    else:
        assert outcome.forward and outcome.outbound is not None
        sent = dict(parse_qsl(outcome.outbound.query, keep_blank_values=True))
        original = dict(parse_qsl(urlsplit(hit["url"]).query, keep_blank_values=True))
        assert sent["cid"] != original["cid"]
        assert sent["tid"] == original["tid"]
        assert sent["npa"] == "1"
        assert urlsplit(sent["dl"]).query == ""


def _case_config(case: dict[str, Any]) -> Config:
    base = config()
    sources = [
        msgspec.structs.replace(s, **case["config"][source_type(s)])
        if source_type(s) in case["config"]
        else s
        for s in base.consent.sources
    ]
    return msgspec.structs.replace(
        base, consent=msgspec.structs.replace(base.consent, sources=sources)
    )


@pytest.mark.parametrize("case", CONSENT_CASES, ids=[f"case-{c['id']}" for c in CONSENT_CASES])
async def test_captured_consent_case_end_to_end(case: dict[str, Any]) -> None:
    # The captured consent state rides on a real captured beacon, as a browser would send it.
    query = urlsplit(HIT["url"]).query + (f"&{case['query']}" if case["query"] else "")
    outcome = await pipeline(_case_config(case)).process(
        IncomingRequest(
            query=query,
            cookie=case["cookie"],
            user_agent=CHROME,
            country=case["country"],
            region=case["region"],
            gpc=case["headers"].get("Sec-GPC") == "1",
            dnt=case["headers"].get("DNT") == "1",
        )
    )
    assert outcome.forward == (case["expected"] == "forward"), outcome.reason


async def test_same_cid_same_window_same_pseudonym_and_rotation_changes_it() -> None:
    now = [1_700_000_000.0]
    p = pipeline(clock=lambda: now[0])
    first = await p.process(request(HIT, cookie=GRANTED))
    again = await p.process(request(HIT, cookie=GRANTED))
    now[0] += 86400
    rotated = await p.process(request(HIT, cookie=GRANTED))

    def cid(o: Any) -> str:
        return dict(parse_qsl(o.outbound.query))["cid"]

    assert cid(first) == cid(again) != cid(rotated)


async def test_pseudonym_shape_and_bits() -> None:
    p = pipeline(config(privacy={"pseudonym": {"bits": 16}}))
    outcome = await p.process(request(HIT, cookie=GRANTED))
    assert outcome.outbound is not None
    number, start = dict(parse_qsl(outcome.outbound.query))["cid"].split(".")
    assert 0 <= int(number) < 2**16 and int(start) % 86400 == 0


async def test_only_the_current_salt_is_kept() -> None:
    now = [1_700_000_000.0]
    state = MemoryState()
    pseudo = Pseudonymizer(state, bits=32, rotation=3600, clock=lambda: now[0])
    for _ in range(3):
        await pseudo.current()
        now[0] += 3600
    assert state.windows() == [int((now[0] - 3600) // 3600)]


async def test_beacon_without_cid_is_dropped_unless_cookieless() -> None:
    query = "v=2&tid=G-18JR3Q8PJ8&en=page_view&dl=https%3A%2F%2Fweb.dev%2F"
    ip = ipaddress.ip_address("203.0.113.9")
    dropped = await pipeline().process(
        IncomingRequest(query=query, cookie=GRANTED, user_agent=CHROME, client_ip=ip)
    )
    assert dropped.reason == "no_client_id"
    cfg = config(privacy={"pseudonym": {"cookieless": True}})
    kept = await pipeline(cfg).process(
        IncomingRequest(query=query, cookie=GRANTED, user_agent=CHROME, client_ip=ip)
    )
    assert kept.forward and kept.outbound is not None
    assert "203.0.113.9" not in kept.outbound.query
    assert "cookieless" not in kept.outbound.query


@pytest.mark.parametrize(("mode", "expected"), [("truncated", "203.0.113.0"), ("omit", None)])
async def test_location_modes(mode: str, expected: str | None) -> None:
    cfg = config(privacy={"location": {"mode": mode}})
    outcome = await pipeline(cfg).process(
        request(HIT, cookie=GRANTED, client_ip=ipaddress.ip_address("203.0.113.57"))
    )
    assert outcome.outbound is not None
    assert dict(parse_qsl(outcome.outbound.query)).get("_uip") == expected


async def test_ipv6_is_truncated_to_48_bits() -> None:
    outcome = await pipeline().process(
        request(HIT, cookie=GRANTED, client_ip=ipaddress.ip_address("2001:db8:abcd:12:1:2:3:4"))
    )
    assert outcome.outbound is not None
    assert dict(parse_qsl(outcome.outbound.query))["_uip"] == "2001:db8:abcd::"


async def test_bots_are_dropped() -> None:
    outcome = await pipeline().process(
        request(
            HIT,
            cookie=GRANTED,
            user_agent="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        )
    )
    assert outcome.reason == "bot"


async def test_outbound_headers_are_only_user_agent_and_content_type() -> None:
    outcome = await pipeline().process(request(HIT, cookie=GRANTED))
    assert outcome.outbound is not None
    headers = outcome.outbound.headers()
    assert set(headers) == {"User-Agent", "Content-Type"}
    assert "6261" not in headers["User-Agent"]


async def test_an_exception_in_the_sanitiser_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    p = pipeline()

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(p.sanitizer, "sanitize", explode)
    outcome = await p.process(request(HIT, cookie=GRANTED))
    assert (outcome.forward, outcome.reason, outcome.outbound) == (False, "sanitize_error", None)


async def test_a_failing_salt_store_falls_back_to_a_local_salt() -> None:
    class Broken(MemoryState):
        async def salt_for(self, window: int, ttl: float) -> bytes:
            raise ConnectionError("down")

    p = Pipeline(config(), Pseudonymizer(Broken(), bits=32, rotation=86400))
    outcome = await p.process(request(HIT, cookie=GRANTED))
    assert outcome.forward and outcome.outbound is not None
    sent = dict(parse_qsl(outcome.outbound.query))
    assert sent["cid"] != "1874137241.1685438100"


async def test_no_pseudonym_at_all_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    pseudo = Pseudonymizer(MemoryState(), bits=32, rotation=86400)

    async def fail() -> Any:
        raise RuntimeError("no key")

    monkeypatch.setattr(pseudo, "current", fail)
    outcome = await Pipeline(config(), pseudo).process(request(HIT, cookie=GRANTED))
    assert (outcome.forward, outcome.reason, outcome.outbound) == (
        False, "pseudonym_unavailable", None)


async def test_rate_limited_network_is_dropped_before_consent() -> None:
    from proxy.state.ratelimit import MemoryCounters, RateLimiter

    cfg = config()
    limiter = RateLimiter(limit=2, window=60, store=MemoryCounters())
    p = Pipeline(cfg, Pseudonymizer(MemoryState(), bits=32, rotation=86400), limiter=limiter)
    ip = ipaddress.ip_address("203.0.113.57")
    reasons = [(await p.process(request(HIT, cookie=GRANTED, client_ip=ip))).reason
               for _ in range(3)]
    other = await p.process(request(HIT, cookie=GRANTED,
                                     client_ip=ipaddress.ip_address("198.51.100.1")))
    assert reasons == ["granted", "granted", "rate_limited"]
    assert other.reason == "granted"


async def test_beacons_whose_address_is_unknown_share_one_rate_limit() -> None:
    """No address (a trusted proxy wrote "unknown") is never a way around the limit."""
    from proxy.state.ratelimit import RateLimiter

    limiter = RateLimiter(limit=2, window=60)
    p = Pipeline(config(), Pseudonymizer(MemoryState(), bits=32, rotation=86400), limiter=limiter)
    reasons = [(await p.process(request(HIT, cookie=GRANTED, client_ip=None))).reason
               for _ in range(3)]
    assert reasons == ["granted", "granted", "rate_limited"]


OVER_LIMIT_COOKIE = GRANTED + "; pad=" + "x" * MAX_COOKIE_HEADER
UNDECODABLE_COOKIE = GRANTED + "; x=\udcff"


@pytest.mark.parametrize(
    ("cookie", "detail"),
    [(OVER_LIMIT_COOKIE, "cookie_too_large"), (UNDECODABLE_COOKIE, "cookie_undecodable")],
    ids=["too large", "undecodable"],
)
@pytest.mark.parametrize("country", ["US", "DE", None])
async def test_an_unreadable_cookie_header_drops_as_consent_error_in_every_regime(
    cookie: str, detail: str, country: str | None
) -> None:
    # In the US (opt-out) "no cookie" would forward by the regime default; unread, the
    # header could hold a denial, so it drops, even with a grant beside it.
    outcome = await pipeline().process(request(HIT, cookie=cookie, country=country))
    assert (outcome.forward, outcome.reason, outcome.detail) == (False, "consent_error", detail)
    assert outcome.consent is not None and outcome.consent.reason == "consent_error"
    assert outcome.outbound is None


async def test_without_any_cookie_the_opt_out_default_still_forwards() -> None:
    outcome = await pipeline().process(request(HIT, country="US"))
    assert (outcome.forward, outcome.reason) == (True, "default")


async def test_a_query_over_the_beacon_limit_is_too_large_not_malformed() -> None:
    query = urlsplit(HIT["url"]).query + "&pad=" + "x" * MAX_QUERY
    outcome = await pipeline().process(IncomingRequest(query=query, cookie=GRANTED))
    assert (outcome.forward, outcome.reason, outcome.detail) == (
        False, "too_large", "query_too_long")
